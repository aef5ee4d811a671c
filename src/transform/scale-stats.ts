// What a tensor's block scales imply before any output is written: validity (no negative or
// NaN scale), v2's scale factor, and how many scales a layout loses or mis-decodes.
import { addon, type NativeAddon } from './addon.js';
import { badScaleReason, scaleIsLost } from './block-scales.js';
import { TransformError, type ActDtype, type LayoutVersion } from './marlin.js';

export interface ScaleStats {
  maxByte: number;
  /** Count of each E4M3 byte value. */
  histogram: Float64Array;
}

/** Scans block scales [rows, groups]; a negative or NaN scale is an error naming its position. */
export function scanScales(tensor: string, data: Uint8Array, groups: number): ScaleStats {
  return scanResult(tensor, addon().scanScales(data), groups);
}

/**
 * scanScales on a pool thread, for scans that run beside a conversion (the main thread drives
 * the shards meanwhile); `data` must not change until it resolves.
 */
export async function scanScalesOffThread(tensor: string, data: Uint8Array, groups: number): Promise<ScaleStats> {
  return scanResult(tensor, await addon().scanScalesAsync(data), groups);
}

function scanResult(tensor: string, r: ReturnType<NativeAddon['scanScales']>, groups: number): ScaleStats {
  if (r.badIndex >= 0) {
    const where = { expert: 0, experts: 1, part: 0, rowOffset: 0, row: Math.floor(r.badIndex / groups), group: r.badIndex % groups };
    throw new TransformError(tensor, badScaleReason({ ...where, byte: r.badByte }));
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
  let n = 0;
  for (let b = 1; b < 0x7f; b++) if (scaleIsLost(b, layout, sf)) n += stats.histogram[b]!;
  return n;
}

/** Scales below 2^-6 (E4M3 subnormals): kept by v1, but decoded wrongly by the bfloat16 kernel. */
export function subnormalScales(stats: ScaleStats): number {
  let n = 0;
  for (let b = 1; b < 8; b++) n += stats.histogram[b]!;
  return n;
}
