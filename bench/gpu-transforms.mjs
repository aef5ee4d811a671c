// Benchmark of the CUDA transforms through the addon (layout v2, bfloat16), end to end from
// host buffers: gpuRepackWeightStack + gpuProcessScalesStack (copies to and from the device
// included), against the CPU path on every core; with fresh output buffers, reused ones, and
// (pinned) inputs and outputs page-locked with gpuPinHost.
// Usage: node bench/gpu-transforms.mjs [--sizes 8192x8192,28672x8192] [--reps 5]
// Kernel-only times (device-resident data, against a device memcpy) are not in the addon: run
//   cmake --build native/build --target cuda_selftest && native/build/cuda_selftest --quick --bench
// Exits cleanly, saying why, where there is no usable CUDA device.
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const addonPath = new URL('../native/build/Release/marlin_fp4.node', import.meta.url).pathname;
let native;
try {
  native = require(addonPath);
} catch (e) {
  console.log(`native addon not loadable (${addonPath}): ${e.message}`);
  process.exit(0);
}

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: '8192x8192,28672x8192' },
    reps: { type: 'string', default: '5' },
  },
});
const reps = Number(values.reps);
const sizes = values.sizes.split(',').map((s) => s.split('x').map(Number));

const status = native.cudaStatus();
if (!status.available) {
  console.log(`no GPU benchmark: ${status.reason} (backends: ${native.backends})`);
  process.exit(0);
}
console.log(
  `${status.name} (compute capability ${status.capability}), ${status.devices} device(s); addon built for ${status.compiledArchs}`,
);

const pad = (s, n) => String(s).padStart(n);

async function best(fn) {
  let min = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    min = Math.min(min, performance.now() - t0);
  }
  return min;
}

console.log(`\nend to end from host buffers (best of ${reps}; MB/s of input bytes; the CPU on ${availableParallelism()} cores)`);
console.log('shape          output   gpu repack  gpu scales  gpu MB/s | cpu repack  cpu scales  cpu MB/s');
for (const [n, k] of sizes) {
  const weight = randomBytes((n * k) / 2);
  const scales = Buffer.from(randomBytes((n * k) / 16).map((b) => 0x20 + (b % 0x50)));
  const { np, kp } = native.padShapeV2(n, k);
  const outW = Buffer.alloc((kp / 16) * 2 * np * 4);
  const outS = Buffer.alloc((kp / 16) * np);
  const pinned = (src) => {
    const b = native.gpuHostBuffer(src.length);
    src.copy(b);
    if (!native.gpuPinHost(b)) console.log('(gpuPinHost refused a buffer: that row is pageable)');
    return b;
  };
  const pin = { weight: pinned(weight), scales: pinned(scales), outW: pinned(outW), outS: pinned(outS) };
  const sopts = { k, kp, layout: 'v2', dtype: 'bfloat16' };
  for (const mode of ['fresh', 'reused', 'pinned']) {
    const reuse = mode !== 'fresh';
    const w = [[{ data: mode === 'pinned' ? pin.weight : weight, n, np }]];
    const s = [[{ data: mode === 'pinned' ? pin.scales : scales, n, np }]];
    const o = (buf) => (reuse ? { out: mode === 'pinned' ? (buf === outW ? pin.outW : pin.outS) : buf } : {});
    const gw = await best(() => native.gpuRepackWeightStack(w, { k, kp, ...o(outW) }));
    const gs = await best(() => native.gpuProcessScalesStack(s, { ...sopts, ...o(outS) }));
    const cw = await best(() => native.repackWeightStack(w, { k, kp, ...o(outW) }));
    const cs = await best(() => native.processScalesStack(s, { ...sopts, ...o(outS) }));
    const inMB = (weight.length + scales.length) / 1e6;
    console.log(
      `${`${n}x${k}`.padEnd(14)} ${mode.padEnd(6)} ${pad(gw.toFixed(1), 10)}ms ${pad(gs.toFixed(1), 9)}ms ${pad((inMB / ((gw + gs) / 1e3)).toFixed(0), 9)} | ` +
        `${pad(cw.toFixed(1), 9)}ms ${pad(cs.toFixed(1), 9)}ms ${pad((inMB / ((cw + cs) / 1e3)).toFixed(0), 9)}`,
    );
  }
}
