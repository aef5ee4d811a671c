// What a tensor's block scales imply before any output is written: validity (no negative or
// NaN scale), v2's scale factor, and how many scales a layout loses or mis-decodes.
import { addon } from './addon.js';
import { TransformError, type ActDtype, type LayoutVersion } from './marlin.js';

export interface ScaleStats {
  maxByte: number;
  /** Count of each E4M3 byte value. */
  histogram: Float64Array;
}

function e4m3(b: number): number {
  const e = (b >> 3) & 0xf;
  const m = b & 7;
  return e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7);
}

/** Scans block scales [rows, groups]; a negative or NaN scale is an error naming its position. */
export function scanScales(tensor: string, data: Uint8Array, groups: number): ScaleStats {
  const r = addon().scanScales(data);
  if (r.badIndex >= 0) {
    const row = Math.floor(r.badIndex / groups);
    const what = (r.badByte & 0x7f) === 0x7f ? 'NaN' : `negative (${-e4m3(r.badByte & 0x7f)})`;
    throw new TransformError(tensor, `block scale [${row}, ${r.badIndex % groups}] is ${what}; Marlin stores scales without a sign`);
  }
  return { maxByte: r.maxByte, histogram: r.histogram };
}

export function mergeScaleStats(all: ScaleStats[]): ScaleStats {
  const histogram = new Float64Array(256);
  for (const s of all) for (let i = 0; i < 256; i++) histogram[i]! += s.histogram[i]!;
  return { maxByte: Math.max(0, ...all.map((s) => s.maxByte)), histogram };
}

/** v2/bfloat16: the largest power of two keeping every scale <= 448; 1 otherwise. */
export function scaleFactor(stats: ScaleStats, layout: LayoutVersion, dtype: ActDtype): number {
  return addon().scaleFactor(stats.maxByte, { layout, dtype });
}

/** Non-zero scales that v2 sets to 0 (scaled value below 2^-6). */
export function lostScales(stats: ScaleStats, layout: LayoutVersion, sf: number): number {
  if (layout !== 'v2') return 0;
  let n = 0;
  for (let b = 1; b < 0x7f; b++) if (e4m3(b) * sf * 128 < 2) n += stats.histogram[b]!;
  return n;
}

/** Scales below 2^-6 (E4M3 subnormals): kept by v1, but decoded wrongly by the bfloat16 kernel. */
export function subnormalScales(stats: ScaleStats): number {
  let n = 0;
  for (let b = 1; b < 8; b++) n += stats.histogram[b]!;
  return n;
}
