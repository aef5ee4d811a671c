// MXFP4 (FORMAT.md section 5): the scale transform against the literal transcription in
// test/helpers/spec-mxfp4.ts (every E8M0 byte 0..255, padding, a single group), the GEMM's
// reading of E8M0 scales, and gpt-oss / compressed-tensors fixtures converted and verified,
// refused where they must be, and failing verify with one corrupted scale byte.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { addon } from '../src/transform/addon.js';
import { repackWeightStack } from '../src/transform/marlin.js';
import { decodeMxfp4Scales, processMxfp4ScalesStack } from '../src/transform/mxfp4.js';
import { gemmMarlin, randomActivations } from '../src/verify/gemm.js';
import { SafetensorsReader } from '../src/safetensors/index.js';
import { generateMxfp4Model } from '../tools/fixture-generator/mxfp4.js';
import { specRepack } from './helpers/spec.js';
import { bf16BitsToFloat, e8m0ToFloat, floatToBf16Bits, floatToE8m0, gptOssPadded, kernelScaleValue, padCorner, specBias, specMxfp4Scales } from './helpers/spec-mxfp4.js';
import { expectBytes } from './helpers/bytes.js';
import { cli, mutateModel, readModel, tempDir } from './helpers/models.js';

/** Scales [n, k/32] holding every byte value 0..255, then repeating, shuffled by a stride. */
function allBytes(n: number, g: number, offset = 0): Uint8Array {
  const s = new Uint8Array(n * g);
  for (let i = 0; i < s.length; i++) s[i] = (i * 37 + offset) & 0xff;
  return s;
}

describe('MXFP4 scale spec (FORMAT.md 5.1 step 3)', () => {
  it('the bfloat16 round trip keeps every E8M0 byte (0x00 as the subnormal 2^-127, 0xFF as NaN)', () => {
    for (let b = 0; b < 256; b++) expect(floatToE8m0(bf16BitsToFloat(floatToBf16Bits(e8m0ToFloat(b))))).toBe(b);
  });
  it('the kernel reads 0x00 as +0, 0xFF as +inf and every other byte as 2^(b-127)', () => {
    expect(kernelScaleValue(0)).toBe(0);
    expect(kernelScaleValue(0xff)).toBe(Infinity);
    for (let b = 1; b < 255; b++) expect(kernelScaleValue(b)).toBe(2 ** (b - 127));
  });
});

describe('processMxfp4ScalesStack / decodeMxfp4Scales (CPU) against the spec', () => {
  // [n, k, np, kp]: aligned, padded N, padded K (as gpt-oss's 2880 -> 3072 in miniature), a
  // single group (the single permutation), a single group with padded N.
  const shapes: [number, number, number, number][] = [
    [64, 64, 64, 64],
    [128, 256, 128, 256],
    [96, 160, 128, 256],
    [192, 96, 256, 128],
    [64, 32, 64, 32],
    [40, 32, 64, 32],
  ];
  for (const [n, k, np, kp] of shapes) {
    it(`N x K = ${n} x ${k} padded to ${np} x ${kp}, every byte value`, async () => {
      const s = allBytes(n, k / 32);
      const want = specMxfp4Scales(s, n, k, np, kp);
      const got = await processMxfp4ScalesStack('t', [[s]], { n, k, np, kp });
      expectBytes(got, want, 'processed scales');
      // The output is a byte permutation plus 0x00 padding: same multiset of non-padding bytes.
      const back = await decodeMxfp4Scales('t', got, { n, k, np, kp });
      expectBytes(back.scales, s, 'decoded scales');
      expect(back.paddingNonzero).toBe(0);
    });
  }

  it('two parts (gate, up) concatenate along N, each padded; row slices equal the whole', async () => {
    const [n, k, np, kp] = [96, 160, 128, 256];
    const gate = allBytes(n, k / 32, 1);
    const up = allBytes(n, k / 32, 101);
    const got = await processMxfp4ScalesStack('t', [[gate, up]], { n, k, np, kp });
    const a = specMxfp4Scales(gate, n, k, np, kp);
    const b = specMxfp4Scales(up, n, k, np, kp);
    const rows = kp / 32;
    const want = Buffer.concat([...Array(rows).keys()].flatMap((r) => [a.subarray(r * np, (r + 1) * np), b.subarray(r * np, (r + 1) * np)]));
    expectBytes(got, want, 'stack');
    const slice = await processMxfp4ScalesStack('t', [[gate, up]], { n, k, np, kp }, { rows: { rowBegin: 3, rowEnd: 7 } });
    expectBytes(slice, want.subarray(3 * 2 * np, 7 * 2 * np), 'row slice');
    const upBack = await decodeMxfp4Scales('t', got, { n, k, np, kp }, { totalNp: 2 * np, colOffset: np });
    expectBytes(upBack.scales, up, 'decoded up');
  });

  it('a stray byte in the padding is counted by the inverse', async () => {
    const [n, k, np, kp] = [40, 64, 64, 128];
    const got = Buffer.from(await processMxfp4ScalesStack('t', [[allBytes(n, k / 32)]], { n, k, np, kp }));
    got[got.length - 1] = 7; // row 3 (K padding)
    expect((await decodeMxfp4Scales('t', got, { n, k, np, kp })).paddingNonzero).toBe(1);
  });

  it('refuses K that is not a multiple of 32, naming the tensor', async () => {
    await expect(processMxfp4ScalesStack('layer.w', [[new Uint8Array(64)]], { n: 64, k: 48, np: 64, kp: 64 })).rejects.toThrow(/layer\.w: .*multiple of 32/);
  });
});

describe('the Marlin GEMM reads E8M0 scales (group 32) as the kernel does', () => {
  it('gemmMarlin(scheme mxfp4) equals X @ W^T with W from the spec (codes x kernel scale value)', async () => {
    const [n, k, np, kp, m] = [96, 160, 128, 256, 5];
    const w = new Uint8Array(n * (k / 2));
    for (let i = 0; i < w.length; i++) w[i] = (i * 73 + 11) & 0xff;
    // Scale bytes 118..130 and some 0x00 (a zeroed group).
    const s = new Uint8Array(n * (k / 32)).map((_, i) => (i % 17 === 0 ? 0 : 118 + (i % 13)));
    const weight = await repackWeightStack('t', [[w]], { n, k, np, kp });
    expectBytes(weight, specRepack(w, n, k, np, kp), 'repack (FORMAT section 2)');
    const scales = specMxfp4Scales(s, n, k, np, kp);
    const x = randomActivations(m, k, 'bfloat16', 7);
    const y = await gemmMarlin({ x, m, k, n, np, kp, layout: 'v2', dtype: 'bfloat16', weight, scales, scheme: 'mxfp4' });
    const e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < n; c++) {
        let acc = 0;
        for (let kk = 0; kk < k; kk++) {
          const byte = w[c * (k / 2) + (kk >> 1)]!;
          const code = kk % 2 === 0 ? byte & 0xf : byte >> 4;
          const v = (code & 8 ? -1 : 1) * e2m1[code & 7]! * kernelScaleValue(s[c * (k / 32) + Math.floor(kk / 32)]!);
          acc += bf16BitsToFloat(x.readUInt16LE(2 * (r * k + kk))) * v;
        }
        expect(Math.abs(y[r * n + c]! - acc)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(acc)));
      }
    }
  });
});

describe('gpt-oss and compressed-tensors MXFP4 checkpoints', () => {
  let dir: string;
  let gpt: string;
  let ct: string;
  beforeAll(async () => {
    dir = await tempDir();
    gpt = join(dir, 'gpt-oss');
    ct = join(dir, 'ct');
    await generateMxfp4Model(gpt, { preset: 'gpt-oss-tiny', shards: 2 });
    await generateMxfp4Model(ct, { preset: 'ct-mxfp4-tiny' });
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('gpt-oss: convert on the CPU writes the stacks FORMAT.md 5.2 describes, verify passes', async () => {
    const out = join(dir, 'gpt-oss-marlin');
    const r = cli(['convert', gpt, '-o', out, '--device', 'cpu', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout);
    expect(rep.scheme).toBe('mxfp4');
    expect(rep.layers.map((l: { name: string }) => l.name).sort()).toEqual([
      'model.layers.0.mlp.experts.w13',
      'model.layers.0.mlp.experts.w2',
      'model.layers.1.mlp.experts.w13',
      'model.layers.1.mlp.experts.w2',
    ]);
    const src = await readModel(gpt);
    const got = await readModel(out);
    const [E, H, I] = [3, 160, 96];
    const { hp, ip } = gptOssPadded(H, I);
    const q = 'model.layers.1.mlp.experts';
    expect(got.get(`${q}.w13_weight`)).toMatchObject({ dtype: 'I32', shape: [E, hp / 16, 2 * 2 * ip] });
    expect(got.get(`${q}.w13_weight_scale`)).toMatchObject({ dtype: 'U8', shape: [E, hp / 32, 2 * ip] });
    expect(got.get(`${q}.w13_bias`)).toMatchObject({ dtype: 'BF16', shape: [E, 2 * ip] });
    expect(got.get(`${q}.w2_weight`)).toMatchObject({ dtype: 'I32', shape: [E, ip / 16, 2 * hp] });
    expect(got.get(`${q}.w2_weight_scale`)).toMatchObject({ dtype: 'U8', shape: [E, ip / 32, hp] });
    expect(got.get(`${q}.w2_bias`)).toMatchObject({ dtype: 'BF16', shape: [E, hp] });
    expect(got.has(`${q}.w13_weight_scale_2`)).toBe(false);
    // Expert 2's bytes from the spec: checkpoint rows as they are (interleaved), top-left corner of the padded tensors.
    const e = 2;
    const blocks = src.get(`${q}.gate_up_proj_blocks`)!.data;
    const scl = src.get(`${q}.gate_up_proj_scales`)!.data;
    const per = (t: Buffer) => t.subarray((e * t.length) / E, ((e + 1) * t.length) / E);
    const w13 = per(got.get(`${q}.w13_weight`)!.data);
    expectBytes(w13, specRepack(per(blocks), 2 * I, H, 2 * ip, hp), 'w13_weight expert 2');
    expectBytes(per(got.get(`${q}.w13_weight_scale`)!.data), specMxfp4Scales(per(scl), 2 * I, H, 2 * ip, hp), 'w13_weight_scale expert 2');
    const dscl = src.get(`${q}.down_proj_scales`)!.data;
    expectBytes(per(got.get(`${q}.w2_weight_scale`)!.data), specMxfp4Scales(per(dscl), H, I, hp, ip), 'w2_weight_scale expert 2');
    // The spec's padding is the same as putting the checkpoint into vLLM's zeroed padded parameter.
    expectBytes(specMxfp4Scales(padCorner(per(dscl), H, I / 32, hp, ip / 32), hp, ip, hp, ip), specMxfp4Scales(per(dscl), H, I, hp, ip), 'corner copy');
    const bias = src.get(`${q}.gate_up_proj_bias`)!.data;
    const b16 = (buf: Buffer) => new Uint16Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
    expect([...b16(per(got.get(`${q}.w13_bias`)!.data))]).toEqual([...specBias(b16(per(bias)), 2 * I, 2 * ip)]);
    // Attention, router, sinks, norms, embeddings pass through.
    for (const name of ['model.layers.0.self_attn.q_proj.bias', 'model.layers.0.self_attn.sinks', 'model.layers.0.mlp.router.weight', 'lm_head.weight']) {
      expectBytes(got.get(name)!.data, src.get(name)!.data, name);
    }
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(config.quantization_config).toMatchObject({ quant_method: 'marlin_fp4', scheme: 'mxfp4', group_size: 32, layout: 'v2', activation_dtype: 'bfloat16', source_format: 'gpt-oss-mxfp4' });
    const reader = await SafetensorsReader.open(join(out, got.get(`${q}.w13_weight`)!.file));
    const meta = JSON.parse(reader.header.metadata.marlin_fp4!);
    await reader.close();
    expect(meta.layers.find((l: { name: string }) => l.name === `${q}.w13`)).toMatchObject({ scheme: 'mxfp4', group_size: 32, bias: true, interleaved: true, n: 2 * I, np: 2 * ip, k: H, kp: hp, experts: E });

    const v = cli(['verify', out, '--device', 'cpu', '--experts', 'all', '--json']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    expect(JSON.parse(v.stdout).passed).toBe(true);
  });

  it('gpt-oss: verify fails, naming the layer, when one scale byte of the output is changed', async () => {
    const out = join(dir, 'gpt-oss-marlin-bad');
    expect(cli(['convert', gpt, '-o', out, '--device', 'cpu', '--no-checksums', '-q']).code).toBe(0);
    const name = 'model.layers.0.mlp.experts.w2_weight_scale';
    const model = await readModel(out);
    const t = model.get(name)!;
    const reader = await SafetensorsReader.open(join(out, t.file));
    const entry = reader.header.tensors.get(name)!;
    const at = reader.header.dataStart + entry.begin + 5;
    await reader.close();
    const file = await readFile(join(out, t.file));
    file[at] = file[at]! ^ 0x01;
    await writeFile(join(out, t.file), file);
    const v = cli(['verify', out, '--device', 'cpu', '--json']);
    expect(v.code).toBe(1);
    const rep = JSON.parse(v.stdout);
    expect(rep.failed_layers).toEqual(['model.layers.0.mlp.experts.w2']);
    const layer = rep.layers.find((l: { name: string }) => l.name === 'model.layers.0.mlp.experts.w2');
    expect(layer.errors.join('\n')).toMatch(/weight_scale: 1 E8M0 scales differ from the source/);
  });

  it('compressed-tensors MXFP4 (dense attention + per-expert MoE): convert and verify pass', async () => {
    const out = join(dir, 'ct-marlin');
    const r = cli(['convert', ct, '-o', out, '--device', 'cpu', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout);
    expect(rep.layers.filter((l: { kind: string }) => l.kind === 'linear')).toHaveLength(8);
    expect(rep.layers.filter((l: { kind: string }) => l.kind !== 'linear')).toHaveLength(4);
    const src = await readModel(ct);
    const got = await readModel(out);
    const p = 'model.layers.0.self_attn.k_proj';
    expect(got.get(`${p}.weight_scale`)).toMatchObject({ dtype: 'U8' });
    const [n, k] = [64, 128];
    const { shape } = got.get(`${p}.weight_scale`)!;
    const [kp, np] = [shape[0]! * 32, shape[1]!];
    expectBytes(got.get(`${p}.weight_scale`)!.data, specMxfp4Scales(src.get(`${p}.weight_scale`)!.data, n, k, np, kp), 'k_proj scales');
    expect(got.has(`${p}.weight_scale_2`)).toBe(false);
    const v = cli(['verify', out, '--device', 'cpu', '--json']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
  });

  it('refuses --dtype float16 and --layout v1 with the reason, writing nothing', () => {
    const f16 = cli(['convert', ct, '-o', join(dir, 'f16'), '--dtype', 'float16']);
    expect(f16.code).toBe(2);
    expect(f16.stderr).toMatch(/no Marlin kernel exists for MXFP4 weights with float16 activations/);
    const v1 = cli(['convert', gpt, '-o', join(dir, 'v1'), '--layout', 'v1']);
    expect(v1.code).toBe(2);
    expect(v1.stderr).toMatch(/MXFP4 has one Marlin layout/);
  });

  it('refuses F8_E4M3 MXFP4 scales (the older compressed-tensors encoding) in one line', async () => {
    const bad = join(dir, 'ct-old');
    await mutateModel(ct, bad, (name, t) => (name.endsWith('.weight_scale') ? { ...t, dtype: 'F8_E4M3' } : t));
    const r = cli(['convert', bad, '-o', join(dir, 'ct-old-out')]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/weight_scale: F8_E4M3 MXFP4 scales are an older compressed-tensors encoding/);
  });

  it('inspect reports an MXFP4 checkpoint: experts, layers and what convert would do', () => {
    const r = cli(['inspect', gpt, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout);
    expect(rep).toMatchObject({ format: 'mxfp4', flavour: 'gpt-oss', description: 'gpt-oss MXFP4', convertible: true, problems: [] });
    expect(rep.verdict).toMatch(/convert would accept it/);
    expect(rep.quantized).toMatchObject({ dense: 0, moe_layers: 2, moe_shapes: [{ experts: 3, hidden: 160, intermediate: 96, count: 2 }] });
    // The estimate is the plan convert writes from.
    const conv = cli(['convert', gpt, '-o', join(dir, 'gpt-oss-inspect'), '--device', 'cpu', '--json']);
    expect(rep.conversion.layouts[0].tensors).toBe(JSON.parse(conv.stdout).tensors);
    const ctRep = JSON.parse(cli(['inspect', ct, '--json']).stdout);
    expect(ctRep).toMatchObject({ description: 'compressed-tensors MXFP4', convertible: true });
    expect(ctRep.quantized).toMatchObject({ dense: 8, moe_layers: 2 });
  });
});

describe.skipIf(!addon().cudaStatus().available)(`MXFP4 on the GPU (${addon().cudaStatus().reason ?? 'CUDA available'})`, () => {
  it('the CUDA scale transform and its inverse give the CPU bytes', async () => {
    for (const [n, k, np, kp] of [[96, 160, 128, 256], [40, 32, 64, 32], [2880, 2880, 3072, 2944]] as const) {
      const s = allBytes(n, k / 32);
      const cpu = await processMxfp4ScalesStack('t', [[s, s]], { n, k, np, kp });
      const gpu = await processMxfp4ScalesStack('t', [[s, s]], { n, k, np, kp }, { backend: 'cuda' });
      expectBytes(gpu, cpu, 'GPU vs CPU');
      const back = await decodeMxfp4Scales('t', gpu, { n, k, np, kp }, { totalNp: 2 * np, colOffset: np }, 'cuda');
      expectBytes(back.scales, s, 'GPU decode');
    }
  });
  it('convert --device cuda writes the CPU bytes for gpt-oss and compressed-tensors fixtures; verify on the GPU passes', async () => {
    const dir = await tempDir();
    try {
      for (const preset of ['gpt-oss-tiny', 'ct-mxfp4-tiny'] as const) {
        const src = join(dir, preset);
        await generateMxfp4Model(src, { preset, shards: 2 });
        expect(cli(['convert', src, '-o', `${src}-cpu`, '--device', 'cpu', '-q']).code).toBe(0);
        expect(cli(['convert', src, '-o', `${src}-gpu`, '--device', 'cuda', '-q']).code).toBe(0);
        for (const f of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']) {
          expectBytes(await readFile(join(`${src}-gpu`, f)), await readFile(join(`${src}-cpu`, f)), f);
        }
        expect(cli(['verify', `${src}-gpu`, '--device', 'cuda', '-q']).code).toBe(0);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
