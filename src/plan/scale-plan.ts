// Reads every block-scale tensor once before anything is written: a negative or NaN scale
// fails the run up front, and v2's scale factors (needed in each shard's header metadata and
// in the global scales) and the layout's losses are known in advance.
import { readTensor, type Checkpoint } from '../checkpoint/model-dir.js';
import {
  lostScales,
  mergeScaleStats,
  scaleFactor,
  scanScales,
  subnormalScales,
  type ScaleStats,
} from '../transform/scale-stats.js';
import type { ActDtype, LayoutVersion } from '../transform/marlin.js';
import { asInputError, type LinearSource } from './linears.js';

export interface ScaleOutcome {
  sf: number;
  /** Block scales v2 sets to 0. */
  lost: number;
  /** Block scales below 2^-6, which the v1 bfloat16 kernel decodes wrongly. */
  subnormal: number;
}

async function scan(ckpt: Checkpoint, lin: LinearSource): Promise<ScaleStats> {
  const data = await readTensor(ckpt, lin.scale);
  const groups = ckpt.tensors.get(lin.scale)!.entry.shape[1]!;
  try {
    return scanScales(lin.scale, data, groups);
  } catch (e) {
    asInputError(ckpt, e);
  }
}

/** One scale factor for all the given linears (one dense linear, or every part of a stack). */
export async function planScales(
  ckpt: Checkpoint,
  linears: LinearSource[],
  layout: LayoutVersion,
  dtype: ActDtype,
): Promise<ScaleOutcome> {
  const stats: ScaleStats[] = [];
  for (const lin of linears) stats.push(await scan(ckpt, lin));
  const all = mergeScaleStats(stats);
  const sf = scaleFactor(all, layout, dtype);
  return { sf, lost: lostScales(all, layout, sf), subnormal: subnormalScales(all) };
}
