// GEMM step, one expert of one converted module at a time, on the buffers the structure step
// read: at each M, on deterministic random activations, the Marlin GEMM on the converted
// tensors (reading the layout directly) against the reference GEMM on the source
// (dequantized per FORMAT.md section 1, as the format keeps it: v2's clamp applied, v1's
// global rounded to the activation dtype, block scales re-encoded onto a fused group's shared
// global where they are), judged column by column (gemm.ts columnErrors).
import { globalScaleBytes } from '../format/tensors.js';
import { columnErrors, keptGlobalScale, randomActivations } from './gemm.js';
import type { VerifyContext } from './context.js';
import type { GemmCheck, LayerReport } from './report.js';
import { keptScales, type ExpertData } from './structure.js';
import type { Unit } from './units.js';

/** The activations of every M for one K, rows concatenated in the order of ctx.ms. */
interface Activations {
  /** [Σm, k] */
  all: Buffer;
  rows: number;
  /** Per M: its rows in `all`, and the same bytes alone. */
  parts: { m: number; row0: number; x: Buffer }[];
}

const cache = new WeakMap<VerifyContext, Map<number, Activations>>();

/**
 * Made once per run and K: the seed depends on M only, so every layer of a K sees the same
 * activations (they are deterministic either way; generating them per layer cost more than
 * the GEMMs on the GPU).
 */
function activations(ctx: VerifyContext, k: number): Activations {
  let byK = cache.get(ctx);
  if (!byK) cache.set(ctx, (byK = new Map()));
  let a = byK.get(k);
  if (a) return a;
  const parts: Activations['parts'] = [];
  let row0 = 0;
  for (const m of ctx.ms) {
    parts.push({ m, row0, x: randomActivations(m, k, ctx.dtype, 0x6d61726c + m) });
    row0 += m;
  }
  a = { all: Buffer.concat(parts.map((p) => p.x)), rows: row0, parts };
  byK.set(k, a);
  return a;
}

/** Runs the GEMMs of expert d.e and appends their checks to rep.gemm. */
export async function checkExpertGemms(ctx: VerifyContext, u: Unit, rep: LayerReport, d: ExpertData, global: Buffer | undefined): Promise<void> {
  const { layout, dtype, engine, tolerance } = ctx;
  const threads = ctx.opts.threads;
  const checks = (rep.gemm ??= []);
  const P = u.parts.length;
  const { n, k, np, kp } = u.shape;
  const width = np * P;
  const gsize = globalScaleBytes(ctx);
  // MXFP4: E8M0 scales read as the kernel reads them, against the source's 2^(b-127); no global, no clamp.
  const scheme = ctx.plan.scheme;
  const mxfp4 = scheme === 'mxfp4';
  const g = global?.subarray(gsize * d.e, gsize * (d.e + 1));
  const ws2 = mxfp4 ? undefined : keptGlobalScale(u.ws2[d.e]!, layout, dtype);
  const X = activations(ctx, k);
  const expert = u.kind === 'linear' ? undefined : d.e;

  // The Marlin GEMM: one call over every M's rows (one upload of the weight); where the
  // kernel's code path depends on M, the call launches it once per M (splitM), so that each
  // M's path is exercised. y rows follow X.all.
  const base = { k, n: width, np: width, kp, layout, dtype, weight: d.weight!, scales: d.scales!, global: g, scheme, threads };
  const ys: { m: number; row0: number; y: Float32Array; yRow0: number }[] = [];
  try {
    const y = await engine.marlin({ ...base, x: X.all, m: X.rows, splitM: engine.marlinRowwise ? undefined : X.parts.map((p) => p.m) });
    ctx.counts.gemms += X.parts.length;
    for (const p of X.parts) ys.push({ m: p.m, row0: p.row0, y, yRow0: p.row0 });
  } catch (err) {
    for (const { m } of X.parts) checks.push({ m, expert, rel_err: Infinity, max_abs_err: Infinity, pass: false, error: (err as Error).message });
  }
  if (ys.length === 0) return;
  // The reference: rows never depend on each other, so one call over every M's rows.
  for (let p = 0; p < P; p++) {
    const part = d.src[p]!;
    const kept = mxfp4 ? { scales: part.stored, lost: 0 } : keptScales(part, layout, u.scales.sf);
    const ref = await engine.referenceGemm({ x: X.all, m: X.rows, n, k, weight: part.weight, scale: kept.scales, ws2, scheme, dtype, threads });
    ctx.counts.gemms += X.parts.length;
    // The source's own scales and global: what v2's clamp and re-encoding cost (information).
    const exact =
      kept.lost > 0 || part.reencoded
        ? await engine.referenceGemm({ x: X.all, m: X.rows, n, k, weight: part.weight, scale: part.scale, ws2: keptGlobalScale(part.ownWs2, layout, dtype), scheme, dtype, threads })
        : undefined;
    for (const { m, row0, y, yRow0 } of ys) {
      const at = { m, n, cols: width, col0: p * np, row0: yRow0, refRow0: row0 };
      const err = columnErrors(y, ref, at);
      const c: GemmCheck = { m, rel_err: err.rel, worst_column: err.column, max_abs_err: err.maxAbs, frobenius_rel_err: err.frobenius, pass: err.rel <= tolerance };
      if (expert !== undefined) {
        c.expert = expert;
        c.part = u.parts[p];
      }
      if (exact) c.rel_err_vs_exact = columnErrors(y, exact, at).rel;
      if (err.nonFinite > 0) c.error = `${err.nonFinite} outputs are NaN or infinite`;
      checks.push(c);
    }
  }
}

/** The worst error per M over a layer's GEMMs, for the summary table. */
export function worstPerM(ctx: VerifyContext, rep: LayerReport): void {
  const checks = rep.gemm ?? [];
  rep.worst = ctx.ms.map((m) => {
    const at = checks.filter((c) => c.m === m);
    return {
      m,
      rel_err: Math.max(0, ...at.map((c) => c.rel_err)),
      max_abs_err: Math.max(0, ...at.map((c) => c.max_abs_err)),
    };
  });
}
