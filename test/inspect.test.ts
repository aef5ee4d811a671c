// `marlin-fp4 inspect`: what a checkpoint is and what convert would do, from the headers and
// the scalar global scales only; every problem collected in one run; exit 0 when inspected.
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { inspectCheckpoint } from '../src/inspect/inspect.js';
import { SafetensorsReader } from '../src/safetensors/index.js';
import { cli, editJson, f32Scalar, MODELS, mutateModel, tempDir, type TensorData } from './helpers/models.js';

let work: string;
beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const LLAMA = join(MODELS, 'llama-tiny-modelopt');
const MOE = join(MODELS, 'qwen3-moe-tiny-modelopt');
const FIXTURES = ['llama-tiny-modelopt', 'llama-tiny-ct', 'qwen3-moe-tiny-modelopt', 'qwen3-moe-tiny-ct'];


/** Runs inspect --json; checks that stdout is exactly one JSON document and stderr is empty. */
function inspectJson(args: string[]) {
  const r = cli(['inspect', ...args, '--json']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout);
}

describe.each(FIXTURES)('inspect %s', (fixture) => {
  it('reports flavour, architecture, shapes, and the same output size as convert (v2 and v1)', () => {
    const rep = inspectJson([join(MODELS, fixture)]);
    expect(rep.format).toBe('nvfp4');
    expect(rep.flavour).toBe(fixture.endsWith('-ct') ? 'compressed-tensors' : 'modelopt');
    expect(rep.description).toBe(fixture.endsWith('-ct') ? 'compressed-tensors NVFP4' : 'ModelOpt NVFP4');
    expect(rep.architecture).toBe(fixture.startsWith('llama') ? 'LlamaForCausalLM' : 'Qwen3MoeForCausalLM');
    expect(rep.torch_dtype).toBe('bfloat16');
    expect(rep.problems).toEqual([]);
    expect(rep.convertible).toBe(true);
    expect(rep.shards.length).toBe(fixture === 'llama-tiny-modelopt' || fixture === 'qwen3-moe-tiny-ct' ? 1 : 2);
    expect(rep.total_bytes).toBe(rep.shards.reduce((a: number, s: { bytes: number }) => a + s.bytes, 0));
    if (fixture.startsWith('llama')) {
      expect(rep.quantized.dense).toBe(14);
      expect(rep.quantized.moe_layers).toBe(0);
      // 2 layers: q (128x128), k and v (64x128 each), o (128x128), gate and up (192x128), down (128x192)
      expect(rep.quantized.dense_shapes).toEqual([
        { n: 64, k: 128, count: 4 },
        { n: 128, k: 128, count: 4 },
        { n: 192, k: 128, count: 4 },
        { n: 128, k: 192, count: 2 },
      ]);
    } else {
      expect(rep.quantized.dense).toBe(8);
      expect(rep.quantized.moe_layers).toBe(2);
      expect(rep.quantized.moe_shapes).toEqual([{ experts: 3, hidden: 128, intermediate: 64, gated: true, count: 2 }]);
    }
    for (const layout of ['v2', 'v1']) {
      const conv = cli(['convert', join(MODELS, fixture), '-o', join(work, `${fixture}-${layout}`), '--layout', layout, '--json', '--no-checksums']);
      expect(conv.code).toBe(0);
      const c = JSON.parse(conv.stdout);
      const est = rep.conversion.layouts.find((l: { layout: string }) => l.layout === layout);
      expect(est.shapes_ok).toBe(true);
      expect(est.tensor_bytes).toBe(c.bytes_out);
      expect(est.tensors).toBe(c.tensors);
      expect(rep.conversion.passed_through.tensors).toBe(c.copied_tensors);
    }
    // Tensor data plus the shards' headers is the files' size.
    const data = rep.conversion.converted.bytes + rep.conversion.passed_through.bytes;
    expect(data).toBeLessThan(rep.total_bytes);
    expect(rep.total_bytes - data).toBeLessThan(20_000 * rep.shards.length);
  });
});

describe('inspect for people', () => {
  it('prints a table with the format, shapes, conversion and verdict', () => {
    const r = cli(['inspect', MOE]);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^format {8}ModelOpt NVFP4$/m);
    expect(r.stdout).toMatch(/^architecture {2}Qwen3MoeForCausalLM \(qwen3_moe\), torch_dtype bfloat16$/m);
    expect(r.stdout).toMatch(/^files {9}2 shards, /m);
    expect(r.stdout).toMatch(/^quantized {5}8 dense linears, 2 MoE expert layers$/m);
    expect(r.stdout).toMatch(/MoE experts +hidden +intermediate +gated +layers\n +3 +128 +64 +yes +2/);
    expect(r.stdout).toMatch(/^output v2 {5}\d+(\.\d)? KB of tensors, 75 tensors/m);
    expect(r.stdout).toMatch(/^problems: none found \(block scales not read: pass --scan-scales/m);
    expect(r.stdout).toMatch(/^verdict: convert would accept it with --layout v2 \(and v1\)$/m);
    expect(r.stdout).not.toMatch(/\x1b\[/);
  });

  it('--quiet prints only the problems and the verdict', () => {
    const r = cli(['inspect', MOE, '-q']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual([
      'problems: none found (block scales not read: pass --scan-scales to check them too)',
      'verdict: convert would accept it with --layout v2 (and v1)',
    ]);
  });
});

describe('inspect finds every problem in one run (exit 0)', () => {
  const Q0 = 'model.layers.0.self_attn.q_proj';
  let dir: string;
  beforeAll(async () => {
    dir = join(work, 'many-problems');
    await mutateModel(LLAMA, dir, (n, t) => {
      if (n === `${Q0}.weight_scale`) return undefined; // missing block scale
      if (n === 'model.layers.1.self_attn.k_proj.weight_scale_2') return f32Scalar(0.125); // fused q/k/v differ
      // layer 1's o_proj: N = 96, which v1 cannot lay out (v2 pads it)
      if (n === 'model.layers.1.self_attn.o_proj.weight') return { ...t, shape: [96, 64], data: t.data.subarray(0, 96 * 64) };
      if (n === 'model.layers.1.self_attn.o_proj.weight_scale') return { ...t, shape: [96, 8], data: t.data.subarray(0, 96 * 8) };
      if (n === 'model.layers.1.mlp.up_proj.weight_scale_2') return f32Scalar(-1); // not a positive global scale
      return t;
    });
  });

  it('reports missing scales, bad and differing global scales, and shape rules per layout', () => {
    const rep = inspectJson([dir]);
    const kinds = rep.problems.map((p: { kind: string; layout?: string }) => `${p.kind}${p.layout ? `@${p.layout}` : ''}`).sort();
    expect(kinds).toEqual(['fused-global-scale', 'global-scale', 'missing', 'shape@v1']);
    const msg = (kind: string) => rep.problems.find((p: { kind: string }) => p.kind === kind).message;
    expect(msg('missing')).toBe(`${join(dir, 'model.safetensors')}: tensor ${Q0}.weight_scale: missing (the block scales of ${Q0})`);
    // Not in convert's way: it re-encodes them (--strict refuses).
    expect(msg('fused-global-scale')).toMatch(
      /^model\.layers\.1\.self_attn\.qkv_proj: fused parts have different global scales \(q_proj [\d.e-]+, k_proj 0\.125, v_proj [\d.e-]+\): convert re-encodes the others' block scales onto the largest, 0\.125 \(--strict refuses\)$/,
    );
    expect(msg('global-scale')).toMatch(/tensor model\.layers\.1\.mlp\.up_proj\.weight_scale_2: global scale -1 is not a positive finite number$/);
    expect(msg('shape')).toMatch(/tensor model\.layers\.1\.self_attn\.o_proj\.weight: N = 96 is not a multiple of 64: layout v1 cannot pad it/);
    const [v2, v1] = rep.conversion.layouts;
    expect(v2).toMatchObject({ layout: 'v2', shapes_ok: true });
    expect(v2.unavailable).toMatch(/missing/);
    expect(v1).toMatchObject({ layout: 'v1', shapes_ok: false });
    expect(rep.convertible).toBe(false);
    expect(rep.verdict).toBe('convert would refuse it: 2 problems');
    // The missing linear is left out of the counts, the others are there.
    expect(rep.quantized.dense).toBe(13);
  });

  it('prints them for people, one line each, and still exits 0', () => {
    const r = cli(['inspect', dir]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^problems \(4\):$/m);
    expect(r.stdout).toMatch(/^ {2}\[v1\] .*N = 96 is not a multiple of 64/m);
    expect(r.stdout).toMatch(/^output v1 {5}not possible: 1 quantized layer breaks layout v1's shape rules/m);
    expect(r.stdout).toMatch(/^verdict: convert would refuse it: 2 problems$/m);
  });

  it('MoE gate/up of one expert with different global scales', async () => {
    const moe = join(work, 'moe-gate-up');
    await mutateModel(MOE, moe, (n, t) => (n === 'model.layers.1.mlp.experts.2.up_proj.weight_scale_2' ? f32Scalar(0.5) : t));
    const rep = inspectJson([moe]);
    expect(rep.problems).toEqual([
      {
        kind: 'fused-global-scale',
        message: expect.stringMatching(
          /^model\.layers\.1\.mlp\.experts\.2: gate and up projections have different global scales \([\d.e-]+ vs 0\.5\): convert re-encodes the smaller one's block scales onto 0\.5 \(--strict refuses\)$/,
        ),
      },
    ]);
    expect(rep.convertible).toBe(true);
  });

  it('negative block scales only with --scan-scales, which also counts v2 losses and v1 bfloat16 subnormals', async () => {
    const neg = join(work, 'negative-scale');
    await mutateModel(LLAMA, neg, (n, t) => {
      if (n === `${Q0}.weight_scale`) {
        const data = Buffer.from(t.data);
        data[3 * 8 + 5] = 0xb0; // -0.5
        return { ...t, data };
      }
      if (n === 'model.layers.1.mlp.down_proj.weight_scale') {
        const data = Buffer.from(t.data);
        for (let i = 0; i < 10; i++) data[i * 7] = 0x03; // 3 * 2^-9: below 2^-6
        return { ...t, data };
      }
      return t;
    });
    expect(inspectJson([neg]).problems).toEqual([]);
    const rep = inspectJson([neg, '--scan-scales']);
    expect(rep.problems.map((p: { kind: string }) => p.kind)).toEqual(['block-scale', 'v1-bfloat16-subnormal']);
    expect(rep.problems[0].message).toBe(`${join(neg, 'model.safetensors')}: tensor ${Q0}.weight_scale: block scale [3, 5] is negative (-0.5); Marlin stores scales without a sign`);
    expect(rep.problems[1]).toMatchObject({ layout: 'v1', message: '10 block scales in 1 layer are below 2^-6: the v1 bfloat16 kernel decodes them wrongly (use layout v2)' });
    expect(rep.scales).toMatchObject({ activation_dtype: 'bfloat16', tensors_scanned: 14, invalid_tensors: 1, subnormal: 10 });
    const down = rep.scales.layers.find((l: { name: string }) => l.name === 'model.layers.1.mlp.down_proj');
    expect(down.subnormal).toBe(10);
    // convert stops at the same scale.
    const conv = cli(['convert', neg, '-o', join(work, 'neg-out')]);
    expect(conv.code).toBe(2);
    expect(conv.stderr).toContain('block scale [3, 5] is negative');
  });

  it('a malformed tensor, and one problem for a bad ignore pattern that fails every linear alike', async () => {
    const bad = join(work, 'malformed');
    await mutateModel(LLAMA, bad, (n, t) => (n === `${Q0}.weight` ? { ...t, dtype: 'I8' } : t));
    const a = inspectJson([bad]);
    expect(a.problems).toEqual([{ kind: 'malformed', message: `${join(bad, 'model.safetensors')}: tensor ${Q0}.weight: dtype I8 is not U8 (packed FP4)` }]);
    await editJson(join(bad, 'config.json'), (c) => {
      (c.quantization_config as Record<string, unknown>) = { quant_method: 'modelopt', quant_algo: 'NVFP4', group_size: 16, ignore: ['re:(unclosed'] };
    });
    await rm(join(bad, 'hf_quant_config.json'));
    const b = inspectJson([bad]);
    // The I8 weight is still reported (block scales are checked whatever the ignore list says).
    expect(b.problems).toEqual([
      a.problems[0],
      { kind: 'malformed', message: 'quantization config: ignore pattern "re:(unclosed" is not a valid regular expression' },
    ]);
    expect(b.verdict).toBe('convert would refuse it: 2 problems');
  });

  it('a missing torch_dtype is a problem with a one-flag fix', async () => {
    const nodt = join(work, 'no-dtype');
    await mutateModel(LLAMA, nodt, (_n, t) => t);
    await editJson(join(nodt, 'config.json'), (c) => {
      delete c.torch_dtype;
    });
    const rep = inspectJson([nodt]);
    expect(rep.problems.map((p: { kind: string }) => p.kind)).toEqual(['dtype']);
    expect(rep.conversion.activation_dtype_from).toBe('assumed');
    expect(rep.verdict).toMatch(/^convert would accept it with --dtype float16 or --dtype bfloat16/);
    const withOpt = inspectJson([nodt, '--dtype', 'float16']);
    expect(withOpt.problems).toEqual([]);
    expect(withOpt.conversion.activation_dtype).toBe('float16');
  });
});

describe('inspect on other formats', () => {
  it('MXFP4 and not-quantized checkpoints: what they are, exit 0', async () => {
    const mx = join(work, 'mxfp4');
    await mutateModel(LLAMA, mx, (_n, t) => t);
    await rm(join(mx, 'hf_quant_config.json'));
    await editJson(join(mx, 'config.json'), (c) => {
      c.quantization_config = { quant_method: 'mxfp4' };
    });
    const a = inspectJson([mx]);
    expect(a.format).toBe('mxfp4');
    // An MXFP4 config over NVFP4 tensors: gpt-oss MXFP4 by its config, with nothing MXFP4 to convert.
    expect(a.description).toBe('gpt-oss MXFP4');
    expect(a.verdict).toBe('convert would refuse it: 1 problem');
    expect(a.problems[0].message).toMatch(/no MXFP4-quantized linear found/);
    expect(a.convertible).toBe(false);

    await editJson(join(mx, 'config.json'), (c) => {
      delete c.quantization_config;
    });
    const b = inspectJson([mx]);
    expect(b.format).toBe('other');
    expect(b.description).toBe('not NVFP4 (no quantization_config in config.json and no hf_quant_config.json)');
    expect(b.tensors).toBe(63);
  });

  it('an already converted checkpoint: layout, dtype, layers; v1 bfloat16 subnormal scales from the manifest or the scales', async () => {
    const src = join(work, 'small-scales');
    let planted = 0;
    await mutateModel(MOE, src, (n, t) => {
      if (/layers\.0\.mlp\.experts\.1\.up_proj\.weight_scale$|layers\.1\.self_attn\.o_proj\.weight_scale$/.test(n)) {
        const data = Buffer.from(t.data);
        for (let i = 0; i < data.length; i += 13) {
          if (data[i] === 0) continue;
          data[i] = 1 + (i % 7); // E4M3 subnormals 2^-9 .. 7 * 2^-9
          planted++;
        }
        return { ...t, data };
      }
      return t;
    });
    const out = join(work, 'small-scales-v1');
    const conv = cli(['convert', src, '-o', out, '--layout', 'v1', '--json']);
    expect(conv.code).toBe(0);
    const layers = JSON.parse(conv.stdout).layers as { subnormal_scales: number }[];
    expect(layers.reduce((a, l) => a + l.subnormal_scales, 0)).toBe(planted);

    const rep = inspectJson([out]);
    expect(rep.format).toBe('marlin-fp4');
    expect(rep.marlin).toEqual({ layout: 'v1', activation_dtype: 'bfloat16' });
    expect(rep.description).toBe('Marlin FP4 v1 (bfloat16), already converted');
    expect(rep.quantized).toMatchObject({ dense: 8, moe_layers: 2, moe_shapes: [{ experts: 3, hidden: 128, intermediate: 64, count: 2 }] });
    expect(rep.marlin_layers).toMatchObject({ from: 'shard metadata', layers: 12, subnormal_scales: { count: planted, layers: 2, from: 'manifest' } });
    expect(rep.problems).toEqual([
      {
        kind: 'v1-bfloat16-subnormal',
        layout: 'v1',
        message: `${planted} block scales in 2 layers are below 2^-6: the v1 bfloat16 kernel decodes them wrongly (reconvert the NVFP4 source with --layout v2)`,
      },
    ]);
    // Counted from the stored (processed) scales: the same number.
    expect(inspectJson([out, '--scan-scales']).marlin_layers.subnormal_scales).toEqual({ count: planted, layers: 2, from: 'scan' });
    await rm(join(out, 'marlin_fp4_manifest.json'));
    expect(inspectJson([out]).marlin_layers.subnormal_scales).toEqual({ count: planted, layers: 2, from: 'scan' });
    // The NVFP4 source with --scan-scales predicts it too.
    expect(inspectJson([src, '--scan-scales']).scales.subnormal).toBe(planted);
  });
});

describe('inspect reads headers and global scales only', () => {
  it('never reads a weight; block scales only with scanScales', async () => {
    const read = vi.spyOn(SafetensorsReader.prototype, 'read');
    const range = vi.spyOn(SafetensorsReader.prototype, 'readRangeInto');
    try {
      for (const fixture of FIXTURES) await inspectCheckpoint({ model: join(MODELS, fixture) });
      const names = read.mock.calls.map((c) => c[0] as string);
      expect(names.length).toBeGreaterThan(0);
      expect(names.filter((n) => !/\.(weight_scale_2|weight_global_scale|input_scale|input_global_scale)$/.test(n))).toEqual([]);
      expect(range).not.toHaveBeenCalled();
      read.mockClear();
      await inspectCheckpoint({ model: MOE, scanScales: true });
      const scanned = read.mock.calls.map((c) => c[0] as string);
      expect(scanned.filter((n) => !/\.(weight_scale|weight_scale_2|input_scale)$/.test(n))).toEqual([]);
      expect(scanned.some((n) => n.endsWith('.weight_scale'))).toBe(true);
    } finally {
      read.mockRestore();
      range.mockRestore();
    }
  });
});

describe('inspect: unreadable input exits 2 with one line', () => {
  it('no such directory', () => {
    const r = cli(['inspect', join(work, 'nope'), '--json']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`error: ${join(work, 'nope')}: no such directory\n`);
  });

  it('a corrupt shard header', async () => {
    const bad = join(work, 'corrupt');
    await mutateModel(LLAMA, bad, (_n, t) => t);
    await writeFile(join(bad, 'model.safetensors'), Buffer.from('garbage that is not a safetensors file'));
    const r = cli(['inspect', bad]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^error: .*model\.safetensors/);
  });
});
