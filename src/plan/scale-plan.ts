// Reads every block-scale tensor once before anything is written: a negative or NaN scale
// fails the run up front, and v2's scale factors (needed in each shard's header metadata and
// in the global scales) and the layout's losses are known in advance. A part re-encoded onto
// its fused group's shared global counts with its re-encoded scales (from its histogram).
import { readTensor, type Checkpoint } from '../checkpoint/model-dir.js';
import {
  lostScales,
  mergeScaleStats,
  scaleFactor,
  scanScales,
  subnormalScales,
  type ScaleStats,
} from '../transform/scale-stats.js';
import { mergeEffects, reencodeStats, type ReencodeEffect, type Reencoding } from '../transform/reencode.js';
import type { ActDtype, LayoutVersion } from '../transform/marlin.js';
import { asInputError, type LinearSource } from './linears.js';

export interface ScaleOutcome {
  sf: number;
  /** Block scales v2 sets to 0. */
  lost: number;
  /** Block scales below 2^-6, which the v1 bfloat16 kernel decodes wrongly. */
  subnormal: number;
  /** Present where block scales were re-encoded onto a fused group's shared global. */
  reencoded?: ReencodeEffect;
}

/** One part of a scale factor's scope, with the re-encoding its block scales get (if any). */
export interface ScalePart {
  lin: LinearSource;
  reencoding?: Reencoding;
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

/**
 * One scale factor over all the given parts (one dense linear, a fused group, or every part
 * of a stack); `each` holds every part's own outcome under that factor (what a dense linear of
 * a group records), `all` the whole scope's.
 */
export async function planScales(
  ckpt: Checkpoint,
  parts: ScalePart[],
  layout: LayoutVersion,
  dtype: ActDtype,
): Promise<{ all: ScaleOutcome; each: ScaleOutcome[] }> {
  const stats: ScaleStats[] = [];
  const effects: (ReencodeEffect | undefined)[] = [];
  for (const { lin, reencoding } of parts) {
    const source = await scan(ckpt, lin);
    if (!reencoding) {
      stats.push(source);
      effects.push(undefined);
      continue;
    }
    const { effect, after } = reencodeStats(source, reencoding);
    stats.push(after);
    effects.push(effect);
  }
  const merged = mergeScaleStats(stats);
  const sf = scaleFactor(merged, layout, dtype);
  const outcome = (s: ScaleStats, effect: ReencodeEffect | undefined): ScaleOutcome => ({
    sf,
    lost: lostScales(s, layout, sf),
    subnormal: subnormalScales(s),
    ...(effect ? { reencoded: effect } : {}),
  });
  const present = effects.filter((e): e is ReencodeEffect => !!e);
  return {
    all: outcome(merged, present.length ? mergeEffects(present) : undefined),
    each: stats.map((s, i) => outcome(s, effects[i])),
  };
}
