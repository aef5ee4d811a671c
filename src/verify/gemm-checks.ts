// GEMM step, one expert of one converted module at a time, on the buffers the structure step
// read: at each M, on deterministic random activations, the Marlin GEMM on the converted
// tensors (reading the layout directly) against the reference GEMM on the source
// (dequantized per FORMAT.md section 1, as the format keeps it: v2's clamp applied, v1's
// global rounded to the activation dtype, block scales re-encoded onto a fused group's shared
// global where they are), judged column by column (gemm.ts columnErrors). The outputs go into
// pooled buffers (page-locked on the GPU), and the clamp and the judging run natively on pool
// threads: the main thread only starts calls and writes the report.
import { globalScaleBytes } from '../format/tensors.js';
import { lostScales, scanScales } from '../transform/scale-stats.js';
import { columnErrors, keptGlobalScale, randomActivations } from './gemm.js';
import type { VerifyContext } from './context.js';
import type { GemmCheck, LayerReport } from './report.js';
import type { ExpertData } from './structure.js';
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

/** A float32 output of `count` values in a pooled buffer (handed back with ctx.pool.give(buffer)). */
function floats(ctx: VerifyContext, count: number): { buffer: Buffer; f32: Float32Array } {
  const buffer = ctx.pool.take(4 * count);
  // Pooled buffers start their own ArrayBuffer (or page): aligned for floats.
  return { buffer, f32: new Float32Array(buffer.buffer, buffer.byteOffset, count) };
}

/**
 * How many of a part's block scales v2's clamp sets to 0: counted by the structure step where it
 * ran, else from a histogram of them.
 */
function lostOf(part: ExpertData['src'][number], u: Unit, ctx: VerifyContext): number {
  return (part.lost ??= lostScales(scanScales(u.tensors.scales.name, part.stored, u.shape.k / 16), ctx.layout, u.scales.sf));
}

/** Told when the GEMM step no longer reads the converted tensors (afterMarlin) or the source's (afterReferences). */
export interface GemmProgress {
  afterMarlin?(): void;
  afterReferences?(): void;
}

/** Runs the GEMMs of expert d.e and appends their checks to rep.gemm. */
export async function checkExpertGemms(
  ctx: VerifyContext,
  u: Unit,
  rep: LayerReport,
  d: ExpertData,
  global: Buffer | undefined,
  progress: GemmProgress = {},
): Promise<void> {
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
  const clamp = mxfp4 ? undefined : { layout, sf: u.scales.sf };
  const X = activations(ctx, k);
  const expert = u.kind === 'linear' ? undefined : d.e;
  const outs: Buffer[] = [];
  const output = (count: number) => {
    const o = floats(ctx, count);
    outs.push(o.buffer);
    return o.f32;
  };
  try {
    // The Marlin GEMM: one call over every M's rows (one upload of the weight); where the
    // kernel's code path depends on M, the call launches it once per M (splitM), so that each
    // M's path is exercised. y rows follow X.all.
    const base = { k, n: width, np: width, kp, layout, dtype, weight: d.weight!, scales: d.scales!, global: g, scheme, threads };
    const y = output(X.rows * width);
    try {
      await engine.marlin({ ...base, x: X.all, m: X.rows, splitM: engine.marlinRowwise ? undefined : X.parts.map((p) => p.m), out: y });
      ctx.counts.gemms += X.parts.length;
    } catch (err) {
      for (const { m } of X.parts) checks.push({ m, expert, rel_err: Infinity, max_abs_err: Infinity, pass: false, error: (err as Error).message });
      return;
    }
    progress.afterMarlin?.();
    // The reference: rows never depend on each other, so one call over every M's rows, into
    // one buffer that every part reuses.
    const ref = output(X.rows * n);
    let exact: Float32Array | undefined;
    for (let p = 0; p < P; p++) {
      const part = d.src[p]!;
      await engine.referenceGemm({ x: X.all, m: X.rows, n, k, weight: part.weight, scale: part.stored, clamp, ws2, scheme, dtype, threads, out: ref });
      ctx.counts.gemms += X.parts.length;
      // The source's own scales and global: what v2's clamp and re-encoding cost (information).
      const withExact = !mxfp4 && (part.reencoded || lostOf(part, u, ctx) > 0);
      if (withExact) {
        exact ??= output(X.rows * n);
        await engine.referenceGemm({ x: X.all, m: X.rows, n, k, weight: part.weight, scale: part.scale, ws2: keptGlobalScale(part.ownWs2, layout, dtype), scheme, dtype, threads, out: exact });
      }
      if (p === P - 1) progress.afterReferences?.();
      const judged = await Promise.all(
        X.parts.map(async ({ m, row0 }) => {
          const at = { m, n, cols: width, col0: p * np, row0, refRow0: row0 };
          return { m, err: await columnErrors(y, ref, at), vsExact: withExact ? (await columnErrors(y, exact!, at)).rel : undefined };
        }),
      );
      for (const { m, err, vsExact } of judged) {
        const c: GemmCheck = { m, rel_err: err.rel, worst_column: err.column, max_abs_err: err.maxAbs, frobenius_rel_err: err.frobenius, pass: err.rel <= tolerance };
        if (expert !== undefined) {
          c.expert = expert;
          c.part = u.parts[p];
        }
        if (vsExact !== undefined) c.rel_err_vs_exact = vsExact;
        if (err.nonFinite > 0) c.error = `${err.nonFinite} outputs are NaN or infinite`;
        checks.push(c);
      }
    }
  } finally {
    for (const b of outs) ctx.pool.give(b);
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
