// The verification GEMMs: Marlin FP4 read directly (CPU and GPU) against every golden ref.y,
// MoE experts sliced from the golden stacks against the reference GEMM on their NVFP4 inputs,
// padded random shapes, and the GPU reference (cuBLAS or its stand-in) against the CPU's. GPU
// cases are skipped, with the reason in the title, where no CUDA device is usable.
import { describe, expect, it } from 'vitest';
import { addon } from '../src/transform/addon.js';
import { decodeScales, linearShape, processGlobalScale, processScales, repackWeight } from '../src/transform/marlin.js';
import {
  defaultTolerance,
  gemmError,
  gemmMarlin,
  gemmReference,
  randomActivations,
  referenceEngine,
} from '../src/verify/gemm.js';
import { DTYPES, openGolden } from './helpers/golden.js';
import { clampedScales } from './helpers/verify-oracles.js';

const status = addon().cudaStatus();
const gpu = status.available;
const gpuTitle = gpu ? `GPU (${status.name ?? 'CUDA device'})` : `GPU (skipped: ${status.reason ?? 'no reason given'})`;
const BACKENDS = [
  ['cpu', 'CPU', true],
  ['cuda', gpuTitle, gpu],
] as const;

const f32 = (b: Buffer) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));

const small = await openGolden('dense_small.safetensors');
const large = await openGolden('dense_large.safetensors');
const moe = await openGolden('moe.safetensors');

interface DenseCase {
  file: typeof small;
  name: string;
  n: number;
  k: number;
  v1: boolean;
  ms: number[];
  sf: Record<string, number>;
}

const dense: DenseCase[] = [small, large].flatMap((file) =>
  Object.entries(file.cases).map(([name, c]) => ({
    file,
    name,
    n: c.N as number,
    k: c.K as number,
    v1: c.v1 as boolean,
    ms: c.M as number[],
    sf: { f16: c['v2.scale_factor.f16'] as number, bf16: c['v2.scale_factor.bf16'] as number },
  })),
);

for (const [backend, title, usable] of BACKENDS) {
  describe.skipIf(!usable)(`Marlin GEMM on the ${title} vs golden ref.y`, () => {
    for (const c of dense) {
      for (const layout of ['v1', 'v2'] as const) {
        if (layout === 'v1' && !c.v1) continue;
        for (const [dtype, d] of DTYPES) {
          it(`${c.name} ${layout} ${dtype} (M = ${c.ms.join(', ')})`, async () => {
            const g = c.file;
            const p = `${c.name}.${layout}`;
            const [rows, words] = g.shape(`${p}.qweight`) as [number, number];
            const np = words / 2;
            const kp = rows * 16;
            const weight = await g.bytes(`${p}.qweight`);
            const scales = await g.bytes(layout === 'v1' ? `${p}.scales` : `${p}.scales.${d}`);
            const global = await g.bytes(`${p}.global.${d}`);
            // v2 float16 zeroes the tiny case's small scales: the right reference is the one
            // built from the scales the conversion keeps (decoded back from the golden bytes).
            const lossy = layout === 'v2' && dtype === 'float16' && c.name.endsWith('_tiny');
            const shape = { n: c.n, k: c.k, np, kp };
            const kept = lossy ? (await decodeScales(c.name, scales, shape, { layout, sf: c.sf[d]! })).scales : undefined;
            if (kept) {
              // The same scales as the source with v2's clamp applied.
              const clamp = clampedScales(await g.bytes(`${c.name}.weight_scale`), layout, c.sf[d]!);
              expect(clamp.lost).toBeGreaterThan(0);
              expect(Buffer.from(clamp.scales).equals(kept)).toBe(true);
            }
            for (const m of c.ms) {
              const x = await g.bytes(`${c.name}.x.m${m}.${d}`);
              const y = await gemmMarlin({ x, m, k: c.k, n: c.n, np, kp, layout, dtype, weight, scales, global }, backend);
              expect(y.length).toBe(m * c.n);
              const ref = f32(await g.bytes(`${c.name}.ref.y.m${m}.${d}`));
              if (backend === 'cuda') {
                // The simple CUDA kernel, the fast one's test reference, agrees with it.
                const simple = await gemmMarlin({ x, m, k: c.k, n: c.n, np, kp, layout, dtype, weight, scales, global, kernel: 'simple' }, backend);
                expect(gemmError(y, simple).rel, `M = ${m} fast vs simple`).toBeLessThan(1e-5);
              }
              const exact = gemmError(y, ref);
              if (!kept) {
                expect(exact.rel, `M = ${m}`).toBeLessThan(defaultTolerance(dtype));
                continue;
              }
              expect(exact.rel, 'the zeroed scales are visible against the exact weights').toBeGreaterThan(0.01);
              const ws2 = await g.f32(`${c.name}.weight_scale_2`);
              const wsrc = await g.bytes(`${c.name}.weight`);
              const ref2 = await gemmReference({ x, m, n: c.n, k: c.k, weight: wsrc, scale: kept, ws2, dtype }, backend);
              expect(gemmError(y, ref2).rel, `M = ${m} vs decoded v2 scales`).toBeLessThan(defaultTolerance(dtype));
            }
          });
        }
      }
    }

    for (const [name, c] of Object.entries(moe.cases)) {
      const E = c.E as number;
      for (const which of ['w13', 'w2'] as const) {
        for (const layout of ['v1', 'v2'] as const) {
          for (const [dtype, d] of DTYPES) {
            it(`MoE ${name} ${which} ${layout} ${dtype}: every expert vs the reference GEMM`, async () => {
              const p = `${name}.${which}.${layout}`;
              const [, rows, words] = moe.shape(`${p}.qweight`) as [number, number, number];
              const width = words / 2;
              const kp = rows * 16;
              const H = c.hidden as number;
              const I = c.intermediate as number;
              const k = which === 'w13' ? H : I;
              const parts = which === 'w13' ? ['gate_proj', 'up_proj'] : ['down_proj'];
              const partNp = width / parts.length;
              const n = which === 'w13' ? I : H;
              const sf = layout === 'v2' ? (c[`${which}.v2.scale_factor.${d}`] as number) : 1;
              const qweight = await moe.bytes(`${p}.qweight`);
              const qscales = await moe.bytes(layout === 'v1' ? `${p}.scales` : `${p}.scales.${d}`);
              const qglobal = await moe.bytes(`${p}.global.${d}`);
              const gsize = layout === 'v1' ? 2 : 4;
              for (let e = 0; e < E; e++) {
                const slab = (b: Buffer) => b.subarray((e * b.length) / E, ((e + 1) * b.length) / E);
                const m = 1 + 7 * e;
                const x = randomActivations(m, k, dtype, 100 + e);
                const y = await gemmMarlin(
                  { x, m, k, n: width, np: width, kp, layout, dtype, weight: slab(qweight), scales: slab(qscales), global: qglobal.subarray(gsize * e, gsize * (e + 1)) },
                  backend,
                );
                for (const [i, part] of parts.entries()) {
                  const src = `${name}.experts.${e}.${part}`;
                  const ws2 = await moe.f32(`${src}.weight_scale_2`);
                  const { scales: scale } = clampedScales(await moe.bytes(`${src}.weight_scale`), layout, sf);
                  const ref = await gemmReference({ x, m, n, k, weight: await moe.bytes(`${src}.weight`), scale, ws2, dtype }, 'cpu');
                  const err = gemmError(y, ref, { m, n, cols: width, col0: i * partNp });
                  expect(err.rel, `expert ${e} ${part}`).toBeLessThan(defaultTolerance(dtype));
                }
              }
            });
          }
        }
      }
    }

    it('padded random shapes (N, K not tile-aligned; v2 pads both) agree with the reference GEMM', async () => {
      for (const [n, k, seed] of [
        [100, 208, 1],
        [64, 2000, 2],
        [300, 48, 3],
      ] as const) {
        for (const [dtype] of DTYPES) {
          const rnd = randomActivations(1, n * (k / 2 + k / 16), 'bfloat16', seed);
          const weight = rnd.subarray(0, n * (k / 2));
          const scale = Buffer.from(rnd.subarray(n * (k / 2), n * (k / 2) + n * (k / 16)));
          for (let i = 0; i < scale.length; i++) scale[i] = 0x20 + (scale[i]! % 0x40); // 2^-3 .. 30
          const s = linearShape('rand', 'v2', [n, k / 2], [n, k / 16]);
          expect(s.np > n || s.kp > k).toBe(true);
          const ws2 = 0.00390625 * 1.25;
          const packed = await repackWeight('rand', weight, s);
          const ps = await processScales('rand', scale, s, { layout: 'v2', dtype });
          const global = processGlobalScale('rand', ws2, { layout: 'v2', dtype, sf: ps.sf });
          for (const m of [1, 17]) {
            const x = randomActivations(m, k, dtype, seed + m);
            const y = await gemmMarlin({ x, m, k, n, np: s.np, kp: s.kp, layout: 'v2', dtype, weight: packed, scales: ps.scales, global }, backend);
            const ref = await gemmReference({ x, m, n, k, weight, scale, ws2, dtype }, backend);
            expect(gemmError(y, ref).rel, `${n}x${k} ${dtype} M ${m}`).toBeLessThan(1e-5);
          }
        }
      }
    });
  });
}

/**
 * Random packed tensors of an [Np, Kp] converted linear: random words (every E2M1 code) and
 * random processed scale bytes, some zeroed, the rest v·128 from 2^-7 to 2^8. `rnd` (five bytes
 * per scale byte, from `seed`) also serves as the source of a reference of the same shape.
 */
function randomPacked(np: number, kp: number, seed: number): { rnd: Buffer; weight: Buffer; scales: Buffer } {
  const rnd = randomActivations(1, (kp / 16) * np * 5, 'bfloat16', seed);
  const weightBytes = (kp / 16) * 2 * np * 4;
  const scales = Buffer.from(rnd.subarray(weightBytes, weightBytes + (kp / 16) * np));
  for (let i = 0; i < scales.length; i++) scales[i] = scales[i]! % 16 === 0 ? 0 : 0x40 + (scales[i]! % 0x80);
  return { rnd, weight: rnd.subarray(0, weightBytes), scales };
}

describe.skipIf(!gpu)(`fast vs simple Marlin GEMM kernel on the ${gpuTitle}: random packed tensors`, () => {
  // Random words (every E2M1 code), random processed scale bytes with some zeroed ones, a stored
  // global scale as a converter writes it; padded N and K, M not a multiple of 16.
  for (const layout of ['v1', 'v2'] as const) {
    for (const [dtype] of DTYPES) {
      it(`${layout} ${dtype}`, async () => {
        let seed = 11;
        for (const [m, n, np, k, kp] of [
          [1, 64, 64, 64, 64],
          [5, 192, 256, 320, 384],
          [17, 200, 320, 544, 608],
          [33, 1000, 1088, 2048, 2112],
          [100, 512, 512, 768, 768],
          [130, 384, 448, 4096, 4160],
        ] as const) {
          seed++;
          const { weight, scales } = randomPacked(np, kp, seed);
          const bias = dtype === 'bfloat16' ? 126 : 14;
          const gv = 0.375 * 2 ** (bias - 7); // exact in float16 and bfloat16
          const global = Buffer.alloc(layout === 'v2' ? 4 : 2);
          if (layout === 'v2') global.writeFloatLE(gv);
          else global.writeUInt16LE(dtype === 'bfloat16' ? new Uint32Array(new Float32Array([gv]).buffer)[0]! >>> 16 : 0x5200); // float16 48 = 0.375 * 2^7
          const x = randomActivations(m, k, dtype, seed);
          const args = { x, m, k, n, np, kp, layout, dtype, weight, scales, global };
          const fast = await gemmMarlin(args, 'cuda');
          const simple = await gemmMarlin({ ...args, kernel: 'simple' }, 'cuda');
          const err = gemmError(fast, simple);
          expect(err.nonFinite, `${m}x${n}x${k}`).toBe(0);
          expect(err.rel, `${m}x${n}x${k}`).toBeLessThan(1e-5);
          const cpu = await gemmMarlin(args, 'cpu');
          expect(gemmError(fast, cpu).rel, `${m}x${n}x${k} vs CPU`).toBeLessThan(1e-5);
          // verify's call: these rows and one more M in one call, one launch per M (splitM).
          const x2 = Buffer.concat([x, randomActivations(3, k, dtype, seed + 1)]);
          const both = await gemmMarlin({ ...args, x: x2, m: m + 3, splitM: [m, 3] }, 'cuda');
          const bothCpu = await gemmMarlin({ ...args, x: x2, m: m + 3 }, 'cpu');
          expect(gemmError(both.subarray(0, m * n), fast).rel, `${m}x${n}x${k} split`).toBeLessThan(1e-6);
          expect(gemmError(both, bothCpu).rel, `${m}x${n}x${k} split vs CPU`).toBeLessThan(1e-5);
        }
      });
    }
  }
});

describe('fast vs simple CPU GEMM kernels (register-blocked tiles vs dot products): random packed tensors', () => {
  // Each vector width the CPU offers (MARLIN_FP4_CPU_GEMM caps the choice; a cap the CPU lacks
  // falls back to the next narrower one). M covers full and partial row blocks of every width.
  for (const cap of ['generic', 'avx2', 'avx512'] as const) {
    it(`${cap}: Marlin and reference GEMMs`, async () => {
      const saved = process.env.MARLIN_FP4_CPU_GEMM;
      process.env.MARLIN_FP4_CPU_GEMM = cap;
      try {
        let seed = 40;
        for (const [m, n, np, k, kp] of [
          [1, 64, 64, 64, 64],
          [7, 200, 256, 544, 608],
          [13, 100, 128, 1040, 1088],
          [145, 192, 192, 2048, 2048],
        ] as const) {
          seed++;
          const dtype = seed % 2 ? 'float16' : 'bfloat16';
          const { rnd, weight, scales } = randomPacked(np, kp, seed);
          const global = Buffer.alloc(4);
          global.writeFloatLE(0.375 * 2 ** ((dtype === 'bfloat16' ? 126 : 14) - 7));
          const x = randomActivations(m, k, dtype, seed);
          const args = { x, m, k, n, np, kp, layout: 'v2' as const, dtype, weight, scales, global };
          const fast = await gemmMarlin(args);
          const simple = await gemmMarlin({ ...args, kernel: 'simple' });
          expect(gemmError(fast, simple).nonFinite, `Marlin ${m}x${n}x${k}`).toBe(0);
          expect(gemmError(fast, simple).rel, `Marlin ${m}x${n}x${k}`).toBeLessThan(1e-6);
          expect(gemmError(simple, new Float32Array(m * n)).rel, 'a non-zero product').toBe(Infinity);
          // The reference on a source of the same shape (scales E4M3 2^-3 .. 30).
          const src = rnd.subarray(0, n * (k / 2));
          const sscale = Buffer.from(rnd.subarray(n * (k / 2), n * (k / 2) + n * (k / 16)));
          for (let i = 0; i < sscale.length; i++) sscale[i] = 0x20 + (sscale[i]! % 0x40);
          const rargs = { x, m, n, k, weight: src, scale: sscale, ws2: 0.75, dtype };
          const rf = await gemmReference(rargs);
          const rs = await gemmReference({ ...rargs, kernel: 'simple' });
          expect(gemmError(rf, rs).rel, `reference ${m}x${n}x${k}`).toBeLessThan(1e-6);
        }
      } finally {
        if (saved === undefined) delete process.env.MARLIN_FP4_CPU_GEMM;
        else process.env.MARLIN_FP4_CPU_GEMM = saved;
      }
    });
  }
});

describe('GEMM arguments and helpers', () => {
  it('rejects wrong sizes and shapes with the reason', async () => {
    const base = {
      x: Buffer.alloc(2 * 32),
      m: 1,
      k: 32,
      n: 64,
      np: 64,
      kp: 32,
      layout: 'v2' as const,
      dtype: 'bfloat16' as const,
      weight: Buffer.alloc(2 * 2 * 64 * 4),
      scales: Buffer.alloc(2 * 64),
      global: Buffer.alloc(4),
    };
    expect(() => gemmMarlin({ ...base, weight: Buffer.alloc(8) })).toThrow('weight holds 8 bytes, expected 1024');
    expect(() => gemmMarlin({ ...base, global: Buffer.alloc(2) })).toThrow('global holds 2 bytes, expected 4');
    expect(() => gemmMarlin({ ...base, n: 65 })).toThrow('N = 65 is not in [1, Np = 64]');
    expect(() => gemmMarlin({ ...base, m: 0 })).toThrow('M must be at least 1');
    expect(() => gemmMarlin({ ...base, splitM: [1, 1] })).toThrow('splitM adds up to 2, not m = 1');
    expect(() => gemmReference({ x: base.x, m: 1, n: 4, k: 24, weight: Buffer.alloc(48), scale: Buffer.alloc(4), ws2: 1, dtype: 'float16' })).toThrow(
      'K = 24 is not a multiple of 16',
    );
    const zero = await gemmMarlin(base);
    expect([...zero]).toEqual(new Array(64).fill(0));
  });

  it('the CUDA reference engine is reported (or the GEMMs reject without a device)', async () => {
    if (gpu) {
      expect(referenceEngine('cuda')).toMatch(/^(cublas \(.+\)|cuda-kernel \(.+\))$/);
      return;
    }
    const x = Buffer.alloc(2 * 16);
    const want = addon().backends === 'cpu' ? 'built without CUDA support' : `CUDA unavailable: ${status.reason}`;
    await expect(gemmReference({ x, m: 1, n: 1, k: 16, weight: Buffer.alloc(8), scale: Buffer.alloc(1), ws2: 1, dtype: 'float16' }, 'cuda')).rejects.toThrow(want);
  });

  it('random activations are deterministic, exact in both dtypes, and the error measure is right', () => {
    const a = randomActivations(3, 64, 'float16', 7);
    expect(a.equals(randomActivations(3, 64, 'float16', 7))).toBe(true);
    expect(a.equals(randomActivations(3, 64, 'float16', 8))).toBe(false);
    const b = randomActivations(3, 64, 'bfloat16', 7);
    // Same values: float16 bits -> value == bfloat16 bits -> value.
    const h = (u: number) => {
      const e = (u >> 10) & 0x1f;
      const v = e === 0 ? (u & 0x3ff) * 2 ** -24 : (1 + (u & 0x3ff) / 1024) * 2 ** (e - 15);
      return u & 0x8000 ? -v : v;
    };
    const bf = (u: number) => new Float32Array(new Uint32Array([u << 16]).buffer)[0]!;
    for (let i = 0; i < 192; i++) expect(h(a.readUInt16LE(2 * i))).toBe(bf(b.readUInt16LE(2 * i)));
    expect(gemmError(new Float32Array([1, 2]), new Float32Array([1, 2]))).toEqual({ rel: 0, maxAbs: 0, nonFinite: 0 });
    expect(gemmError(new Float32Array([3, 4]), new Float32Array([0, 0])).rel).toBe(Infinity);
    expect(gemmError(new Float32Array([NaN, 4]), new Float32Array([1, 4])).nonFinite).toBe(1);
    expect(gemmError(new Float32Array([0, 0, 1, 2]), new Float32Array([1, 2]), { m: 1, n: 2, cols: 4, col0: 2 }).rel).toBe(0);
  });
});
