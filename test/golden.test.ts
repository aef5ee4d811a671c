// Every golden vector of fixtures/golden (produced by vLLM's reference code), byte for byte,
// through the CPU path of the native addon.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  linearShape,
  moePaddedIntermediate,
  processGlobalScale,
  processScales,
  processScalesStack,
  repackWeight,
  repackWeightStack,
} from '../src/transform/marlin.js';
import { expectBytes } from './helpers/bytes.js';
import { DTYPES, goldenMoeStacks, openAllGolden } from './helpers/golden.js';

const { dense, moe, close } = await openAllGolden();
afterAll(close);

for (const [file, g] of Object.entries(dense)) {
  describe(`golden ${file}`, () => {
    for (const [c, info] of Object.entries(g.cases)) {
      const N = info.N as number;
      const K = info.K as number;
      let weight: Buffer;
      let scales: Buffer;
      let ws2: number;
      beforeAll(async () => {
        weight = await g.bytes(`${c}.weight`);
        scales = await g.bytes(`${c}.weight_scale`);
        ws2 = await g.f32(`${c}.weight_scale_2`);
      });

      if (info.v1) {
        it(`${c} v1 qweight`, async () => {
          const s = linearShape(c, 'v1', g.shape(`${c}.weight`), g.shape(`${c}.weight_scale`));
          expectBytes(await repackWeight(c, weight, s), await g.bytes(`${c}.v1.qweight`));
        });
        it(`${c} v1 scales (same bytes for float16 and bfloat16)`, async () => {
          const s = linearShape(c, 'v1', g.shape(`${c}.weight`), g.shape(`${c}.weight_scale`));
          const want = await g.bytes(`${c}.v1.scales`);
          for (const [dtype] of DTYPES) {
            const r = await processScales(c, scales, s, { layout: 'v1', dtype });
            expectBytes(r.scales, want);
            expect(r.sf).toBe(1);
          }
        });
        for (const [dtype, tag] of DTYPES) {
          it(`${c} v1 global ${tag}`, async () => {
            expect(processGlobalScale(c, ws2, { layout: 'v1', dtype })).toEqual(await g.bytes(`${c}.v1.global.${tag}`));
          });
        }
      } else {
        it(`${c} is rejected by v1 with the tensor named`, () => {
          expect(() => linearShape(c, 'v1', g.shape(`${c}.weight`), g.shape(`${c}.weight_scale`))).toThrow(
            new RegExp(`^${c}: N = ${N} is not a multiple of 64`),
          );
        });
      }

      it(`${c} v2 qweight (padded shape)`, async () => {
        const s = linearShape(c, 'v2', g.shape(`${c}.weight`), g.shape(`${c}.weight_scale`));
        const want = await g.bytes(`${c}.v2.qweight`);
        expect(g.shape(`${c}.v2.qweight`)).toEqual([s.kp / 16, 2 * s.np]);
        expectBytes(await repackWeight(c, weight, s), want);
      });
      for (const [dtype, tag] of DTYPES) {
        it(`${c} v2 scales ${tag}, scale factor and global`, async () => {
          const s = linearShape(c, 'v2', g.shape(`${c}.weight`), g.shape(`${c}.weight_scale`));
          const r = await processScales(c, scales, s, { layout: 'v2', dtype });
          expect(r.sf).toBe(info[`v2.scale_factor.${tag}`]);
          expectBytes(r.scales, await g.bytes(`${c}.v2.scales.${tag}`));
          expect(processGlobalScale(c, ws2, { layout: 'v2', dtype, sf: r.sf })).toEqual(
            await g.bytes(`${c}.v2.global.${tag}`),
          );
          if (info.kind === 'tiny' && dtype === 'float16') expect(r.zeroed).toBeGreaterThan(0);
          if (info.kind !== 'tiny') expect(r.zeroed).toBe(0);
          if (info.kind === 'tiny' && dtype === 'bfloat16') expect(r.zeroed).toBe(0);
        });
      }
    }
  });
}

describe('golden moe.safetensors', () => {
  for (const [c, info] of Object.entries(moe.cases)) {
    for (const { S, projs, N, K, E, H, I, load, globals } of goldenMoeStacks(moe, c, info)) {
      for (const layout of ['v1', 'v2'] as const) {
        it(`${c} ${S} ${layout} qweight (stack of ${E})`, async () => {
          const np = S === 'w13' ? moePaddedIntermediate(I, H, layout) : N;
          const shape = { n: N, k: K, np, kp: K };
          const q = await repackWeightStack(`${c}.${S}`, await load('weight'), shape);
          expect(moe.shape(`${c}.${S}.${layout}.qweight`)).toEqual([E, K / 16, 2 * np * projs.length]);
          expectBytes(q, await moe.bytes(`${c}.${S}.${layout}.qweight`));
        });
        for (const [dtype, tag] of DTYPES) {
          it(`${c} ${S} ${layout} scales and globals ${tag}`, async () => {
            const shape = { n: N, k: K, np: N, kp: K };
            const r = await processScalesStack(`${c}.${S}`, await load('weight_scale'), shape, { layout, dtype });
            const scaleName = layout === 'v1' ? `${c}.${S}.v1.scales` : `${c}.${S}.v2.scales.${tag}`;
            expectBytes(r.scales, await moe.bytes(scaleName));
            if (layout === 'v2') expect(r.sf).toBe(info[`${S}.v2.scale_factor.${tag}`]);
            const g = Buffer.concat((await globals()).map((w) => processGlobalScale(S, w, { layout, dtype, sf: r.sf })));
            expect(g).toEqual(await moe.bytes(`${c}.${S}.${layout}.global.${tag}`));
          });
        }
      }
    }
  }
});
