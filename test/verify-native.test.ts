// verify's native comparisons (native/src/verify_cpu.cc) against the JavaScript they replace
// (test/helpers/verify-oracles.ts): decodeCompare finds the same scale differences, first byte
// and v2 losses as decodeScales + the JS clamp + diffBytes; the reference GEMM's clamp gives the
// very numbers of a reference on the JS-clamped scales; columnErrors gives the JS numbers to the
// last bit. On the CPU, and on the GPU where one is usable (skipped otherwise, with the reason).
import { describe, expect, it } from 'vitest';
import { addon } from '../src/transform/addon.js';
import { decodeCompare, decodeScales, linearShape, processScales, type Backend, type LayoutVersion } from '../src/transform/marlin.js';
import { diffBytes } from '../src/verify/bytes.js';
import { columnErrors, gemmMarlin, gemmReference, randomActivations } from '../src/verify/gemm.js';
import { clampedScales, columnErrors as columnErrorsJs } from './helpers/verify-oracles.js';

const status = addon().cudaStatus();
const BACKENDS: { backend: Backend; title: string; skip: boolean }[] = [
  { backend: 'cpu', title: 'CPU', skip: false },
  { backend: 'cuda', title: status.available ? `GPU (${status.name ?? 'CUDA device'})` : `GPU (skipped: ${status.reason ?? 'no reason given'})`, skip: !status.available },
];

/** Deterministic bytes (xorshift32). */
function bytes(n: number, seed: number): Buffer {
  const out = Buffer.alloc(n);
  let x = (Math.imul(seed, 2654435761) >>> 0) || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = (x >>> 0) & 0xff;
  }
  return out;
}

/**
 * Block scales a source may hold: zeros, subnormals, normals up to 0x7E, and −0 (0x80), which
 * a conversion writes as 0. Small ones are frequent, so that v2 loses some at sf = 1.
 */
function sourceScales(n: number, seed: number): Buffer {
  const out = bytes(n, seed);
  for (let i = 0; i < n; i++) {
    const b = out[i]!;
    out[i] = b % 23 === 0 ? 0x80 : b % 11 === 0 ? 0 : b % 3 === 0 ? b % 16 : b % 0x7f;
  }
  return out;
}

/** What verify's JS did before: decode, clamp the source, diff. */
async function jsCompare(processed: Uint8Array, source: Uint8Array, s: ReturnType<typeof linearShape>, opts: { layout: LayoutVersion; sf: number }, where: { totalNp: number; colOffset: number }) {
  const decoded = await decodeScales('t', processed, s, opts, where);
  const kept = clampedScales(source, opts.layout, opts.sf);
  const d = diffBytes(decoded.scales, kept.scales);
  return { count: d.count, first: d.first, got: d.count > 0 ? decoded.scales[d.first]! : 0, lost: kept.lost, paddingNonzero: decoded.paddingNonzero };
}

describe.each(BACKENDS)('decodeCompare finds what decodeScales + the JS clamp + diffBytes found: $title', ({ backend, skip }) => {
  // Shapes: aligned, padded by v2, and two parts side by side (gate and up of a fused tensor);
  // lengths of N·K/16 that are not multiples of the native 64-byte blocks.
  const cases = [
    { n: 128, k: 256, layouts: ['v1', 'v2'] as const },
    { n: 100, k: 208, layouts: ['v2'] as const },
    { n: 192, k: 4096, layouts: ['v1', 'v2'] as const },
  ];
  for (const { n, k, layouts } of cases) {
    for (const layout of layouts) {
      it.skipIf(skip)(`${n}x${k} ${layout}: unchanged, then a wrong scale byte, swapped bytes, an edited source`, async () => {
        const s = linearShape('t', layout, [n, k / 2], [n, k / 16]);
        const parts = [sourceScales(n * (k / 16), n + k), sourceScales(n * (k / 16), n + k + 1)];
        for (const sf of layout === 'v2' ? [1, 2 ** -6] : [1]) {
          // Both parts processed into one tensor, as a fused w13 holds them.
          const processed = Buffer.concat(
            await Promise.all(parts.map(async (p) => (await processScales('t', p, s, { layout, dtype: 'bfloat16', sf })).scales)),
          );
          // Interleave rows: [kp/16 units] x [part 0 | part 1] (scale_unit_rows: 2 under v1).
          const u = layout === 'v1' ? 2 : 1;
          const unit = u * s.np;
          const fused = Buffer.alloc(processed.length);
          const half = processed.length / 2;
          for (let h = 0; h < half / unit; h++) {
            processed.copy(fused, 2 * h * unit, h * unit, (h + 1) * unit);
            processed.copy(fused, (2 * h + 1) * unit, half + h * unit, half + (h + 1) * unit);
          }
          for (const [p, source] of parts.entries()) {
            const where = { totalNp: 2 * s.np, colOffset: p * s.np };
            const opts = { layout, sf };
            const native = () => decodeCompare('t', fused, source, s, opts, where, backend);
            const clean = await native();
            expect(clean).toEqual(await jsCompare(fused, source, s, opts, where));
            expect(clean.count, `${layout} sf ${sf} part ${p}`).toBe(0);
            if (layout === 'v2' && sf === 2 ** -6) expect(clean.lost).toBeGreaterThan(0);
            // One processed byte of this part changed (a wrong scale byte), and two swapped.
            for (const edit of [
              (b: Buffer) => (b[(2 * 3 + p) * unit + 5]! ^= 0x08),
              (b: Buffer) => {
                const i = (2 * 1 + p) * unit + 9;
                [b[i], b[i + 1]] = [b[i + 1]!, b[i]!];
              },
            ]) {
              const bad = Buffer.from(fused);
              edit(bad);
              const got = await decodeCompare('t', bad, source, s, opts, where, backend);
              expect(got).toEqual(await jsCompare(bad, source, s, opts, where));
            }
            // The source edited where its scale is large (kept whatever the clamp).
            const edited = Buffer.from(source);
            const i = edited.findIndex((b, j) => j > edited.length / 2 && b >= 0x60 && b < 0x7e);
            expect(i).toBeGreaterThan(0);
            edited[i]! += 1;
            const found = await decodeCompare('t', fused, edited, s, opts, where, backend);
            expect(found).toEqual(await jsCompare(fused, edited, s, opts, where));
            expect(found).toMatchObject({ count: 1, first: i, got: source[i] });
          }
        }
      });
    }
  }

  it.skipIf(skip)('the clamp of every byte, at every alignment and length, is the byte rule', async () => {
    // Processed scales of all zeros decode to 0 everywhere: the differences are then exactly
    // the kept source's non-zero bytes, and lost is counted over every byte. Lengths N·K/16
    // that are and are not multiples of the native 64-byte blocks.
    for (const [layout, sf] of [
      ['v2', 1],
      ['v2', 2 ** -6],
      ['v2', 2 ** -12],
      ['v1', 1],
    ] as const) {
      for (const [n, k] of [
        [64, 32],
        [64, 96],
        [100, 48],
        [64, 1056],
        [100, 1040],
      ] as const) {
        if (layout === 'v1' && n % 64 !== 0) continue;
        const s = linearShape('t', layout, [n, k / 2], [n, k / 16]);
        const zeros = Buffer.alloc((s.kp / 16) * s.np);
        for (const offset of [0, 1, 3]) {
          const source = sourceScales(n * (k / 16) + offset, k + offset).subarray(offset);
          const kept = clampedScales(source, layout, sf);
          let nonzero = 0;
          let first = -1;
          for (let i = 0; i < kept.scales.length; i++) {
            if (kept.scales[i] === 0) continue;
            nonzero++;
            if (first < 0) first = i;
          }
          const got = await decodeCompare('t', zeros, source, s, { layout, sf }, undefined, backend);
          expect(got, `${layout} sf ${sf} ${n}x${k} offset ${offset}`).toEqual({ count: nonzero, first, got: 0, lost: kept.lost, paddingNonzero: 0 });
          if (layout === 'v2' && sf === 2 ** -12) expect(kept.lost).toBeGreaterThan(0);
        }
      }
    }
  });

  it.skipIf(skip)("the reference GEMM's clamp gives the numbers of a reference on the JS-clamped scales", async () => {
    for (const [n, k, sf] of [
      [64, 256, 1],
      [100, 512, 2 ** -6],
    ] as const) {
      const weight = bytes(n * (k / 2), n);
      const scale = sourceScales(n * (k / 16), k);
      const kept = clampedScales(scale, 'v2', sf);
      expect(kept.scales).not.toBe(scale); // something is clamped
      for (const dtype of ['bfloat16', 'float16'] as const) {
        const x = randomActivations(17, k, dtype, 3);
        const args = { x, m: 17, n, k, weight, ws2: 0.5, dtype };
        const want = await gemmReference({ ...args, scale: kept.scales }, backend);
        const got = await gemmReference({ ...args, scale, clamp: { layout: 'v2', sf } }, backend);
        expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer)), `${n}x${k} sf ${sf} ${dtype}`).toBe(true);
        // The caller's buffer is untouched by the clamp (it works on a copy).
        expect(scale.equals(sourceScales(n * (k / 16), k))).toBe(true);
      }
    }
  });

  it.skipIf(skip)('GEMM outputs go into the buffer given as out', async () => {
    const n = 64;
    const k = 64;
    const x = randomActivations(2, k, 'bfloat16', 1);
    const weight = bytes(n * (k / 2), 5);
    const scale = sourceScales(n * (k / 16), 6);
    const out = new Float32Array(2 * n).fill(NaN);
    const ref = await gemmReference({ x, m: 2, n, k, weight, scale, ws2: 1, dtype: 'bfloat16', out }, backend);
    expect(ref).toBe(out);
    expect([...out]).toEqual([...(await gemmReference({ x, m: 2, n, k, weight, scale, ws2: 1, dtype: 'bfloat16' }, backend))]);
    expect(() => gemmReference({ x, m: 2, n, k, weight, scale, ws2: 1, dtype: 'bfloat16', out: new Float32Array(3) }, backend)).toThrow('out holds 3 floats, expected 128');
    const marlin = { x, m: 2, k, n, np: n, kp: k, layout: 'v2' as const, dtype: 'bfloat16' as const, weight: Buffer.alloc((k / 16) * 2 * n * 4, 0x11), scales: Buffer.alloc((k / 16) * n, 0x40), global: Buffer.from(new Float32Array([1]).buffer) };
    const y = new Float32Array(2 * n);
    expect(await gemmMarlin({ ...marlin, out: y }, backend)).toBe(y);
    expect([...y]).toEqual([...(await gemmMarlin(marlin, backend))]);
  });
});

describe('columnErrors (native) gives the numbers of the JavaScript it replaces', () => {
  /** y [rows, cols] and ref [refRows, n] of deterministic values, ref ≈ y on the judged block. */
  function pair(m: number, n: number, cols: number, col0: number, row0: number, refRow0: number, seed: number) {
    const rows = row0 + m + 1;
    const y = new Float32Array(rows * cols);
    const ref = new Float32Array((refRow0 + m) * n);
    const r = bytes(4 * y.length, seed);
    for (let i = 0; i < y.length; i++) y[i] = (r[4 * i]! - 128) / 16 + r[4 * i + 1]! / 4096;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        const v = y[(row0 + i) * cols + col0 + j]!;
        ref[(refRow0 + i) * n + j] = v * (1 + (r[4 * j + 2]! - 128) * 1e-7);
      }
    }
    return { y, ref, shape: { m, n, cols, col0, row0, refRow0 } };
  }

  it('on random blocks, one wrong column, zero columns, NaN and infinite values', async () => {
    const cases = [
      pair(1, 64, 64, 0, 0, 0, 1),
      pair(16, 100, 300, 200, 1, 1, 2),
      pair(33, 257, 514, 0, 17, 17, 3),
      pair(145, 1024, 2048, 1024, 0, 0, 4),
    ];
    for (const [ci, { y, ref, shape }] of cases.entries()) {
      expect(await columnErrors(y, ref, shape), `case ${ci}`).toEqual(columnErrorsJs(y, ref, shape));
      // One column off by a nibble's worth: the worst column, whatever N.
      const bad = Float32Array.from(y);
      const j = shape.n - 3;
      for (let i = 0; i < shape.m; i++) bad[(shape.row0 + i) * shape.cols + shape.col0 + j]! += 0.5;
      const e = await columnErrors(bad, ref, shape);
      expect(e, `case ${ci} bad column`).toEqual(columnErrorsJs(bad, ref, shape));
      expect(e.column).toBe(j);
      // Columns of zeros in both (judged against the layer's typical magnitude), equal columns.
      const z = Float32Array.from(y);
      const zr = Float32Array.from(ref);
      for (let i = 0; i < shape.m; i++) {
        z[(shape.row0 + i) * shape.cols + shape.col0] = 0;
        zr[(shape.refRow0 + i) * shape.n] = 0;
        z[(shape.row0 + i) * shape.cols + shape.col0 + 1] = zr[(shape.refRow0 + i) * shape.n + 1]!;
      }
      expect(await columnErrors(z, zr, shape)).toEqual(columnErrorsJs(z, zr, shape));
      // A NaN and an infinity in y; a NaN in ref.
      const nan = Float32Array.from(y);
      nan[(shape.row0 + shape.m - 1) * shape.cols + shape.col0 + 1] = NaN;
      nan[shape.row0 * shape.cols + shape.col0] = -Infinity;
      expect(await columnErrors(nan, ref, shape)).toEqual(columnErrorsJs(nan, ref, shape));
      const rnan = Float32Array.from(ref);
      rnan[(shape.refRow0 + shape.m - 1) * shape.n + 2] = NaN;
      expect(await columnErrors(y, rnan, shape)).toEqual(columnErrorsJs(y, rnan, shape));
    }
    // Identical: no column differs.
    const same = new Float32Array([1, 2, 3, 4]);
    expect(await columnErrors(same, same, { m: 2, n: 2 })).toEqual({ rel: 0, column: -1, maxAbs: 0, frobenius: 0, nonFinite: 0 });
    // All-zero reference with a difference: infinite.
    expect(await columnErrors(new Float32Array([0, 1]), new Float32Array(2), { m: 1, n: 2 })).toEqual(columnErrorsJs(new Float32Array([0, 1]), new Float32Array(2), { m: 1, n: 2 }));
  });

  it('rejects shapes outside its buffers', () => {
    const y = new Float32Array(8);
    expect(() => columnErrors(y, y, { m: 3, n: 4 })).toThrow('y holds 8 floats, too few for rows [0, 3) x columns [0, 4) of 4');
    expect(() => columnErrors(y, new Float32Array(4), { m: 2, n: 4 })).toThrow('ref holds 4 floats');
  });
});
