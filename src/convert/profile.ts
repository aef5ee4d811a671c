// Opt-in time breakdown of convert (MARLIN_FP4_PROFILE=1): where the seconds went, printed to
// stderr once the output is in place. Off by default, and then free: timed() hands back the
// promise it was given, and nothing is counted or printed.
import { performance } from 'node:perf_hooks';
import { addon } from '../transform/addon.js';
import type { Backend } from '../transform/marlin.js';

export const PROFILE = process.env.MARLIN_FP4_PROFILE === '1';

type Phase = 'plan' | 'scans' | 'scanWait' | 'read' | 'transform' | 'write' | 'writeWait';
const spent: Record<Phase, number> = { plan: 0, scans: 0, scanWait: 0, read: 0, transform: 0, write: 0, writeWait: 0 };
const calls: Record<Phase, number> = { plan: 0, scans: 0, scanWait: 0, read: 0, transform: 0, write: 0, writeWait: 0 };
const allocated = { buffers: 0, bytes: 0 };
/** Moments of the run (ms since the process started), in the order they happened: the critical path. */
const marks: [string, number][] = [];

/** Records that `what` happened now (the timeline printed with the profile). */
export function mark(what: string): void {
  if (PROFILE) marks.push([what, performance.now()]);
}

/** Adds the time until `p` settles to `phase` (milliseconds, summed over concurrent shards). */
export function timed<T>(phase: Phase, p: Promise<T>): Promise<T> {
  if (!PROFILE) return p;
  const t0 = performance.now();
  calls[phase]++;
  return p.finally(() => {
    spent[phase] += performance.now() - t0;
  });
}

/** A buffer the pool had to allocate (not reuse). */
export function noteAllocation(bytes: number): void {
  if (!PROFILE) return;
  allocated.buffers++;
  allocated.bytes += bytes;
}

/** Resets the counts and, for the GPU, turns on the CUDA-event timing of the addon's calls. */
export function startProfile(backend: Backend): void {
  if (!PROFILE) return;
  for (const k of Object.keys(spent) as Phase[]) spent[k] = calls[k] = 0;
  allocated.buffers = allocated.bytes = 0;
  if (backend === 'cuda') addon().gpuProfile({ enable: true, reset: true });
}

const s = (ms: number) => `${(ms / 1e3).toFixed(3).padStart(8)} s`;
const gb = (bytes: number) => `${(bytes / 1e9).toFixed(2)} GB`;

/** The breakdown, on stderr. totalMs: the whole convert(); lanes: shards converted at once. */
export function reportProfile(backend: Backend, totalMs: number, lanes: number): void {
  if (!PROFILE) return;
  const lines = [
    `profile (MARLIN_FP4_PROFILE=1), --device ${backend}; read/transform/write times are summed over the ${lanes} shards converted at once:`,
    `  plan (global scales)       ${s(spent.plan)}`,
    `  scale scans, all of them   ${s(spent.scans)}  (from the end of planning, which they start during, to the last one's end)`,
    `  waiting for scale scans    ${s(spent.scanWait)}  (summed over shards; each waits for its own modules' scans)`,
    `  reading tensors            ${s(spent.read)}  (${calls.read} reads)`,
    `  transform calls            ${s(spent.transform)}  (${calls.transform} calls)`,
  ];
  if (backend === 'cuda') {
    const g = addon().gpuProfile({ enable: false });
    lines.push(
      `    inside GPU calls (CUDA events, summed stream time; stages overlap): ${g.calls} calls, ${g.pieces} pipelined pieces`,
      `      host -> device           ${s(g.h2dMs)}  ${gb(g.h2dBytes)}  (${(g.h2dBytes / 1e6 / Math.max(g.h2dMs, 1e-9)).toFixed(1)} GB/s)`,
      `      kernels                  ${s(g.kernelMs)}`,
      `      device -> host           ${s(g.d2hMs)}  ${gb(g.d2hBytes)}  (${(g.d2hBytes / 1e6 / Math.max(g.d2hMs, 1e-9)).toFixed(1)} GB/s)`,
      `      host time in the calls   ${s(g.wallMs)}`,
      `      pageable (unpinned) bytes copied: ${gb(g.pageableBytes)}; pinned ${g.pinned} buffers (${gb(g.pinnedBytes)}) in ${(g.pinMs / 1e3).toFixed(3)} s, ${g.pinFailures} refused`,
      `    CUDA probe (before planning) ${s(g.probeMs)}; context creation ${s(g.contextMs)} (started with the probe, beside planning)`,
    );
  }
  lines.push(
    `  writing (write calls)      ${s(spent.write)}  (${calls.write} writes)`,
    `  waiting for writes         ${s(spent.writeWait)}`,
    `  buffers allocated: ${allocated.buffers} (${gb(allocated.bytes)})`,
    `  total                      ${s(totalMs)}`,
  );
  // How busy the main thread was since the process started: near 100%, it is the bottleneck.
  const elu = performance.eventLoopUtilization();
  lines.push(`  main thread busy           ${s(elu.active)}  (${(100 * elu.utilization).toFixed(0)}% of the process's ${s(elu.active + elu.idle).trim()})`);
  lines.push('  timeline (seconds since the process started):');
  for (const [what, t] of marks) lines.push(`    ${(t / 1e3).toFixed(3).padStart(7)}  ${what}`);
  marks.length = 0;
  process.stderr.write(lines.join('\n') + '\n');
}
