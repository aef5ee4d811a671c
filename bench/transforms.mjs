// Micro-benchmark of the CPU transforms (issue: "CPU path is never the bottleneck").
// Usage: npm run bench [-- --sizes 8192x8192,28672x8192 --reps 5]
// Reports MB/s of input bytes (U8 weight + E4M3 scales) for 1 thread and for all threads.
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import {
  linearShape,
  packedWeightBytes,
  processedScaleBytes,
  processScales,
  repackWeight,
  setThreads,
} from '../dist/transform/marlin.js';

const { values } = parseArgs({
  options: { sizes: { type: 'string', default: '8192x8192,28672x8192' }, reps: { type: 'string', default: '5' } },
});
const reps = Number(values.reps);
const cores = availableParallelism();
const threadCounts = [...new Set([1, 2, cores])].filter((t) => t <= cores);

async function best(fn) {
  let min = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    min = Math.min(min, performance.now() - t0);
  }
  return min;
}

console.log(`node ${process.version}, ${cores} cores, best of ${reps}`);
console.log('"fresh": a new output buffer per call (page faults included); "reused": the output buffer');
console.log('is reused across calls, as convert does.');
console.log('shape          output  threads  repack ms  scales ms  input MB/s  MB/s/thread');
for (const size of values.sizes.split(',')) {
  const [n, k] = size.split('x').map(Number);
  const weight = randomBytes((n * k) / 2);
  // Normal-range E4M3 block scales, like real checkpoints.
  const scales = Buffer.from(randomBytes((n * k) / 16).map((b) => 0x20 + (b % 0x50)));
  const shape = linearShape('bench', 'v2', [n, k / 2], [n, k / 16]);
  const outW = Buffer.alloc(packedWeightBytes(shape));
  const outS = Buffer.alloc(processedScaleBytes(shape));
  for (const reuse of [false, true]) {
    for (const threads of threadCounts) {
      setThreads(threads);
      const tw = await best(() => repackWeight('bench', weight, shape, reuse ? outW : undefined));
      const ts = await best(() =>
        processScales('bench', scales, shape, { layout: 'v2', dtype: 'bfloat16', out: reuse ? outS : undefined }),
      );
      const mbps = (weight.length + scales.length) / 1e6 / ((tw + ts) / 1e3);
      console.log(
        `${size.padEnd(14)} ${(reuse ? 'reused' : 'fresh').padEnd(6)}  ${String(threads).padStart(7)}  ${tw.toFixed(1).padStart(9)}  ${ts.toFixed(1).padStart(9)}  ${mbps.toFixed(0).padStart(10)}  ${(mbps / threads).toFixed(0).padStart(11)}`,
      );
    }
  }
}
