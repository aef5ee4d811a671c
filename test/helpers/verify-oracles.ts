// The JavaScript verify used before its native replacements (native/src/verify_cpu.cc): the
// oracles the native versions are tested against, number for number and byte for byte.
// clampedScales also serves the GEMM tests, which build references from the kept scales.
import { scaleIsLost } from '../../src/transform/block-scales.js';
import type { ColumnErrors } from '../../src/verify/gemm.js';
import type { LayoutVersion } from '../../src/transform/marlin.js';

/**
 * The source's block scales as a correct conversion keeps them: v2's lost scales set to 0, and
 * −0 (0x80) as 0, the same value (Marlin stores scales without a sign; the transform writes
 * −0 as 0 under both layouts). Returns the input itself when nothing changes.
 */
export function clampedScales(scales: Uint8Array, layout: LayoutVersion, sf: number): { scales: Uint8Array; lost: number } {
  const lostByte = new Uint8Array(256);
  for (let b = 0; b < 256; b++) lostByte[b] = scaleIsLost(b, layout, sf) ? 1 : 0;
  const out = new Uint8Array(scales);
  let lost = 0;
  let changed = false;
  for (let i = 0; i < scales.length; i++) {
    const b = scales[i]!;
    if (b !== 0x80 && !lostByte[b]) continue;
    out[i] = 0;
    changed = true;
    if (b !== 0x80) lost++;
  }
  return { scales: changed ? out : scales, lost };
}

/**
 * Per-column judging of y against ref (both [m, n]; y may be wider: cols, taking columns
 * [col0, col0+n), and may hold more rows: rows [row0, row0+m)). One flipped nibble or scale
 * byte changes one column: its error does not shrink with N as the whole-matrix error does.
 */
export function columnErrors(
  y: Float32Array,
  ref: Float32Array,
  shape: { m: number; n: number; cols?: number; col0?: number; row0?: number; refRow0?: number; refCols?: number },
): ColumnErrors {
  const { m, n } = shape;
  const cols = shape.cols ?? n;
  const col0 = shape.col0 ?? 0;
  const row0 = shape.row0 ?? 0;
  const refRow0 = shape.refRow0 ?? 0;
  const refCols = shape.refCols ?? n;
  const d2 = new Float64Array(n);
  const r2 = new Float64Array(n);
  let maxAbs = 0;
  let nonFinite = 0;
  for (let i = 0; i < m; i++) {
    const yo = (row0 + i) * cols + col0;
    const ro = (refRow0 + i) * refCols;
    for (let j = 0; j < n; j++) {
      const a = y[yo + j]!;
      const b = ref[ro + j]!;
      if (!Number.isFinite(a)) {
        nonFinite++;
        continue;
      }
      const d = a - b;
      d2[j] += d * d;
      r2[j] += b * b;
      const ad = d < 0 ? -d : d;
      if (ad > maxAbs) maxAbs = ad;
    }
  }
  let dTotal = 0;
  let rTotal = 0;
  for (let j = 0; j < n; j++) {
    dTotal += d2[j]!;
    rTotal += r2[j]!;
  }
  if (nonFinite > 0) return { rel: Infinity, column: -1, maxAbs: Infinity, frobenius: Infinity, nonFinite };
  const floor = rTotal / n;
  let rel = 0;
  let column = -1;
  for (let j = 0; j < n; j++) {
    if (d2[j] === 0) continue;
    const denom = Math.max(r2[j]!, floor);
    const e = denom > 0 ? Math.sqrt(d2[j]! / denom) : Infinity;
    if (e > rel || column < 0) {
      rel = e;
      column = j;
    }
  }
  const frobenius = rTotal > 0 ? Math.sqrt(dTotal / rTotal) : dTotal > 0 ? Infinity : 0;
  return { rel, column, maxAbs, frobenius, nonFinite };
}
