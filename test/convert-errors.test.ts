// Bad input ends in one clear line naming file, tensor and reason, exit code 2, and no output
// directory (nor a temporary one) left behind.
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
const Q = 'model.layers.0.self_attn.q_proj';


interface Case {
  title: string;
  src?: string;
  edit?: (name: string, t: TensorData) => TensorData | undefined;
  config?: (c: Record<string, unknown>) => void;
  args?: string[];
  /** The whole stderr line after "error: <model dir>/", or a pattern. */
  error: string | RegExp;
}

const cases: Case[] = [
  {
    title: 'a missing block scale',
    edit: (n, t) => (n === `${Q}.weight_scale` ? undefined : t),
    error: `model.safetensors: tensor ${Q}.weight_scale: missing (the block scales of ${Q})`,
  },
  {
    title: 'a missing global scale',
    edit: (n, t) => (n === `${Q}.weight_scale_2` ? undefined : t),
    error: `model.safetensors: tensor ${Q}.weight_scale_2: missing (the global scale of ${Q})`,
  },
  {
    title: 'a block scale of the wrong shape',
    edit: (n, t) => (n === `${Q}.weight_scale` ? { ...t, shape: [t.shape[0]! * 2, t.shape[1]! / 2] } : t),
    error: `model.safetensors: tensor ${Q}.weight_scale: shape [256, 4] is not [N, K/16] = [128, 8] (weight ${Q}.weight is [128, 64])`,
  },
  {
    title: 'a K that breaks the group size',
    edit: (n, t) =>
      n === `${Q}.weight` ? { ...t, shape: [128, 60], data: t.data.subarray(0, 128 * 60) } : t,
    error: `model.safetensors: tensor ${Q}.weight: K = 120 is not a multiple of 16 (the NVFP4 group size)`,
  },
  {
    title: 'an N that layout v1 cannot pad',
    edit: (n, t) => {
      if (n === `${Q}.weight`) return { ...t, shape: [96, 64], data: t.data.subarray(0, 96 * 64) };
      if (n === `${Q}.weight_scale`) return { ...t, shape: [96, 8], data: t.data.subarray(0, 96 * 8) };
      return t;
    },
    args: ['--layout', 'v1'],
    error: `model.safetensors: tensor ${Q}.weight: N = 96 is not a multiple of 64: layout v1 cannot pad it (use --layout v2)`,
  },
  {
    title: 'a packed weight that is not U8',
    edit: (n, t) => (n === `${Q}.weight` ? { ...t, dtype: 'I8' } : t),
    error: `model.safetensors: tensor ${Q}.weight: dtype I8 is not U8 (packed FP4)`,
  },
  // Without --strict these convert (their block scales re-encoded onto one global): test/fused-groups.test.ts.
  {
    title: '--strict: q/k/v shards with different global scales',
    edit: (n, t) => (n === 'model.layers.1.self_attn.k_proj.weight_scale_2' ? f32Scalar(0.125) : t),
    args: ['--strict'],
    error: /^model\.safetensors: tensor model\.layers\.1\.self_attn\.q_proj\.weight_scale_2: fused model\.layers\.1\.self_attn\.qkv_proj has parts with different global scales \(q_proj [\d.e-]+, k_proj 0\.125, v_proj [\d.e-]+\); --strict refuses to re-encode their block scales onto one global$/,
  },
  {
    title: '--strict: gate/up shards with different global scales',
    edit: (n, t) => (n === 'model.layers.0.mlp.up_proj.weight_scale_2' ? f32Scalar(0.5) : t),
    args: ['--strict'],
    error: /^model\.safetensors: tensor model\.layers\.0\.mlp\.gate_proj\.weight_scale_2: fused model\.layers\.0\.mlp\.gate_up_proj has parts with different global scales \(gate_proj [\d.e-]+, up_proj 0\.5\)/,
  },
  {
    title: '--strict: an MoE expert whose gate and up global scales differ',
    src: MOE,
    edit: (n, t) => (n === 'model.layers.1.mlp.experts.2.up_proj.weight_scale_2' ? f32Scalar(0.5) : t),
    args: ['--strict'],
    error: /^model-0000\d-of-00002\.safetensors: tensor model\.layers\.1\.mlp\.experts\.2\.up_proj\.weight_scale_2: gate and up projections of model\.layers\.1\.mlp\.experts\.2 have different global scales \([\d.e-]+ vs 0\.5\); --strict refuses/,
  },
  {
    title: 'a negative block scale',
    edit: (n, t) => {
      if (n !== `${Q}.weight_scale`) return t;
      const data = Buffer.from(t.data);
      data[8 * 5 + 3] = 0xb8;
      return { ...t, data };
    },
    error: `model.safetensors: tensor ${Q}.weight_scale: block scale [5, 3] is negative (-1); Marlin stores scales without a sign`,
  },
  {
    title: 'a NaN block scale in an MoE expert',
    src: MOE,
    edit: (n, t) => {
      if (n !== 'model.layers.1.mlp.experts.1.down_proj.weight_scale') return t;
      const data = Buffer.from(t.data);
      data[4 * 7 + 2] = 0x7f;
      return { ...t, data };
    },
    error: /^model-0000\d-of-00002\.safetensors: tensor model\.layers\.1\.mlp\.experts\.1\.down_proj\.weight_scale: block scale \[7, 2\] is NaN; Marlin stores scales without a sign$/,
  },
  {
    // The stack's scales are read and scanned many at once; the error is still the first bad
    // scale of the first bad expert in order, at its place in its own tensor.
    title: 'NaN block scales in two experts of one MoE stack',
    src: MOE,
    edit: (n, t) => {
      const bad = { 'model.layers.1.mlp.experts.1.down_proj.weight_scale': 4 * 3 + 1, 'model.layers.1.mlp.experts.2.down_proj.weight_scale': 0 }[n];
      if (bad === undefined) return t;
      const data = Buffer.from(t.data);
      data[bad] = 0x7f;
      return { ...t, data };
    },
    error: /^model-0000\d-of-00002\.safetensors: tensor model\.layers\.1\.mlp\.experts\.1\.down_proj\.weight_scale: block scale \[3, 1\] is NaN; Marlin stores scales without a sign$/,
  },
  {
    title: 'a global scale that is not positive',
    edit: (n, t) => (n === 'model.layers.0.self_attn.o_proj.weight_scale_2' ? f32Scalar(-2) : t),
    error: 'model.safetensors: tensor model.layers.0.self_attn.o_proj.weight_scale_2: global scale -2 is not a positive finite number',
  },
  {
    title: 'a checkpoint that is not NVFP4',
    config: (c) => {
      delete c.quantization_config;
    },
    error: ': not an NVFP4 checkpoint (no quantization_config in config.json and no hf_quant_config.json)',
  },
];

describe('convert refuses bad input', () => {
  for (const c of cases) {
    it(c.title, async () => {
      const model = join(work, c.title.replace(/\W+/g, '-'));
      await mutateModel(c.src ?? LLAMA, model, c.edit ?? ((_, t) => t));
      if (c.config) await editJson(join(model, 'config.json'), c.config);
      if (c.config) await rm(join(model, 'hf_quant_config.json'), { force: true });
      const out = join(work, 'out');
      const r = cli(['convert', model, '-o', out, ...(c.args ?? [])]);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      const lines = r.stderr.split('\n').filter(Boolean);
      expect(lines).toHaveLength(1);
      const line = lines[0]!;
      expect(line.startsWith('error: ')).toBe(true);
      const rest = line.slice('error: '.length);
      const rel = rest.startsWith(`${model}/`) ? rest.slice(model.length + 1) : rest.startsWith(model) ? rest.slice(model.length) : rest;
      if (typeof c.error === 'string') expect(rel).toBe(c.error);
      else expect(rel).toMatch(c.error);
      expect(existsSync(out)).toBe(false);
      expect((await readdir(work)).filter((f) => f.includes('marlin-fp4-tmp'))).toEqual([]);
    });
  }

  it('an output directory that exists', async () => {
    const out = join(work, 'exists');
    await mkdir(out);
    await writeFile(join(out, 'keep.txt'), 'mine');
    const r = cli(['convert', LLAMA, '-o', out]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`error: ${out}: already exists (pass --force to replace it)\n`);
    expect(await readdir(out)).toEqual(['keep.txt']);
  });

  it('an output inside the input', () => {
    const r = cli(['convert', LLAMA, '-o', join(LLAMA, 'out')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/the output directory must not be the input directory, inside it, or contain it \(the output resolves to .*\/out, the input to .*llama-tiny-modelopt\)\n$/);
  });

  it('a directory without config.json, and a path that does not exist', () => {
    const none = cli(['convert', join(work, 'nope')]);
    expect(none.code).toBe(2);
    expect(none.stderr).toBe(`error: ${join(work, 'nope')}: no such directory\n`);
    const empty = cli(['convert', work, '-o', join(work, 'x')]);
    expect(empty.code).toBe(2);
    expect(empty.stderr).toBe(`error: ${join(work, 'config.json')}: missing (a model directory needs config.json)\n`);
  });

  it('usage errors', () => {
    const r = cli(['convert', LLAMA, '--layout', 'v3']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/error: option '--layout <version>' argument 'v3' is invalid/);
    expect(cli(['convert']).code).toBe(2);
    expect(cli(['convert', LLAMA, '--threads', '0']).code).toBe(2);
  });
});
