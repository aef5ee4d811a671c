// Where a verify run's seconds went, for the `stages` of the JSON report: each stage's time
// summed over the lanes that run side by side (so stages may add up to more than the wall
// time), beside the wall time of the whole run.
export const STAGES = ['open_and_plan', 'integrity', 'files', 'read', 'structure', 'gemm', 'copied'] as const;
export type Stage = (typeof STAGES)[number];

export class StageTimes {
  private readonly ms = new Map<Stage, number>(STAGES.map((s) => [s, 0]));

  /** Adds the time until `p` settles to `stage`. */
  async time<T>(stage: Stage, p: Promise<T> | (() => Promise<T>)): Promise<T> {
    const t0 = performance.now();
    try {
      return await (typeof p === 'function' ? p() : p);
    } finally {
      this.add(stage, performance.now() - t0);
    }
  }

  add(stage: Stage, ms: number): void {
    this.ms.set(stage, this.ms.get(stage)! + ms);
  }

  /** Seconds per stage, to the millisecond. */
  seconds(): Record<Stage, number> {
    return Object.fromEntries(STAGES.map((s) => [s, Math.round(this.ms.get(s)!) / 1e3])) as Record<Stage, number>;
  }
}
