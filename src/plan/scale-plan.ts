// Reads every block-scale tensor once before its module is written: a negative or NaN scale
// fails the run before that output exists, and v2's scale factors (needed in each shard's
// header metadata and in the global scales) and the layout's losses are known in advance. A
// part re-encoded onto its fused group's shared global counts with its re-encoded scales (from
// its histogram). ScaleScans says when the scans run: all before the plan is returned
// (verify), or started by convert beside the conversion, each shard waiting only for its own.
import type { Checkpoint } from '../checkpoint/model-dir.js';
import { readSource } from './source-bytes.js';
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
  const data = await readSource(ckpt, lin, 'scale');
  const groups = lin.k / 16;
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

interface ScanJob {
  run: () => Promise<void>;
  done: Promise<void>;
  settle: (error?: unknown) => void;
}

/**
 * The scans of a plan, one per scale factor (a dense linear, a fused group, an MoE stack),
 * each filling the ScaleOutcome of the modules it covers. Registered while planning; run all
 * at once (runAll) or started in an order and awaited module by module (start, ready), so that
 * the first shards convert while the scans of later ones still run.
 */
export class ScaleScans {
  private readonly jobs: ScanJob[] = [];
  private readonly jobOf = new Map<object, ScanJob>();
  private running: Promise<void> | undefined;
  private failure: { error: unknown } | undefined;

  /** Registers the scan that fills the scale outcomes of `modules`. */
  add(modules: readonly object[], run: () => Promise<void>): void {
    let settle!: (error?: unknown) => void;
    const done = new Promise<void>((resolve, reject) => {
      settle = (error) => (error === undefined ? resolve() : reject(error));
    });
    done.catch(() => {}); // a failure is reported through ready() or runAll(), not as unhandled
    const job: ScanJob = { run, done, settle };
    this.jobs.push(job);
    for (const m of modules) this.jobOf.set(m, job);
  }

  /**
   * Starts every scan, at most `limit` at once: first those covering `first` (in that order),
   * then the rest in the order registered. After a failure no scan starts, and every scan not
   * yet run fails with the same error.
   */
  start(limit: number, first: readonly object[] = []): void {
    if (this.running) return;
    const order = [...new Set([...first.map((m) => this.jobOf.get(m)).filter((j): j is ScanJob => !!j), ...this.jobs])];
    let next = 0;
    const lane = async () => {
      while (next < order.length) {
        const job = order[next++]!;
        if (this.failure) {
          job.settle(this.failure.error);
          continue;
        }
        try {
          await job.run();
          job.settle();
        } catch (error) {
          this.failure ??= { error };
          job.settle(error);
        }
      }
    };
    this.running = Promise.all(Array.from({ length: Math.max(1, Math.min(limit, order.length)) }, lane)).then(() => {});
  }

  /** Resolves once the scans covering `modules` are done; rejects with a scan's error. Needs start(). */
  async ready(modules: readonly object[]): Promise<void> {
    if (!this.running) throw new Error('ScaleScans.ready before start');
    const jobs = new Set(modules.map((m) => this.jobOf.get(m)).filter((j): j is ScanJob => !!j));
    await Promise.all([...jobs].map((j) => j.done));
  }

  /** Runs every scan (at most `limit` at once) and waits for them; the first error is thrown. */
  async runAll(limit: number): Promise<void> {
    this.start(limit);
    await this.settled();
    if (this.failure) throw this.failure.error;
  }

  /** Waits until no scan runs any more (before the checkpoint's files are closed). */
  async settled(): Promise<void> {
    await this.running;
  }

  /** Starts no further scan (the conversion failed elsewhere); those not run fail with `reason`. */
  stop(reason: unknown): void {
    this.failure ??= { error: reason };
  }
}
