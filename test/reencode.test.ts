// Re-encoding block scales onto a fused group's shared global (src/transform/reencode.ts)
// against the literal transcription of FORMAT.md section 8 (test/helpers/spec.ts), its counts
// against a direct count, and verify's bound against every byte at many ratios.
import { describe, expect, it } from 'vitest';
import { e4m3Value } from '../src/transform/block-scales.js';
import {
  reencodeBound,
  reencodeInPlace,
  reencodeStats,
  reencoding,
  roundToE4m3,
} from '../src/transform/reencode.js';
import { scanScales } from '../src/transform/scale-stats.js';
import { clampedScales } from './helpers/verify-oracles.js';
import { checkReencodedScales } from '../src/verify/reencoded.js';
import { specReencode } from './helpers/spec.js';

/** Global scales as checkpoints hold them (float32), from a small deterministic generator. */
function globals(count: number, seed: number): number[] {
  const out: number[] = [];
  let x = seed >>> 0 || 1;
  for (let i = 0; i < count; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.push(Math.fround(2 ** (-12 + ((x >>> 0) % 10)) * (1 + ((x >>> 8) % 1024) / 1024)));
  }
  return out;
}

const ALL_BYTES = Uint8Array.from({ length: 0x7f }, (_, b) => b);

describe('roundToE4m3', () => {
  it('is the identity on every E4M3 value', () => {
    for (let b = 0; b < 0x7f; b++) expect(roundToE4m3(e4m3Value(b))).toBe(b);
  });

  it('rounds every midpoint to the even byte (0x07/0x08 included) and just off it to the nearer', () => {
    for (let b = 0; b < 0x7e; b++) {
      const mid = (e4m3Value(b) + e4m3Value(b + 1)) / 2;
      expect(roundToE4m3(mid)).toBe(b % 2 === 0 ? b : b + 1);
      expect(roundToE4m3(mid * (1 - 1e-9))).toBe(b);
      expect(roundToE4m3(mid * (1 + 1e-9))).toBe(b + 1);
    }
    expect(roundToE4m3(2 ** -10)).toBe(0); // half of the smallest step: ties to 0
    expect(roundToE4m3(2 ** -10 * 1.0001)).toBe(1);
  });

  it('refuses what E4M3 cannot hold', () => {
    expect(() => roundToE4m3(449)).toThrow(RangeError);
    expect(() => roundToE4m3(-1)).toThrow(RangeError);
    expect(() => roundToE4m3(NaN)).toThrow(RangeError);
  });
});

describe('reencoding', () => {
  const gs = globals(40, 7);
  const pairs = gs.slice(0, 20).map((a, i) => [Math.min(a, gs[20 + i]!), Math.max(a, gs[20 + i]!)] as const);

  it('maps every byte as FORMAT.md section 8 says (s * own / shared, nearest E4M3, ties to even)', () => {
    for (const [own, shared] of [...pairs, [0.25, 1], [2 ** -7 * 1.5, 2 ** -6], [Math.fround(1 / 3), Math.fround(1 / 3) * 2 ** 9]] as const) {
      const r = reencoding(own, shared);
      const got = Buffer.from(ALL_BYTES);
      reencodeInPlace(got, r);
      expect(got.equals(specReencode(ALL_BYTES, own, shared)), `own ${own}, shared ${shared}`).toBe(true);
    }
  });

  it('never raises a scale (the shared global is the larger) and refuses the other way round', () => {
    for (const [own, shared] of pairs) {
      const r = reencoding(own, shared);
      for (let b = 0; b < 0x7f; b++) expect(r.table[b]!).toBeLessThanOrEqual(b);
    }
    expect(() => reencoding(1, 0.5)).toThrow(/shared global must be the larger/);
  });

  it('stays within verify\'s bound |s\' - x| <= max(x/16, 2^-10) for every byte', () => {
    let tight = 0;
    for (const [own, shared] of pairs) {
      const r = reencoding(own, shared);
      for (let b = 0; b < 0x7f; b++) {
        const x = (e4m3Value(b) * own) / shared;
        const err = Math.abs(e4m3Value(r.table[b]!) - x);
        expect(err).toBeLessThanOrEqual(reencodeBound(x));
        tight = Math.max(tight, err / reencodeBound(x));
      }
    }
    // The bound is not loose: some scale comes close to it.
    expect(tight).toBeGreaterThan(0.9);
  });

  it('counts what it changes from the histogram exactly as a pass over the data does', () => {
    const data = Buffer.alloc(64 * 16);
    for (let i = 0; i < data.length; i++) data[i] = (i * 37 + 11) % 0x7f; // every byte, zeros and subnormals too
    const stats = scanScales('t', data, 16);
    const [own, shared] = [Math.fround(0.01), Math.fround(0.37)];
    const r = reencoding(own, shared);
    const { effect, after } = reencodeStats(stats, r);
    const out = Buffer.from(data);
    reencodeInPlace(out, r);
    let rescaled = 0;
    let changed = 0;
    let underflowed = 0;
    let worst = 0;
    for (let i = 0; i < data.length; i++) {
      if (data[i] === 0) continue;
      rescaled++;
      const before = e4m3Value(data[i]!) * own;
      const now = e4m3Value(out[i]!) * shared;
      if (now !== before) changed++;
      if (out[i] === 0) underflowed++;
      worst = Math.max(worst, Math.abs(now - before) / before);
    }
    expect(effect).toEqual({ rescaled, changed, underflowed, maxRelativeChange: worst });
    expect(underflowed).toBeGreaterThan(0);
    expect(worst).toBe(1); // a scale that became 0
    const direct = scanScales('t', out, 16);
    expect(after.maxByte).toBe(direct.maxByte);
    expect([...after.histogram]).toEqual([...direct.histogram]);
  });

  it('changes nothing where the ratio is a power of two that keeps every scale normal', () => {
    const data = Buffer.from(Array.from({ length: 0x77 - 0x10 }, (_, i) => 0x10 + i)); // 2^-5 .. 240
    const { effect } = reencodeStats(scanScales('t', data, data.length), reencoding(0.25, 0.5));
    expect(effect).toEqual({ rescaled: data.length, changed: 0, underflowed: 0, maxRelativeChange: 0 });
  });
});

describe("verify's check of re-encoded scales (src/verify/reencoded.ts)", () => {
  const [own, shared] = [Math.fround(0.0123), Math.fround(0.0456)];
  const r = reencoding(own, shared);
  const stored = Buffer.from(ALL_BYTES);
  reencodeInPlace(stored, r);

  for (const [layout, sf] of [
    ['v1', 1],
    ['v2', 1],
    ['v2', 64],
  ] as const) {
    it(`${layout} sf ${sf}: the re-encoding (with v2's clamp) passes; a scale one step off where the bound is tight fails`, () => {
      const kept = Buffer.from(clampedScales(stored, layout, sf).scales);
      const ok = checkReencodedScales(kept, ALL_BYTES, own, shared, layout, sf);
      expect(ok.outside).toBe(0);
      expect(ok.maxRelativeChange).toBeGreaterThan(0);
      // Two steps up from a normal re-encoded scale: at least 1.5 steps from x, beyond half a step.
      const i = kept.findIndex((b) => b >= 0x40 && b < 0x70);
      const bad = Buffer.from(kept);
      bad[i]! += 2;
      const found = checkReencodedScales(bad, ALL_BYTES, own, shared, layout, sf);
      expect(found).toMatchObject({ outside: 1, first: i });
    });
  }

  it('a 0 only where the rounding or the clamp allows it', () => {
    const zeroed = Buffer.from(stored);
    const i = zeroed.findIndex((b) => b >= 0x30);
    zeroed[i] = 0;
    expect(checkReencodedScales(zeroed, ALL_BYTES, own, shared, 'v2', 1)).toMatchObject({ outside: 1, first: i });
    // With an sf small enough that v2 would clamp that value, the same 0 is consistent.
    expect(checkReencodedScales(zeroed, ALL_BYTES, own, shared, 'v2', 2 ** -12).outside).toBe(0);
  });
});
