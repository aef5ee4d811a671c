// Reads every block-scale tensor once before its module is written: a negative or NaN scale
// fails the run before that output exists, and v2's scale factors (needed in each shard's
// header metadata and in the global scales) and the layout's losses are known in advance. A
// part re-encoded onto its fused group's shared global counts with its re-encoded scales (from
// its histogram). ScaleScans (scale-scans.ts) says when the scans run.
import type { Checkpoint } from '../checkpoint/model-dir.js';
import { readSource } from './source-bytes.js';
import {
  lostScales,
  mergeScaleStats,
  scaleFactor,
  scanScalesOffThread,
  subnormalScales,
  type ScaleStats,
} from '../transform/scale-stats.js';
import { mergeEffects, reencodeStats, type ReencodeEffect, type Reencoding } from '../transform/reencode.js';
import type { ActDtype, LayoutVersion } from '../transform/marlin.js';
import { asInputError, type LinearSource } from './linears.js';
import { readTensorsInto, tensorsBytes } from '../checkpoint/read-batch.js';

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
  return scanData(ckpt, lin, await readSource(ckpt, lin, 'scale'));
}

async function scanData(ckpt: Checkpoint, lin: LinearSource, data: Uint8Array): Promise<ScaleStats> {
  try {
    return await scanScalesOffThread(lin.scale, data, lin.k / 16);
  } catch (e) {
    asInputError(ckpt, e);
  }
}

/** Bytes of block scales read at once by one scan (an MoE stack's parts, many at a time). */
const SCAN_BATCH_BYTES = 8 * 1024 * 1024;

/**
 * A scan's reusable read buffer: fresh memory costs page faults on every batch, so each lane
 * of ScaleScans keeps one, SCAN_BATCH_BYTES (or one larger part's size). Its pages are only
 * touched as far as reads fill it.
 */
export class ScanBuffer {
  private buffer: Buffer | undefined;
  take(size: number): Buffer {
    if (!this.buffer || this.buffer.length < size) this.buffer = Buffer.allocUnsafeSlow(Math.max(size, SCAN_BATCH_BYTES));
    return this.buffer.subarray(0, size);
  }
}

/**
 * Parts i, i+1, … that are whole tensors of their own (no slice, no view), up to
 * SCAN_BATCH_BYTES together; when `merge`, only parts without a re-encoding.
 */
function plainRun(ckpt: Checkpoint, parts: ScalePart[], i: number, merge: boolean): { lins: LinearSource[]; bytes: number } {
  const lins: LinearSource[] = [];
  let bytes = 0;
  for (let j = i; j < parts.length; j++) {
    const { lin, reencoding } = parts[j]!;
    if (lin.slice || lin.view || (merge && reencoding)) break;
    const size = tensorsBytes(ckpt, [lin.scale]);
    if (lins.length > 0 && bytes + size > SCAN_BATCH_BYTES) break;
    lins.push(lin);
    bytes += size;
  }
  return { lins, bytes };
}

/** Block-scale statistics of one part, or of several merged, with the re-encoding they get. */
interface Scanned {
  stats: ScaleStats;
  reencoding?: Reencoding;
}

/**
 * The parts' block-scale statistics, in order: one entry per part, or with `merge` one per
 * run of parts without a re-encoding (an MoE stack needs only its total). Runs of whole tensors
 * are read together (adjacent ones in one read, a few reads at once: checkpoint/read-batch.ts)
 * instead of one awaited read per tensor, and a merged run is scanned in one native call (on
 * several cores when large), not hundreds. Where a batch cannot be read or holds a bad scale,
 * its parts are read and scanned one by one, so the error is the one a serial scan meets
 * first (a bad scale before an unreadable tensor, the first bad tensor in the parts' order).
 */
async function scanParts(ckpt: Checkpoint, parts: ScalePart[], scratch: ScanBuffer, merge: boolean): Promise<Scanned[]> {
  const out: Scanned[] = [];
  for (let i = 0; i < parts.length; ) {
    const { lins, bytes } = plainRun(ckpt, parts, i, merge);
    if (lins.length === 0) {
      // A slice or a view of a shared 3-D tensor (read, and un-transposed, on its own), or a
      // part re-encoded, whose statistics are kept apart.
      out.push({ stats: await scan(ckpt, parts[i]!.lin), reencoding: parts[i]!.reencoding });
      i++;
      continue;
    }
    const batch = parts.slice(i, i + lins.length);
    i += lins.length;
    const target = scratch.take(bytes);
    let views: Buffer[] | undefined;
    try {
      views = await readTensorsInto(ckpt, lins.map((l) => l.scale), target);
    } catch {
      views = undefined;
    }
    if (views && merge) {
      // The tensors fill the read buffer back to back: one scan of it is the run's total.
      const whole = await scanWhole(target);
      if (whole) {
        out.push({ stats: whole });
        continue;
      }
    }
    for (const [k, { lin, reencoding }] of batch.entries()) {
      out.push({ stats: views ? await scanData(ckpt, lin, views[k]!) : await scan(ckpt, lin), reencoding });
    }
  }
  return out;
}

/** The statistics of a read buffer of several tensors; undefined when it holds a bad scale (located part by part). */
async function scanWhole(data: Buffer): Promise<ScaleStats | undefined> {
  try {
    return await scanScalesOffThread('', data, 1);
  } catch {
    return undefined;
  }
}

/**
 * One scale factor over all the given parts (one dense linear, a fused group, or every part
 * of a stack); `each` holds every part's own outcome under that factor (what a dense linear of
 * a group records), `all` the whole scope's. `each: false`: only `all` is wanted (an MoE
 * stack), and parts are scanned many at a time.
 */
export async function planScales(
  ckpt: Checkpoint,
  parts: ScalePart[],
  layout: LayoutVersion,
  dtype: ActDtype,
  scratch = new ScanBuffer(),
  opts: { each?: boolean } = {},
): Promise<{ all: ScaleOutcome; each: ScaleOutcome[] }> {
  const wantEach = opts.each ?? true;
  const stats: ScaleStats[] = [];
  const effects: (ReencodeEffect | undefined)[] = [];
  for (const { stats: source, reencoding } of await scanParts(ckpt, parts, scratch, !wantEach)) {
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
    each: wantEach ? stats.map((s, i) => outcome(s, effects[i])) : [],
  };
}
