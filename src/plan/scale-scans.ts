// When the block-scale scans of a plan (scale-plan.ts) run: each is registered while planning
// and may start at once, a bounded number side by side, so that they read and count beside
// the rest of the planning instead of after it; the caller then waits for all of them
// (verify), or for each shard's own before that shard is written (convert).
import { ScanBuffer } from './scale-plan.js';

interface ScanJob {
  run: (scratch: ScanBuffer) => Promise<void>;
  /** Lower runs first (convert: the index of the shard the module is written to). */
  rank: number;
  done: Promise<void>;
  settle: (error?: unknown) => void;
}

/**
 * The scans of a plan, one per scale factor (a dense linear, a fused group, an MoE stack),
 * each filling the ScaleOutcome of the modules it covers. Once started, a scan registered
 * later starts as soon as a lane is free; the queue runs by rank, then in the order
 * registered, and start() with modules named first puts their scans at its head.
 */
export class ScaleScans {
  private readonly jobOf = new Map<object, ScanJob>();
  /** Registered, not yet started, in the order they will start. */
  private queue: ScanJob[] = [];
  private limit = 0;
  private lanes = 0;
  /** Read buffers of lanes that ended, for the next lane (each is up to 8 MiB: not allocated again). */
  private readonly scratch: ScanBuffer[] = [];
  private whenIdle: (() => void)[] = [];
  private failure: { error: unknown } | undefined;

  /** Registers the scan that fills the scale outcomes of `modules`; `run` gets its lane's read buffer. */
  add(modules: readonly object[], run: (scratch: ScanBuffer) => Promise<void>, rank = 0): void {
    let settle!: (error?: unknown) => void;
    const done = new Promise<void>((resolve, reject) => {
      settle = (error) => (error === undefined ? resolve() : reject(error));
    });
    done.catch(() => {}); // a failure is reported through ready() or runAll(), not as unhandled
    const job: ScanJob = { run, rank, done, settle };
    // After the last job of a rank no higher than its own (jobs come mostly in rank order).
    let at = this.queue.length;
    while (at > 0 && this.queue[at - 1]!.rank > rank) at--;
    this.queue.splice(at, 0, job);
    for (const m of modules) this.jobOf.set(m, job);
    this.fillLanes();
  }

  /**
   * Runs the scans, at most `limit` at once: those covering `first` (in that order) before the
   * others still waiting. Called again, it only reorders what has not started. After a failure
   * no scan starts, and every scan not yet run fails with the same error.
   */
  start(limit: number, first: readonly object[] = []): void {
    if (this.limit === 0) this.limit = Math.max(1, limit);
    if (first.length > 0) {
      const waiting = new Set(this.queue);
      const head = new Set(first.map((m) => this.jobOf.get(m)).filter((j): j is ScanJob => !!j && waiting.has(j)));
      this.queue = [...head, ...this.queue.filter((j) => !head.has(j))];
    }
    this.fillLanes();
  }

  private fillLanes(): void {
    while (this.limit > 0 && this.lanes < this.limit && this.queue.length > 0) {
      this.lanes++;
      void this.lane();
    }
  }

  private async lane(): Promise<void> {
    const scratch = this.scratch.pop() ?? new ScanBuffer();
    for (let job = this.queue.shift(); job; job = this.queue.shift()) {
      if (this.failure) {
        job.settle(this.failure.error);
        continue;
      }
      try {
        await job.run(scratch);
        job.settle();
      } catch (error) {
        this.failure ??= { error };
        job.settle(error);
      }
    }
    this.scratch.push(scratch);
    if (--this.lanes === 0) for (const resolve of this.whenIdle.splice(0)) resolve();
  }

  /** Resolves once the scans covering `modules` are done; rejects with a scan's error. Needs start(). */
  async ready(modules: readonly object[]): Promise<void> {
    if (this.limit === 0) throw new Error('ScaleScans.ready before start');
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
  settled(): Promise<void> {
    return this.lanes === 0 ? Promise.resolve() : new Promise((resolve) => this.whenIdle.push(resolve));
  }

  /** Starts no further scan (the conversion failed elsewhere); those not run fail with `reason`. */
  stop(reason: unknown): void {
    this.failure ??= { error: reason };
  }
}
