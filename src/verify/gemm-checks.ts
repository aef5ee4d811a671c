// GEMM step, one converted module at a time: at each M, on deterministic random activations,
// the Marlin GEMM on the converted tensors (reading the layout directly) against the
// reference GEMM on the source (dequantized per FORMAT.md section 1, with v2's clamp
// applied; block scales re-encoded onto a fused group's shared global where they are), by
// relative Frobenius error against the tolerance.
import { globalScaleBytes } from '../format/tensors.js';
import { clampedScales, gemmError, gemmMarlin, gemmReference, randomActivations } from './gemm.js';
import { slab } from './bytes.js';
import type { VerifyContext } from './context.js';
import type { GemmCheck, LayerReport } from './report.js';
import { sampleIndices } from './select.js';
import type { Loaded } from './structure.js';
import type { Unit } from './units.js';

/** FNV-1a of a label: the activations' seed, so each (layer, expert, M) gets its own. */
function fnv(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

export async function checkGemms(ctx: VerifyContext, u: Unit, rep: LayerReport, l: Loaded): Promise<void> {
  const { layout, dtype, backend, ms, tolerance } = ctx;
  const threads = ctx.opts.threads;
  const expertsWanted = ctx.opts.experts ?? 4;
  const checks: GemmCheck[] = [];
  rep.gemm = checks;
  const E = u.experts.length;
  const P = u.parts.length;
  const { n, k, np, kp } = u.shape;
  const width = np * P;
  const sample = expertsWanted === 'all' ? [...Array(E).keys()] : sampleIndices(E, expertsWanted);
  const gsize = globalScaleBytes(ctx);
  // MXFP4: E8M0 scales read as the kernel reads them, against the source's 2^(b-127); no global, no clamp.
  const scheme = ctx.plan.scheme;
  for (const e of sample) {
    const weight = slab(l.weight, e, E);
    const scales = slab(l.scales, e, E);
    const global = l.global?.subarray(gsize * e, gsize * (e + 1));
    for (const m of ms) {
      const x = randomActivations(m, k, dtype, fnv(`${u.name}/${e}/${m}`));
      let y: Float32Array;
      try {
        y = await gemmMarlin({ x, m, k, n: width, np: width, kp, layout, dtype, weight, scales, global, scheme, threads }, backend);
        ctx.counts.gemms++;
      } catch (err) {
        checks.push({ m, expert: u.kind === 'linear' ? undefined : e, rel_err: Infinity, max_abs_err: Infinity, pass: false, error: (err as Error).message });
        continue;
      }
      for (let p = 0; p < P; p++) {
        const part = l.src[e]![p]!;
        const ws2 = u.ws2[e];
        const kept = scheme === 'mxfp4' ? { scales: part.stored, lost: 0 } : clampedScales(part.stored, layout, u.scales.sf);
        const ref = await gemmReference({ x, m, n, k, weight: part.weight, scale: kept.scales, ws2, scheme, dtype, threads }, backend);
        ctx.counts.gemms++;
        const err = gemmError(y, ref, { m, n, cols: width, col0: p * np });
        const c: GemmCheck = { m, rel_err: err.rel, max_abs_err: err.maxAbs, pass: err.rel <= tolerance };
        if (u.kind !== 'linear') {
          c.expert = e;
          c.part = u.parts[p];
        }
        if (kept.lost > 0 || part.reencoded) {
          // The source's own scales and global: what clamp and re-encoding cost (information).
          const exact = await gemmReference({ x, m, n, k, weight: part.weight, scale: part.scale, ws2: part.ownWs2, dtype, threads }, backend);
          ctx.counts.gemms++;
          c.rel_err_vs_exact = gemmError(y, exact, { m, n, cols: width, col0: p * np }).rel;
        }
        if (err.nonFinite > 0) c.error = `${err.nonFinite} outputs are NaN or infinite`;
        checks.push(c);
      }
    }
  }
  rep.worst = ms.map((m) => {
    const at = checks.filter((c) => c.m === m);
    return {
      m,
      rel_err: Math.max(0, ...at.map((c) => c.rel_err)),
      max_abs_err: Math.max(0, ...at.map((c) => c.max_abs_err)),
    };
  });
}
