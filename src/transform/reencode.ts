// Re-encoding of E4M3 block scales onto another global scale (FORMAT.md section 8): the parts
// of a fused group share one global G, so a part with its own global g keeps its weights by
// storing each block scale s as s' = E4M3(s · g / G), rounded to nearest, ties to even. With
// G the largest global of the group, g / G <= 1: s' <= s <= 448, so nothing overflows.
//
// The mapping depends on the byte only, so it is a 256-entry table applied before the Marlin
// transform (on either backend the transform then sees the same bytes), and its effect on a
// tensor follows from the tensor's byte histogram, without a second pass over the data.
import { e4m3Value } from './block-scales.js';
import type { ScaleStats } from './scale-stats.js';

/** The non-negative E4M3 values, bytes 0x00..0x7E, ascending (0x7F is NaN). */
const E4M3_VALUES: readonly number[] = Array.from({ length: 0x7f }, (_, b) => e4m3Value(b));

/** Largest finite E4M3 value. */
export const E4M3_MAX = 448;

/**
 * The E4M3 byte nearest to x (0 <= x <= 448), ties to the even byte (mantissa bit 0 clear),
 * as IEEE round-to-nearest-even does: between 0x07 (7·2^-9) and 0x08 (2^-6) too.
 * Exact for any double x: the neighbours and their midpoint are doubles.
 */
export function roundToE4m3(x: number): number {
  if (!(x >= 0) || x > E4M3_MAX) throw new RangeError(`${x} is outside E4M3's non-negative range [0, ${E4M3_MAX}]`);
  let lo = 0;
  let hi = E4M3_VALUES.length - 1;
  // Largest byte whose value is <= x.
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (E4M3_VALUES[mid]! <= x) lo = mid;
    else hi = mid - 1;
  }
  if (lo === E4M3_VALUES.length - 1) return lo;
  const below = x - E4M3_VALUES[lo]!;
  const above = E4M3_VALUES[lo + 1]! - x;
  if (below < above) return lo;
  if (above < below) return lo + 1;
  return lo % 2 === 0 ? lo : lo + 1;
}

/** How one part's block scales move onto a shared global. */
export interface Reencoding {
  /** The part's own global scale (ModelOpt's weight_scale_2, f32). */
  own: number;
  /** The group's shared global scale. */
  shared: number;
  /** table[b] = the re-encoded byte for source byte b (b < 0x7F; negative and NaN bytes are refused before this). */
  table: Uint8Array;
}

/**
 * The table for one part. s · own is exact in a double (4 × 24 significant bits), and the
 * quotient by `shared`, rounded once to a double, cannot cross an E4M3 rounding boundary
 * it was not already on: a quotient that is not itself a midpoint lies at least 2^-29
 * (relative) away from every midpoint, far beyond a double's 2^-53.
 */
export function reencoding(own: number, shared: number): Reencoding {
  if (!(own > 0 && shared >= own && Number.isFinite(shared))) throw new RangeError(`cannot re-encode from global ${own} onto ${shared} (the shared global must be the larger)`);
  const table = new Uint8Array(256);
  for (let b = 0; b < 256; b++) table[b] = b < 0x7f ? roundToE4m3((E4M3_VALUES[b]! * own) / shared) : b;
  return { own, shared, table };
}

/** Applies the table in place. */
export function reencodeInPlace(scales: Uint8Array, r: Reencoding): void {
  const t = r.table;
  for (let i = 0; i < scales.length; i++) scales[i] = t[scales[i]!]!;
}

/** What a re-encoding did to one tensor (or a stack's parts, merged). */
export interface ReencodeEffect {
  /** Non-zero block scales re-encoded. */
  rescaled: number;
  /** Of those, the ones whose value (scale × global) changed: the rounding was not exact. */
  changed: number;
  /** Of those, the ones that became 0 (the value fell below half of E4M3's smallest step). */
  underflowed: number;
  /**
   * Largest relative change of a dequantized weight: |s'·shared − s·own| / (s·own) over the
   * block scales present; every non-zero weight of a block changes by exactly its block's amount.
   */
  maxRelativeChange: number;
}

export const NO_EFFECT: ReencodeEffect = Object.freeze({ rescaled: 0, changed: 0, underflowed: 0, maxRelativeChange: 0 });

/** The effect on a tensor with the given source statistics, and the statistics after. */
export function reencodeStats(stats: ScaleStats, r: Reencoding): { effect: ReencodeEffect; after: ScaleStats } {
  const histogram = new Float64Array(256);
  let rescaled = 0;
  let changed = 0;
  let underflowed = 0;
  let maxRelativeChange = 0;
  for (let b = 0; b < 256; b++) {
    const count = stats.histogram[b]!;
    if (count === 0) continue;
    const to = r.table[b]!;
    histogram[to]! += count;
    if (b === 0 || b >= 0x7f) continue;
    rescaled += count;
    // Both products are exact in a double.
    const before = E4M3_VALUES[b]! * r.own;
    const after = E4M3_VALUES[to]! * r.shared;
    if (after !== before) {
      changed += count;
      maxRelativeChange = Math.max(maxRelativeChange, Math.abs(after - before) / before);
    }
    if (to === 0) underflowed += count;
  }
  return {
    effect: { rescaled, changed, underflowed, maxRelativeChange },
    after: { maxByte: r.table[stats.maxByte]!, histogram },
  };
}

export function mergeEffects(all: ReencodeEffect[]): ReencodeEffect {
  return all.reduce(
    (a, e) => ({
      rescaled: a.rescaled + e.rescaled,
      changed: a.changed + e.changed,
      underflowed: a.underflowed + e.underflowed,
      maxRelativeChange: Math.max(a.maxRelativeChange, e.maxRelativeChange),
    }),
    NO_EFFECT,
  );
}

/**
 * verify's bound for a re-encoded block scale, in units of the shared global: the exact
 * target x = s · own / shared and a stored E4M3 value s' are consistent when
 * |s' − x| <= max(x · 2^-4, 2^-10). Round-to-nearest moves x by at most half a step: in a
 * normal binade [2^e, 2^(e+1)) the step is 2^(e-3), so half of it is 2^(e-4) <= x · 2^-4;
 * below 2^-6 (subnormals, and the first normal binade) the step is 2^-9, so half is 2^-10
 * absolute — which also covers an underflow to 0 (x <= 2^-10). No overflow: x <= s <= 448.
 */
export function reencodeBound(x: number): number {
  return Math.max(x * 2 ** -4, 2 ** -10);
}
