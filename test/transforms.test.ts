// The CPU transforms on shapes the golden files do not cover: against a literal transcription
// of FORMAT.md, round trips through the inverses, FORMAT.md section 7's rules, and threads.
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import {
  decodeScales,
  linearShape,
  moePaddedIntermediate,
  packedWeightBytes,
  processedScaleBytes,
  processGlobalScale,
  processScales,
  processScalesStack,
  repackWeight,
  repackWeightStack,
  setThreads,
  unpackCompare,
  unpackWeight,
  type LinearShape,
} from '../src/transform/marlin.js';
import { addon } from '../src/transform/addon.js';
import { BAD_BLOCK_SCALE } from '../src/transform/block-scales.js';
import { expectBytes } from './helpers/bytes.js';
import { specRepack, specScales } from './helpers/spec.js';
import { lostScales, mergeScaleStats, scaleFactor, scanScales, scanScalesOffThread, subnormalScales } from '../src/transform/scale-stats.js';

/** Deterministic pseudo-random bytes (xorshift) so failures reproduce. */
function bytes(n: number, seed: number, map: (b: number) => number = (b) => b): Buffer {
  const out = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = map((x >>> 0) & 0xff);
  }
  return out;
}

/** Valid non-negative E4M3 block scales (0x00..0x7E), some zero, some subnormal. */
const scaleBytes = (n: number, seed: number) => bytes(n, seed, (b) => (b % 9 === 0 ? 0 : b % 0x7f));
/** Scales in the normal E4M3 range only, which every layout and dtype keeps exactly. */
const normalScaleBytes = (n: number, seed: number) => bytes(n, seed, (b) => 0x08 + (b % 0x76));

function shapeOf(name: string, layout: 'v1' | 'v2', n: number, k: number): LinearShape {
  return linearShape(name, layout, [n, k / 2], [n, k / 16]);
}

afterEach(() => {
  setThreads(0);
});

describe('against a literal transcription of FORMAT.md', () => {
  const shapes: [number, number][] = [
    [64, 32],
    [128, 64],
    [320, 160],
    [200, 48],
    [64, 400],
    [136, 272],
  ];
  for (const [n, k] of shapes) {
    for (const layout of ['v1', 'v2'] as const) {
      const v1ok = n % 64 === 0 && k % 32 === 0;
      if (layout === 'v1' && !v1ok) continue;
      it(`${layout} weight and scales, N=${n} K=${k}`, async () => {
        const s = shapeOf('t', layout, n, k);
        const w = bytes((n * k) / 2, n * 31 + k);
        const sc = scaleBytes((n * k) / 16, n + k * 7);
        expectBytes(await repackWeight('t', w, s), specRepack(w, n, k, s.np, s.kp), 'qweight');
        for (const dtype of ['float16', 'bfloat16'] as const) {
          const r = await processScales('t', sc, s, { layout, dtype });
          expectBytes(r.scales, specScales(sc, n, k, s.np, s.kp, layout, r.sf), `scales ${dtype}`);
        }
      });
    }
  }

  it('v2 pads to the smaller-area candidate', () => {
    expect(shapeOf('t', 'v2', 96, 256)).toMatchObject({ np: 128, kp: 256 });
    expect(shapeOf('t', 'v2', 200, 48)).toMatchObject({ np: 256, kp: 64 });
    expect(shapeOf('t', 'v2', 64, 400)).toMatchObject({ np: 64, kp: 512 });
    expect(shapeOf('t', 'v2', 4096, 4096)).toMatchObject({ np: 4096, kp: 4096 });
  });

  it('MoE v2 pads the intermediate size per shard', () => {
    expect(moePaddedIntermediate(192, 256, 'v2')).toBe(192);
    expect(moePaddedIntermediate(100, 256, 'v2')).toBe(128);
    expect(moePaddedIntermediate(100, 192, 'v2')).toBe(128);
    expect(moePaddedIntermediate(130, 192, 'v2')).toBe(256);
    expect(moePaddedIntermediate(130, 256, 'v1')).toBe(130);
  });
});

describe('round trips through the inverses', () => {
  const shapes: [number, number][] = [
    [64, 32],
    [192, 512],
    [96, 256],
    [1000, 1008],
    [4096, 1024],
  ];
  for (const [n, k] of shapes) {
    for (const layout of ['v1', 'v2'] as const) {
      if (layout === 'v1' && (n % 64 !== 0 || k % 32 !== 0)) continue;
      it(`${layout} N=${n} K=${k}: unpack(repack(w)) == w, decode(process(s)) == s`, async () => {
        const s = shapeOf('t', layout, n, k);
        const w = randomBytes((n * k) / 2);
        const packed = await repackWeight('t', w, s);
        const back = await unpackWeight('t', packed, s);
        expectBytes(back.weight, w, 'weight');
        expect(back.paddingNonzero).toBe(0);
        // verify's fused unpack + compare: nothing against the source; against a source with
        // two bytes edited, those two and the first one's unpacked value.
        expect(await unpackCompare('t', packed, w, s)).toEqual({ count: 0, first: -1, got: 0, paddingNonzero: 0 });
        const edited = Buffer.from(w);
        edited[edited.length - 1]! ^= 0x01;
        edited[edited.length >> 1]! ^= 0x80;
        const first = edited.length >> 1;
        expect(await unpackCompare('t', packed, edited, s)).toEqual({ count: 2, first, got: w[first], paddingNonzero: 0 });
        const sc = normalScaleBytes((n * k) / 16, n ^ k);
        for (const dtype of ['float16', 'bfloat16'] as const) {
          const p = await processScales('t', sc, s, { layout, dtype });
          const d = await decodeScales('t', p.scales, s, { layout, sf: p.sf });
          expectBytes(d.scales, sc, `scales ${dtype}`);
          expect(d.paddingNonzero).toBe(0);
        }
      });
    }
  }

  it('v2 float16 zeroes E4M3 subnormal scales and counts them', async () => {
    const s = shapeOf('t', 'v2', 64, 64);
    const sc = Buffer.alloc(64 * 4, 0x38); // 1.0
    sc[5] = 0x01; // 2^-9: lost under float16
    sc[6] = 0x07; // 7 * 2^-9: lost
    sc[7] = 0x08; // 2^-6: kept
    const f16 = await processScales('t', sc, s, { layout: 'v2', dtype: 'float16' });
    expect(f16.zeroed).toBe(2);
    const bf16 = await processScales('t', sc, s, { layout: 'v2', dtype: 'bfloat16' });
    expect(bf16.zeroed).toBe(0);
    expect(bf16.sf).toBe(256); // 1.0 * 256 <= 448 < 512
    const v1 = await processScales('t', sc, shapeOf('t', 'v1', 64, 64), { layout: 'v1', dtype: 'float16' });
    expect(v1.zeroed).toBe(0);
    // The same counts from a scan, before any output exists.
    const stats = scanScales('t', sc, 4);
    expect(lostScales(stats, 'v2', 1)).toBe(2);
    expect(lostScales(stats, 'v2', scaleFactor(stats, 'v2', 'bfloat16'))).toBe(0);
    expect(lostScales(stats, 'v1', 1)).toBe(0);
    expect(subnormalScales(stats)).toBe(2);
  });

  it('parts of a fused (w13) stack unpack from their column offset', async () => {
    const I = 100;
    const H = 128;
    const ip = moePaddedIntermediate(I, H, 'v2');
    const part: LinearShape = { n: I, k: H, np: ip, kp: H };
    const experts = [0, 1, 2].map(() => [randomBytes((I * H) / 2), randomBytes((I * H) / 2)]);
    const stack = await repackWeightStack('w13', experts, part);
    const slab = (H / 16) * 2 * (2 * ip) * 4;
    expect(stack.length).toBe(3 * slab);
    for (let e = 0; e < 3; e++) {
      for (let p = 0; p < 2; p++) {
        const one = stack.subarray(e * slab, (e + 1) * slab);
        const back = await unpackWeight('w13', one, part, { totalNp: 2 * ip, colOffset: p * ip });
        expectBytes(back.weight, experts[e]![p]!, `expert ${e} part ${p}`);
      }
    }
    const scales = experts.map(() => [normalScaleBytes((I * H) / 16, 1), normalScaleBytes((I * H) / 16, 2)]);
    const r = await processScalesStack('w13', scales, part, { layout: 'v2', dtype: 'bfloat16' });
    const sslab = (H / 16) * 2 * ip;
    for (let e = 0; e < 3; e++) {
      for (let p = 0; p < 2; p++) {
        const d = await decodeScales('w13', r.scales.subarray(e * sslab, (e + 1) * sslab), part, { layout: 'v2', sf: r.sf }, { totalNp: 2 * ip, colOffset: p * ip });
        expectBytes(d.scales, scales[e]![p]!, `scales ${e}/${p}`);
      }
    }
  });

  it('an MoE stack gets one scale factor for all experts', async () => {
    const part: LinearShape = { n: 64, k: 64, np: 64, kp: 64 };
    const big = Buffer.alloc(64 * 4, 0x78); // 256: sf 1
    const small = Buffer.alloc(64 * 4, 0x30); // 0.5: alone it would get sf 512
    const alone = await processScalesStack('w2', [[small]], part, { layout: 'v2', dtype: 'bfloat16' });
    expect(alone.sf).toBe(512);
    const both = await processScalesStack('w2', [[big], [small]], part, { layout: 'v2', dtype: 'bfloat16' });
    expect(both.sf).toBe(1);
    const stats = mergeScaleStats([scanScales('w2', big, 4), scanScales('w2', small, 4)]);
    expect(scaleFactor(stats, 'v2', 'bfloat16')).toBe(1);
    expect(scaleFactor(scanScales('w2', small, 4), 'v2', 'bfloat16')).toBe(512);
  });
});

describe('FORMAT.md section 7: errors name the tensor and the reason', () => {
  const s = () => shapeOf('model.layers.0.mlp.up_proj', 'v2', 64, 64);
  const name = 'model.layers.0.mlp.up_proj';

  it('negative block scale', async () => {
    const sc = Buffer.alloc(64 * 4, 0x38);
    sc[4 * 3 + 1] = 0xb8; // -1.0 at row 3, group 1
    await expect(processScales(name, sc, s(), { layout: 'v2', dtype: 'float16' })).rejects.toThrow(
      `${name}: block scale [3, 1] is negative (-1); Marlin stores scales without a sign`,
    );
    expect(() => scanScales(name, sc, 4)).toThrow(`${name}: block scale [3, 1] is negative (-1); Marlin stores scales without a sign`);
    await expect(scanScalesOffThread(name, sc, 4)).rejects.toThrow(`${name}: block scale [3, 1] is negative (-1); Marlin stores scales without a sign`);
  });

  it('the scan on a pool thread counts what the scan on the main thread counts', async () => {
    const sc = randomBytes(3 << 20).map((b) => b & 0x7e); // no sign bit, no NaN (0x7f)
    const onPool = await scanScalesOffThread(name, sc, 4);
    const here = scanScales(name, sc, 4);
    expect(onPool.maxByte).toBe(here.maxByte);
    expect([...onPool.histogram]).toEqual([...here.histogram]);
    expect(onPool.histogram.reduce((a, b) => a + b, 0)).toBe(sc.length);
  });

  it('NaN block scale', async () => {
    const sc = Buffer.alloc(64 * 4, 0x38);
    sc[100] = 0x7f;
    await expect(processScales(name, sc, s(), { layout: 'v1', dtype: 'bfloat16' })).rejects.toThrow(
      `${name}: block scale [25, 0] is NaN`,
    );
  });

  it('a bad scale of a stack: the native error says where, one message names the expert and the fused row', async () => {
    const part: LinearShape = { n: 64, k: 64, np: 64, kp: 64 };
    const experts = [0, 1, 2].map(() => [Buffer.alloc(64 * 4, 0x38), Buffer.alloc(64 * 4, 0x38)]);
    experts[2]![0]![4 * 9 + 2] = 0xc0; // -2.0: expert 2, gate, row 9, group 2
    experts[1]![1]![4 * 5 + 3] = 0x7f; // first in (expert, part, row, group) order: expert 1, up, row 5
    const raw = await addon()
      .processScalesStack(
        experts.map((ps) => ps.map((data) => ({ data, n: 64 }))),
        { k: 64, layout: 'v1', dtype: 'float16' },
      )
      .then(() => undefined, (e: unknown) => e);
    expect(raw).toMatchObject({ code: BAD_BLOCK_SCALE, expert: 1, experts: 3, part: 1, rowOffset: 64, row: 5, group: 3, byte: 0x7f });
    await expect(processScalesStack(name, experts, part, { layout: 'v1', dtype: 'float16' })).rejects.toThrow(
      `${name}: expert 1: block scale [69, 3] is NaN; Marlin stores scales without a sign`,
    );
    experts[1]![1]![4 * 5 + 3] = 0x38;
    await expect(processScalesStack(name, experts, part, { layout: 'v2', dtype: 'bfloat16' })).rejects.toThrow(
      `${name}: expert 2: block scale [9, 2] is negative (-2); Marlin stores scales without a sign`,
    );
  });

  it('negative zero is a zero scale, not an error', async () => {
    const sc = Buffer.alloc(64 * 4, 0x38);
    sc[0] = 0x80;
    const r = await processScales(name, sc, s(), { layout: 'v2', dtype: 'float16' });
    expect(r.scales.length).toBe((s().kp / 16) * s().np);
    expect(r.scales[0]).toBe(0);
  });

  it('bad shapes', () => {
    expect(() => linearShape(name, 'v2', [64, 32, 1], [64, 4])).toThrow(`${name}: weight must be 2-D [N, K/2], got [64, 32, 1]`);
    expect(() => linearShape(name, 'v2', [64, 32], [64, 8])).toThrow(`${name}: weight_scale shape [64, 8] is not [N, K/16] = [64, 4]`);
    expect(() => linearShape(name, 'v2', [64, 36], [64, 4])).toThrow(`${name}: K = 72 is not a multiple of 16`);
    expect(() => linearShape(name, 'v1', [96, 32], [96, 4])).toThrow(`${name}: N = 96 is not a multiple of 64`);
    expect(() => linearShape(name, 'v1', [64, 24], [64, 3])).toThrow(`${name}: K = 48 is not a multiple of 32`);
    expect(() => linearShape(name, 'v2', [0, 32], [0, 4])).toThrow(`${name}: weight is empty`);
  });

  it('buffer sizes that do not match the shape', async () => {
    await expect(repackWeight(name, Buffer.alloc(10), s())).rejects.toThrow(`${name}: part 0 holds 10 bytes, expected 2048 for 64 rows`);
  });

  it('global scale that is not a positive finite number', () => {
    for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => processGlobalScale(name, bad, { layout: 'v2', dtype: 'float16' })).toThrow(/is not a positive finite number/);
    }
    expect(() => processGlobalScale(name, 1e6, { layout: 'v1', dtype: 'float16' })).toThrow(`${name}: processed global scale overflows float16`);
  });
});

describe('caller-provided output buffers', () => {
  it('write the same bytes as fresh ones and reject a wrong size', async () => {
    const s = shapeOf('t', 'v2', 192, 256);
    const w = randomBytes((192 * 256) / 2);
    const sc = scaleBytes((192 * 256) / 16, 3);
    const out = Buffer.alloc(packedWeightBytes(s), 0xee);
    const got = await repackWeight('t', w, s, out);
    expect(got).toBe(out);
    expectBytes(out, await repackWeight('t', w, s));
    const outS = Buffer.alloc(processedScaleBytes(s), 0xee);
    const r = await processScales('t', sc, s, { layout: 'v2', dtype: 'float16', out: outS });
    expect(r.scales).toBe(outS);
    expectBytes(outS, (await processScales('t', sc, s, { layout: 'v2', dtype: 'float16' })).scales);
    await expect(repackWeight('t', w, s, Buffer.alloc(8))).rejects.toThrow(`t: out holds 8 bytes, expected ${packedWeightBytes(s)}`);
  });
});

describe('row slices', () => {
  for (const layout of ['v1', 'v2'] as const) {
    it(`${layout}: slices of K/16 rows concatenate to the whole tensor`, async () => {
      const s = shapeOf('t', layout, 192, 1024);
      const w = randomBytes((192 * 1024) / 2);
      const sc = scaleBytes((192 * 1024) / 16, 5);
      const whole = await repackWeight('t', w, s);
      const scales = await processScales('t', sc, s, { layout, dtype: 'bfloat16' });
      const parts: Buffer[] = [];
      const sparts: Buffer[] = [];
      for (const [a, b] of [[0, 6], [6, 40], [40, 64]] as const) {
        parts.push(await repackWeightStack('t', [[w]], s, { rows: { rowBegin: a, rowEnd: b } }));
        const r = await processScales('t', sc, s, { layout, dtype: 'bfloat16', sf: scales.sf, rows: { rowBegin: a, rowEnd: b } });
        expect(r.zeroed).toBeNull();
        sparts.push(r.scales);
      }
      expectBytes(Buffer.concat(parts), whole, 'weight');
      expectBytes(Buffer.concat(sparts), scales.scales, 'scales');
    });
  }

  it('rejects ranges that are not slices', async () => {
    const s = shapeOf('t', 'v1', 64, 64);
    const sc = scaleBytes(64 * 4, 1);
    await expect(repackWeightStack('t', [[randomBytes(64 * 32)]], s, { rows: { rowBegin: 2, rowEnd: 9 } })).rejects.toThrow(
      't: rows [2, 9) are not a slice of the 4 rows',
    );
    await expect(processScales('t', sc, s, { layout: 'v1', dtype: 'float16', sf: 1, rows: { rowBegin: 1, rowEnd: 2 } })).rejects.toThrow(
      't: rows [1, 2) are not a slice of the 4 rows in steps of 2',
    );
    await expect(processScales('t', sc, s, { layout: 'v1', dtype: 'float16', rows: { rowBegin: 0, rowEnd: 2 } })).rejects.toThrow(
      't: a row range of scales needs sf',
    );
  });
});

describe('threads', () => {
  it('1 thread and all threads give the same bytes', async () => {
    const s = shapeOf('t', 'v2', 2048, 4096);
    const w = randomBytes((2048 * 4096) / 2);
    const sc = scaleBytes((2048 * 4096) / 16, 9);
    setThreads(1);
    const q1 = await repackWeight('t', w, s);
    const s1 = await processScales('t', sc, s, { layout: 'v2', dtype: 'float16' });
    setThreads(0);
    const qn = await repackWeight('t', w, s);
    const sn = await processScales('t', sc, s, { layout: 'v2', dtype: 'float16' });
    expectBytes(qn, q1);
    expectBytes(sn.scales, s1.scales);
    expect(sn.zeroed).toBe(s1.zeroed);
  });
});
