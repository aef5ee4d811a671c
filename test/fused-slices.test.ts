// A fused group's parts are slices of the fused layer (FORMAT.md section 8): convert one
// attention whose q, k and v have different block-scale maxima (and, in a second model,
// different global scales too), then build the fused tensor's bytes with the literal
// transcription of FORMAT.md (test/helpers/spec.ts) — concatenate the sources along N
// (re-encoding the parts onto the largest global first), one sf over all of it — and
// compare our per-part outputs with its column slices.
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectBytes } from './helpers/bytes.js';
import { cli, f32Scalar, modeloptModel, readModel, tempDir, type TensorData } from './helpers/models.js';
import { specGlobalV2, specReencode, specRepack, specScaleFactor, specScales } from './helpers/spec.js';

const K = 128;
const G = K / 16;
const PARTS = [
  { name: 'q_proj', n: 128, maxByte: 0x5f }, // 30: bfloat16 sf 8 alone
  { name: 'k_proj', n: 64, maxByte: 0x40 }, // 2: sf 128 alone
  { name: 'v_proj', n: 64, maxByte: 0x38 }, // 1: sf 256 alone
] as const;
const NTOT = PARTS.reduce((a, p) => a + p.n, 0);
const P = 'model.layers.0.self_attn';

/** Deterministic bytes (xorshift32). */
function bytes(n: number, seed: number): Buffer {
  const out = Buffer.alloc(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Block scales up to maxByte (reached once), with zeros and E4M3 subnormals among them. */
function scales(n: number, maxByte: number, seed: number): Buffer {
  const r = bytes(n * G, seed);
  const out = Buffer.from(r.map((b, i) => (i === 5 ? maxByte : b % 11 === 0 ? 0 : b % 13 === 0 ? 1 + (b % 7) : 0x10 + (b % (maxByte - 0x10)))));
  return out;
}

interface Source {
  weight: Buffer;
  scale: Buffer;
  ws2: number;
}

function sources(globals: number[]): Source[] {
  return PARTS.map((p, i) => ({ weight: bytes(p.n * (K / 2), 100 + i), scale: scales(p.n, p.maxByte, 200 + i), ws2: Math.fround(globals[i]!) }));
}

async function writeModel(dir: string, src: Source[]): Promise<void> {
  const tensors: [string, TensorData][] = [];
  PARTS.forEach((p, i) => {
    const pre = `${P}.${p.name}`;
    tensors.push([`${pre}.weight`, { dtype: 'U8', shape: [p.n, K / 2], data: src[i]!.weight }]);
    tensors.push([`${pre}.weight_scale`, { dtype: 'F8_E4M3', shape: [p.n, G], data: src[i]!.scale }]);
    tensors.push([`${pre}.weight_scale_2`, f32Scalar(src[i]!.ws2)]);
  });
  await modeloptModel(dir, tensors);
}

/** Columns [c0, c0 + w) of every row of a row-major [rows, cols] matrix of `size`-byte elements. */
function columns(m: Buffer, rows: number, cols: number, c0: number, w: number, size = 1): Buffer {
  const out = Buffer.alloc(rows * w * size);
  for (let r = 0; r < rows; r++) m.copy(out, r * w * size, (r * cols + c0) * size, (r * cols + c0 + w) * size);
  return out;
}

let work: string;
beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

// bf16 sf of the fused tensor: q's maximum decides (30 -> 8; re-encoded onto v's larger global, 20 -> 16).
const MODELS = {
  'equal globals': { globals: [2 ** -7 * 1.5, 2 ** -7 * 1.5, 2 ** -7 * 1.5], bf16Sf: 8 },
  'different globals': { globals: [2 ** -7 * 1.5, 2 ** -8 * 1.3, 2 ** -6 * 1.1], bf16Sf: 16 },
};

for (const [title, { globals, bf16Sf }] of Object.entries(MODELS)) {
  describe(`q/k/v with different block-scale maxima, ${title}: our parts are slices of FORMAT.md's fused tensor`, () => {
    const src = sources(globals);
    const shared = Math.max(...src.map((s) => s.ws2));
    // The fused source: parts concatenated along N, each re-encoded onto the shared global.
    const fusedWeight = Buffer.concat(src.map((s) => s.weight));
    const fusedScale = Buffer.concat(src.map((s) => (s.ws2 === shared ? s.scale : specReencode(s.scale, s.ws2, shared))));
    let model: string;
    beforeAll(async () => {
      model = join(work, title.replace(/\W+/g, '-'));
      await mkdir(model);
      await writeModel(model, src);
    });

    for (const [layout, dtype] of [
      ['v2', 'bfloat16'],
      ['v2', 'float16'],
      ['v1', 'bfloat16'],
    ] as const) {
      it(`${layout} ${dtype}`, async () => {
        const out = join(work, `${title.replace(/\W+/g, '-')}-${layout}-${dtype}`);
        const r = cli(['convert', model, '-o', out, '--layout', layout, '--dtype', dtype, '--json', '--no-checksums']);
        expect(r.code, r.stderr).toBe(0);
        const got = await readModel(out);
        const sf = specScaleFactor(fusedScale, layout, dtype);
        if (layout === 'v2' && dtype === 'bfloat16') expect(sf).toBe(bf16Sf);
        const wantWeight = specRepack(fusedWeight, NTOT, K, NTOT, K); // I32 [K/16, 2·NTOT]
        const wantScales = specScales(fusedScale, NTOT, K, NTOT, K, layout, sf); // [G, NTOT]
        let c0 = 0;
        const globalsOut: Buffer[] = [];
        for (const p of PARTS) {
          const pre = `${P}.${p.name}`;
          expectBytes(got.get(`${pre}.weight`)!.data, columns(wantWeight, K / 16, 2 * NTOT, 2 * c0, 2 * p.n, 4), `${pre}.weight`);
          // v1's scales are column slices of the [G/2, 2N] view (FORMAT.md section 8).
          const view = layout === 'v1' ? { rows: G / 2, cols: 2 * NTOT, c0: 2 * c0, w: 2 * p.n } : { rows: G, cols: NTOT, c0, w: p.n };
          expectBytes(got.get(`${pre}.weight_scale`)!.data, columns(wantScales, view.rows, view.cols, view.c0, view.w), `${pre}.weight_scale`);
          globalsOut.push(got.get(`${pre}.weight_scale_2`)!.data);
          c0 += p.n;
        }
        // One processed global for the group, byte-equal in every part.
        for (const g of globalsOut) expectBytes(g, globalsOut[0]!, 'weight_scale_2');
        if (layout === 'v2') expectBytes(globalsOut[0]!, specGlobalV2(shared, dtype, sf), 'processed shared global');

        const report = JSON.parse(r.stdout);
        const group = `${P}.qkv_proj`;
        for (const l of report.layers) expect(l).toMatchObject({ fused_group: group, sf });
        const reencoded = report.layers.filter((l: { reencoded?: unknown }) => l.reencoded).map((l: { name: string }) => l.name);
        expect(reencoded.sort()).toEqual(src.flatMap((s, i) => (s.ws2 === shared ? [] : [`${P}.${PARTS[i]!.name}`])).sort());
      });
    }

    it('(the maxima matter: q alone would get another sf, k alone other bytes)', () => {
      const kAlone = src[1]!.ws2 === shared ? src[1]!.scale : specReencode(src[1]!.scale, src[1]!.ws2, shared);
      const sfK = specScaleFactor(kAlone, 'v2', 'bfloat16');
      expect(sfK).not.toBe(specScaleFactor(fusedScale, 'v2', 'bfloat16'));
      const alone = specScales(kAlone, 64, K, 64, K, 'v2', sfK);
      const slice = columns(specScales(fusedScale, NTOT, K, NTOT, K, 'v2', specScaleFactor(fusedScale, 'v2', 'bfloat16')), G, NTOT, 128, 64);
      expect(alone.equals(slice)).toBe(false);
    });
  });
}
