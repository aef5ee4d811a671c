// The CUDA backend: every golden vector byte for byte on the GPU, and GPU == CPU byte for byte
// on random tensors (up to 28672x8192, an MoE stack of 64 experts, padded shapes, the sliced
// path, row ranges), the inverses and the error messages. Skipped, with the reason in the
// title, where there is no usable CUDA device; cudaStatus() is checked everywhere.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { addon, type NativePart } from '../src/transform/addon.js';
import { badBlockScaleOf, badScaleReason, type BadBlockScale } from '../src/transform/block-scales.js';
import { linearShape, moePaddedIntermediate } from '../src/transform/marlin.js';
import { expectBytes } from './helpers/bytes.js';
import { DTYPES, goldenMoeStacks, openAllGolden } from './helpers/golden.js';

const native = addon();
const status = native.cudaStatus();
const gpu = status.available;
const title = gpu
  ? `GPU (${status.name ?? 'CUDA device'}, compute capability ${status.capability ?? '?'})`
  : `GPU (skipped: ${status.reason ?? 'no reason given'})`;

const LAYOUTS = ['v1', 'v2'] as const;
const DTYPE_NAMES = ['float16', 'bfloat16'] as const;

/** Deterministic pseudo-random bytes (xorshift32, a word at a time) so failures reproduce. */
function bytes(n: number, seed: number): Buffer {
  const out = Buffer.alloc(n);
  const words = new Uint32Array(out.buffer, out.byteOffset, n >>> 2);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  for (let i = words.length * 4; i < n; i++) out[i] = (seed + i) & 0xff;
  return out;
}

/** Valid non-negative E4M3 block scales (0x00..0x7E): zeros, subnormals and normals. */
function scaleBytes(n: number, seed: number): Buffer {
  const out = bytes(n, seed);
  for (let i = 0; i < n; i++) out[i] = out[i] % 9 === 0 ? 0 : out[i] % 0x7f;
  return out;
}

function stackOf(experts: Uint8Array[][], n: number, np: number): NativePart[][] {
  return experts.map((parts) => parts.map((data) => ({ data, n, np })));
}

async function rejection(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('expected a rejection');
}

/** Where the bad block scale is that a promise rejects with (the native error's fields). */
async function badScale(p: Promise<unknown>): Promise<BadBlockScale> {
  try {
    await p;
  } catch (e) {
    const where = badBlockScaleOf(e);
    if (!where) throw e;
    return where;
  }
  throw new Error('expected a rejection');
}

describe('cudaStatus', () => {
  it('returns a well-formed answer', () => {
    expect(['cpu', 'cpu,cuda']).toContain(native.backends);
    expect(typeof status.available).toBe('boolean');
    expect(typeof status.compiledArchs).toBe('string');
    if (native.backends === 'cpu') {
      expect(status).toEqual({ available: false, reason: 'built without CUDA support', compiledArchs: '' });
    } else {
      expect(status.compiledArchs).toMatch(/^sm_\d+[a-z]?(,sm_\d+[a-z]?)*$/);
    }
    if (status.available) {
      expect(status.reason).toBeUndefined();
      expect(status.devices).toBeGreaterThan(0);
      expect(status.name).toEqual(expect.any(String));
      expect(status.capability).toMatch(/^\d+\.\d+$/);
    } else {
      expect(status.reason).toEqual(expect.any(String));
      expect(status.reason!.length).toBeGreaterThan(0);
    }
  });

  it.skipIf(gpu)('the gpu* calls reject with the reason when there is no usable device', async () => {
    const want = native.backends === 'cpu' ? 'built without CUDA support' : `CUDA unavailable: ${status.reason}`;
    const w = bytes(64 * 16, 1);
    expect(await rejection(native.gpuRepackWeightStack([[{ data: w, n: 64 }]], { k: 32 }))).toBe(want);
    const s = scaleBytes(64 * 2, 2);
    const opts = { k: 32, layout: 'v2', dtype: 'bfloat16' };
    expect(await rejection(native.gpuProcessScalesStack([[{ data: s, n: 64 }]], opts))).toBe(want);
    expect(await rejection(native.gpuUnpackWeight(new Uint8Array(2 * 128 * 4), { n: 64, k: 32 }))).toBe(want);
    expect(await rejection(native.gpuDecodeScales(new Uint8Array(2 * 64), { n: 64, k: 32, layout: 'v2', sf: 1 }))).toBe(
      want,
    );
  });
});

describe('pinned host memory', () => {
  it('gpuHostBuffer gives zero-filled memory of its own pages; gpuPinHost is false without a usable device', () => {
    const b = native.gpuHostBuffer(3 * 4096 + 5);
    expect(b.length).toBe(3 * 4096 + 5);
    expect(b.every((x) => x === 0)).toBe(true);
    b.fill(7);
    expect(native.gpuHostBuffer(0).length).toBe(0);
    if (!gpu) {
      expect(native.gpuPinHost(b)).toBe(false);
      expect(native.gpuUnpinHost(b)).toBe(false);
    }
    const p = native.gpuProfile();
    for (const key of ['calls', 'h2dMs', 'kernelMs', 'd2hMs', 'wallMs', 'h2dBytes', 'd2hBytes', 'pageableBytes', 'pieces', 'pinned'])
      expect(typeof p[key as keyof typeof p]).toBe('number');
  });
});

const { dense, moe, close } = await openAllGolden();
afterAll(close);

describe.skipIf(!gpu)(title, () => {
  afterEach(() => {
    native.gpuSetMemoryLimit(0);
  });

  for (const [file, g] of Object.entries(dense)) {
    describe(`golden ${file}`, () => {
      for (const [c, info] of Object.entries(g.cases)) {
        it(`${c}: every layout and dtype`, async () => {
          const weight = await g.bytes(`${c}.weight`);
          const scales = await g.bytes(`${c}.weight_scale`);
          for (const layout of LAYOUTS) {
            if (layout === 'v1' && !info.v1) continue;
            const s = linearShape(c, layout, g.shape(`${c}.weight`), g.shape(`${c}.weight_scale`));
            const q = await native.gpuRepackWeightStack([[{ data: weight, n: s.n, np: s.np }]], { k: s.k, kp: s.kp });
            expectBytes(q, await g.bytes(`${c}.${layout}.qweight`), `${c} ${layout} qweight`);
            for (const [dtype, tag] of DTYPES) {
              const r = await native.gpuProcessScalesStack([[{ data: scales, n: s.n, np: s.np }]], {
                k: s.k,
                kp: s.kp,
                layout,
                dtype,
              });
              const want = layout === 'v1' ? `${c}.v1.scales` : `${c}.v2.scales.${tag}`;
              expectBytes(r.scales, await g.bytes(want), `${c} ${layout} ${tag} scales`);
              expect(r.sf).toBe(layout === 'v1' ? 1 : info[`v2.scale_factor.${tag}`]);
              const cpu = await native.processScalesStack([[{ data: scales, n: s.n, np: s.np }]], {
                k: s.k,
                kp: s.kp,
                layout,
                dtype,
              });
              expect(r.zeroed).toBe(cpu.zeroed);
            }
          }
        });
      }
    });
  }

  describe('golden moe.safetensors', () => {
    for (const [c, info] of Object.entries(moe.cases)) {
      for (const { S, projs, N, K, E, H, I, load } of goldenMoeStacks(moe, c, info)) {
        it(`${c} ${S}: weights and scales, both layouts and dtypes (stack of ${E})`, async () => {
          const weights = await load('weight');
          const scales = await load('weight_scale');
          for (const layout of LAYOUTS) {
            const np = S === 'w13' ? moePaddedIntermediate(I, H, layout) : N;
            const q = await native.gpuRepackWeightStack(stackOf(weights, N, np), { k: K, kp: K });
            expectBytes(q, await moe.bytes(`${c}.${S}.${layout}.qweight`), `${S} ${layout} qweight`);
            for (const [dtype, tag] of DTYPES) {
              const r = await native.gpuProcessScalesStack(stackOf(scales, N, N), { k: K, kp: K, layout, dtype });
              const want = layout === 'v1' ? `${c}.${S}.v1.scales` : `${c}.${S}.v2.scales.${tag}`;
              expectBytes(r.scales, await moe.bytes(want), `${S} ${layout} ${tag} scales`);
              if (layout === 'v2') expect(r.sf).toBe(info[`${S}.v2.scale_factor.${tag}`]);
            }
          }
        });
      }
    }
  });

  /** GPU == CPU for a stack (experts x parts of n rows, K = k), every layout and dtype, and the inverses. */
  async function compareStack(experts: number, parts: number, n: number, k: number, seed: number, layouts = LAYOUTS) {
    const g = k / 16;
    const weights: Buffer[][] = [];
    const scales: Buffer[][] = [];
    for (let e = 0; e < experts; e++) {
      weights.push([]);
      scales.push([]);
      for (let p = 0; p < parts; p++) {
        weights[e].push(bytes((n * k) / 2, seed + 100 * e + p));
        scales[e].push(scaleBytes(n * g, seed + 100 * e + p + 50));
      }
    }
    for (const layout of layouts) {
      let np = n;
      let kp = k;
      if (layout === 'v2') {
        if (experts === 1 && parts === 1) ({ np, kp } = native.padShapeV2(n, k));
        else np = moePaddedIntermediate(n, k, 'v2');
      } else if (n % 64 !== 0 || k % 32 !== 0) {
        continue;
      }
      const ctx = `${layout} E=${experts} P=${parts} N=${n} (${np}) K=${k} (${kp})`;
      const wstack = stackOf(weights, n, np);
      const cpuQ = await native.repackWeightStack(wstack, { k, kp });
      const gpuQ = await native.gpuRepackWeightStack(wstack, { k, kp });
      expectBytes(gpuQ, cpuQ, `${ctx} qweight`);
      const rowWords = 2 * np * parts;
      const slab = (kp / 16) * rowWords * 4;
      for (const e of new Set([0, experts - 1])) {
        for (let p = 0; p < parts; p++) {
          const packed = cpuQ.subarray(e * slab, (e + 1) * slab);
          const opts = { n, np, k, kp, rowWords, wordOffset: 2 * np * p };
          const a = await native.unpackWeight(packed, opts);
          const b = await native.gpuUnpackWeight(packed, opts);
          expectBytes(b.weight, a.weight, `${ctx} unpack`);
          expectBytes(b.weight, weights[e][p], `${ctx} unpack == source`);
          expect(b.paddingNonzero).toBe(a.paddingNonzero);
          // The comparison on the device (verify's structure check) counts what the host would:
          // nothing against the source, three bytes against a source edited in three places.
          const same = await native.gpuUnpackCompare(packed, weights[e][p], opts);
          expect(same, `${ctx} compare`).toEqual({ count: 0, first: -1, got: 0, paddingNonzero: a.paddingNonzero });
          const want = Buffer.from(weights[e][p]);
          const at = [want.length - 1, (want.length >> 1) + 3, want.length >> 2];
          for (const i of at) want[i] ^= 0x10;
          const first = Math.min(...at);
          const diff = await native.gpuUnpackCompare(packed, want, opts);
          expect(diff, `${ctx} compare edited`).toEqual({ count: 3, first, got: a.weight[first], paddingNonzero: a.paddingNonzero });
          expect(await native.unpackCompare(packed, want, opts)).toEqual(diff);
        }
      }
      const sstack = stackOf(scales, n, np);
      for (const dtype of DTYPE_NAMES) {
        const cpu = await native.processScalesStack(sstack, { k, kp, layout, dtype });
        const out = Buffer.alloc(cpu.scales.length, 0xcd);
        const res = await native.gpuProcessScalesStack(sstack, { k, kp, layout, dtype, out });
        expect(res.scales).toBe(out); // the caller's output buffer is used
        expectBytes(res.scales, cpu.scales, `${ctx} ${dtype} scales`);
        expect(res.sf).toBe(cpu.sf);
        expect(res.zeroed).toBe(cpu.zeroed);
        const totalNp = np * parts;
        const sslab = (kp / 16) * totalNp;
        const e = experts - 1;
        for (let p = 0; p < parts; p++) {
          const processed = cpu.scales.subarray(e * sslab, (e + 1) * sslab);
          const opts = { n, np, k, kp, layout, sf: cpu.sf, totalNp, colOffset: np * p };
          const a = await native.decodeScales(processed, opts);
          const b = await native.gpuDecodeScales(processed, opts);
          expectBytes(b.scales, a.scales, `${ctx} ${dtype} decode`);
          expect(b.paddingNonzero).toBe(a.paddingNonzero);
          // verify's comparison (decoded on the device, compared on the pool thread) finds what
          // the CPU's does: nothing against the source, one scale against a source edited once.
          const same = await native.gpuDecodeCompare(processed, scales[e][p], opts);
          expect(same, `${ctx} ${dtype} decodeCompare`).toEqual(await native.decodeCompare(processed, scales[e][p], opts));
          expect(same).toMatchObject({ count: 0, first: -1, paddingNonzero: a.paddingNonzero });
          const want = Buffer.from(scales[e][p]);
          const i = want.findIndex((v, j) => j >= want.length >> 1 && v >= 0x60 && v < 0x7e);
          want[i]! += 1;
          const diff = await native.gpuDecodeCompare(processed, want, opts);
          expect(diff, `${ctx} ${dtype} decodeCompare edited`).toEqual({ ...same, count: 1, first: i, got: a.scales[i] });
          expect(await native.decodeCompare(processed, want, opts)).toEqual(diff);
        }
      }
    }
  }

  describe('GPU == CPU on random tensors', () => {
    const dense: [number, number][] = [
      [64, 32],
      [200, 48],
      [64, 400],
      [136, 272],
      [1000, 1008],
      [4096, 4096],
      [8192, 8192],
      [28672, 8192],
      [8192, 28672],
    ];
    for (const [n, k] of dense) {
      it(`${n}x${k}`, async () => compareStack(1, 1, n, k, n + k));
    }
    it('MoE: 64 experts x (gate + up 1536x2048)', async () => compareStack(64, 2, 1536, 2048, 7));
    it('MoE: 64 experts x down 2048x1536', async () => compareStack(64, 1, 2048, 1536, 8));
    it('MoE with v2 padding: 8 experts x (gate + up 1000x2048)', async () => compareStack(8, 2, 1000, 2048, 9, ['v2']));
    it('MoE with v2 padding: 3 experts x (gate + up 100x192)', async () => compareStack(3, 2, 100, 192, 10, ['v2']));
  });

  describe('the sliced path (device memory too small for the whole tensor)', () => {
    it('4096x4096 in slices of K rows', async () => {
      native.gpuSetMemoryLimit(3_000_000);
      await compareStack(1, 1, 4096, 4096, 11);
    });
    it('MoE stack in groups of experts and slices of K rows', async () => {
      native.gpuSetMemoryLimit(300_000);
      await compareStack(6, 2, 320, 512, 12);
    });
    it('padded shapes', async () => {
      native.gpuSetMemoryLimit(300_000);
      await compareStack(1, 1, 1000, 1008, 13);
    });
    it('out of memory even for the smallest slice: a clear error', async () => {
      native.gpuSetMemoryLimit(1000);
      const msg = await rejection(native.gpuRepackWeightStack([[{ data: bytes(64 * 2048, 1), n: 64 }]], { k: 4096 }));
      expect(msg).toMatch(/^CUDA out of memory allocating [\d.]+ MB for the weight/);
    });
  });

  it('row ranges match the CPU', async () => {
    const n = 1000;
    const k = 1008;
    const { np, kp } = native.padShapeV2(n, k);
    const w = [[{ data: bytes((n * k) / 2, 21), n, np }]];
    const s = [[{ data: scaleBytes((n * k) / 16, 22), n, np }]];
    const rows = { rowBegin: 16, rowEnd: 48 };
    expectBytes(
      await native.gpuRepackWeightStack(w, { k, kp, ...rows }),
      await native.repackWeightStack(w, { k, kp, ...rows }),
      'qweight rows',
    );
    const opts = { k, kp, layout: 'v2', dtype: 'bfloat16', sf: 4, ...rows };
    const cpu = await native.processScalesStack(s, opts);
    const res = await native.gpuProcessScalesStack(s, opts);
    expectBytes(res.scales, cpu.scales, 'scale rows');
    expect(res.sf).toBe(cpu.sf);
    expect(res.zeroed).toBe(cpu.zeroed);
  });

  describe('negative and NaN block scales: the GPU reports the CPU path\'s position', () => {
    const cases: [string, number, number, number, string][] = [
      ['negative', 0xb8, 0, 5, 'negative (-1)'],
      ['NaN', 0x7f, 3, 17, 'NaN'],
      ['NaN (0xFF)', 0xff, 63, 0, 'NaN'],
      ['negative subnormal', 0x81, 10, 1, 'negative (-0.001953125)'],
    ];
    for (const [what, byte, row, group, text] of cases) {
      it(`${what} in a dense tensor`, async () => {
        const n = 64;
        const k = 512;
        const sc = scaleBytes((n * k) / 16, 31);
        sc[row * (k / 16) + group] = byte;
        const opts = { k, layout: 'v2', dtype: 'bfloat16' };
        const cpu = await badScale(native.processScalesStack([[{ data: sc, n }]], opts));
        expect(cpu).toEqual({ expert: 0, experts: 1, part: 0, rowOffset: 0, row, group, byte });
        expect(badScaleReason(cpu)).toBe(`block scale [${row}, ${group}] is ${text}; Marlin stores scales without a sign`);
        expect(await badScale(native.gpuProcessScalesStack([[{ data: sc, n }]], opts))).toEqual(cpu);
      });
    }
    it('the first of several, in a stack (expert and fused row named)', async () => {
      const n = 128;
      const k = 256;
      const experts = [0, 1, 2, 3].map((e) => [scaleBytes((n * k) / 16, 40 + e), scaleBytes((n * k) / 16, 50 + e)]);
      experts[3][0][7] = 0xb8;
      experts[2][1][100] = 0x7f; // first: expert 2, up part (row 128 + 100/16)
      experts[2][1][500] = 0xc0;
      const stack = stackOf(experts, n, n);
      const opts = { k, layout: 'v1', dtype: 'float16' };
      const cpu = await badScale(native.processScalesStack(stack, opts));
      expect(cpu).toEqual({ expert: 2, experts: 4, part: 1, rowOffset: 128, row: 6, group: 4, byte: 0x7f });
      expect(badScaleReason(cpu)).toBe('expert 2: block scale [134, 4] is NaN; Marlin stores scales without a sign');
      expect(await badScale(native.gpuProcessScalesStack(stack, opts))).toEqual(cpu);
      native.gpuSetMemoryLimit(20_000); // the same answer from a scan in slices
      expect(await badScale(native.gpuProcessScalesStack(stack, opts))).toEqual(cpu);
    });
  });

  it('pinned inputs and outputs: the same bytes, pipelined, and the profile counts every byte', async () => {
    const n = 4096;
    const k = 8192;
    const { np, kp } = native.padShapeV2(n, k);
    const src = bytes((n * k) / 2, 61);
    const sc = scaleBytes((n * k) / 16, 62);
    const host = (from: Buffer) => {
      const b = native.gpuHostBuffer(from.length);
      from.copy(b);
      return b;
    };
    const w = host(src);
    const s = host(sc);
    const outW = native.gpuHostBuffer((kp / 16) * 2 * np * 4);
    const outS = native.gpuHostBuffer((kp / 16) * np);
    for (const b of [w, s, outW, outS]) expect(native.gpuPinHost(b)).toBe(true);
    expect(native.gpuPinHost(w)).toBe(false); // already pinned
    native.gpuProfile({ enable: true, reset: true });
    try {
      const q = await native.gpuRepackWeightStack([[{ data: w, n, np }]], { k, kp, out: outW });
      expect(q).toBe(outW);
      expectBytes(q, await native.repackWeightStack([[{ data: src, n, np }]], { k, kp }), 'pinned qweight');
      let p = native.gpuProfile();
      expect(p.calls).toBe(1);
      expect(p.pieces).toBeGreaterThan(2);
      expect(p.h2dBytes).toBe(src.length);
      expect(p.d2hBytes).toBe(outW.length);
      expect(p.pageableBytes).toBe(0);
      expect(p.h2dMs).toBeGreaterThan(0);
      expect(p.kernelMs).toBeGreaterThan(0);
      expect(p.d2hMs).toBeGreaterThan(0);
      const opts = { k, kp, layout: 'v2', dtype: 'bfloat16' };
      const r = await native.gpuProcessScalesStack([[{ data: s, n, np }]], { ...opts, out: outS });
      const cpu = await native.processScalesStack([[{ data: sc, n, np }]], opts);
      expectBytes(r.scales, cpu.scales, 'pinned scales');
      expect([r.sf, r.zeroed]).toEqual([cpu.sf, cpu.zeroed]);
      p = native.gpuProfile();
      expect(p.calls).toBe(2);
      expect(p.pageableBytes).toBe(0);
      // Pageable memory: the same bytes, counted as pageable.
      expectBytes(await native.gpuRepackWeightStack([[{ data: src, n, np }]], { k, kp }), outW, 'pageable qweight');
      expect(native.gpuProfile().pageableBytes).toBe(src.length + outW.length);
    } finally {
      native.gpuProfile({ enable: false, reset: true });
    }
    for (const b of [w, s, outW, outS]) expect(native.gpuUnpinHost(b)).toBe(true);
    expect(native.gpuUnpinHost(w)).toBe(false);
  });

  it('shape errors are the CPU ones', async () => {
    const w = [[{ data: bytes(100 * 16, 1), n: 100 }]];
    const cpu = await rejection(native.repackWeightStack(w, { k: 32 }));
    expect(await rejection(native.gpuRepackWeightStack(w, { k: 32 }))).toBe(cpu);
  });
});
