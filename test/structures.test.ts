// The checkpoint structures of published NVFP4 models (issue 11): ModelOpt MIXED_PRECISION
// (table in hf_quant_config.json or in config.json), W4A16_NVFP4, Llama-4's fused 3-D
// experts stored K-major, Nemotron-H's non-gated experts (per expert, batched 3-D, shared).
// Each one: inspect, convert (v2 and v1), verify; 3-D sources give the same stacks as the
// same experts stored one 2-D tensor each; the refusals; and the invariant that no output
// ever holds a U8 (packed FP4) tensor.
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../src/checkpoint/model-dir.js';
import { requireNvfp4 } from '../src/checkpoint/flavour.js';
import { findLinears, expertPart } from '../src/plan/linears.js';
import { readSource } from '../src/plan/source-bytes.js';
import { addon } from '../src/transform/addon.js';
import { verifyCheckpoint } from '../src/verify/verify.js';
import { expertContent, generateStructure, STRUCTURES, type StructureName, type StructureOptions } from '../tools/fixture-generator/structures.js';
import { cli, editJson, MODELS, mutateModel, readAll, readModel, tempDir, writeTensors, type TensorData } from './helpers/models.js';

const cuda = addon().cudaStatus();
let work: string;
const dirs = new Map<string, string>();

interface Fixture {
  id: string;
  structure: StructureName;
  opts?: StructureOptions;
}
const FIXTURES: Fixture[] = [
  { id: 'mixed-precision', structure: 'mixed-precision' },
  { id: 'mixed-precision-config', structure: 'mixed-precision', opts: { algoIn: 'config' } },
  { id: 'w4a16', structure: 'w4a16' },
  { id: 'llama4', structure: 'llama4' },
  { id: 'nemotron-h', structure: 'nemotron-h', opts: { shards: 2 } },
];

beforeAll(async () => {
  work = await tempDir();
  for (const f of FIXTURES) {
    const dir = join(work, f.id);
    await generateStructure(dir, f.structure, f.opts);
    dirs.set(f.id, dir);
  }
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const src = (id: string) => dirs.get(id)!;

function json<T = Record<string, unknown>>(args: string[]): T {
  const r = cli([...args, '--json']);
  if (r.stdout === '') throw new Error(`${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** Every output's tensors must hold no U8 (packed FP4) tensor: the invariant. */
async function u8Tensors(dir: string): Promise<string[]> {
  return [...(await readModel(dir))].filter(([, t]) => t.dtype === 'U8').map(([n]) => n);
}

interface Expect {
  algo: string;
  dense: number;
  moe: { experts: number; hidden: number; intermediate: number; gated: boolean; count: number }[];
}
const EXPECT: Record<string, Expect> = {
  'mixed-precision': { algo: 'MIXED_PRECISION', dense: 0, moe: [{ experts: 3, hidden: 128, intermediate: 64, gated: true, count: 2 }] },
  'mixed-precision-config': { algo: 'MIXED_PRECISION', dense: 0, moe: [{ experts: 3, hidden: 128, intermediate: 64, gated: true, count: 2 }] },
  w4a16: { algo: 'W4A16_NVFP4', dense: 7, moe: [] },
  llama4: { algo: 'NVFP4', dense: 14, moe: [{ experts: 2, hidden: 128, intermediate: 64, gated: true, count: 2 }] },
  'nemotron-h': { algo: 'NVFP4', dense: 4, moe: [{ experts: 3, hidden: 128, intermediate: 64, gated: false, count: 2 }] },
};

describe.each(FIXTURES.map((f) => f.id))('structure %s', (id) => {
  it('inspect: what it is, its layers, no problem', () => {
    const r = json<{ description: string; convertible: boolean; problems: unknown[]; quantized: { dense: number; moe_shapes: unknown[] } }>(['inspect', src(id)]);
    expect(r.description).toBe(`ModelOpt ${EXPECT[id]!.algo}`);
    expect(r.problems).toEqual([]);
    expect(r.convertible).toBe(true);
    expect(r.quantized.dense).toBe(EXPECT[id]!.dense);
    expect(r.quantized.moe_shapes).toEqual(EXPECT[id]!.moe);
  });

  for (const layout of ['v2', 'v1'] as const) {
    it(`convert --layout ${layout} on the CPU, then verify PASS; no U8 tensor in the output`, async () => {
      const out = join(work, `${id}-${layout}`);
      const c = json<{ quant_algo: string; layers: { kind: string; gated?: boolean }[] }>(['convert', src(id), '-o', out, '--layout', layout, '--device', 'cpu']);
      expect(c.quant_algo).toBe(EXPECT[id]!.algo);
      expect(c.layers.filter((l) => l.kind === 'linear')).toHaveLength(EXPECT[id]!.dense);
      const stacks = c.layers.filter((l) => l.kind !== 'linear');
      expect(stacks).toHaveLength(2 * (EXPECT[id]!.moe[0]?.count ?? 0));
      for (const s of stacks) expect(s.gated).toBe(EXPECT[id]!.moe[0]!.gated);
      expect(await u8Tensors(out)).toEqual([]);
      const v = await verifyCheckpoint({ dir: out, device: 'cpu', m: [1, 16] });
      expect(v.errors).toEqual([]);
      expect(v.failed_layers).toEqual([]);
      expect(v.passed).toBe(true);
      expect(v.layers_checked).toBe(EXPECT[id]!.dense + stacks.length);
    });
  }
});

describe('MIXED_PRECISION: FP8 layers pass through, the table goes to the output', () => {
  it('FP8 weights and their scales are copied unchanged; the output config states each layer\'s scheme', async () => {
    const out = join(work, 'mixed-precision-v2');
    if (!existsSync(out)) throw new Error('run after the convert test of mixed-precision');
    const [a, b] = await Promise.all([readModel(src('mixed-precision')), readModel(out)]);
    for (const name of ['model.layers.0.self_attn.q_proj.weight', 'model.layers.0.self_attn.q_proj.weight_scale', 'model.layers.1.self_attn.o_proj.input_scale']) {
      expect(b.get(name)!.dtype).toBe(a.get(name)!.dtype);
      expect(Buffer.compare(b.get(name)!.data, a.get(name)!.data)).toBe(0);
    }
    expect(a.get('model.layers.0.self_attn.q_proj.weight')!.dtype).toBe('F8_E4M3');
    // W4A16_NVFP4 experts (layer 1) have no input scale; NVFP4 ones (layer 0) keep theirs.
    expect(b.has('model.layers.0.mlp.experts.2.up_proj.input_scale')).toBe(true);
    expect([...b.keys()].filter((n) => n.startsWith('model.layers.1.mlp.experts.') && n.endsWith('input_scale'))).toEqual([]);
    const q = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).quantization_config;
    expect(q.source_quant_algo).toBe('MIXED_PRECISION');
    expect(q.quantized_layers['model.layers.0.mlp.experts']).toEqual({ quant_algo: 'MARLIN_FP4', source_quant_algo: 'NVFP4', group_size: 16 });
    expect(q.quantized_layers['model.layers.1.mlp.experts.2.down_proj']).toEqual({ quant_algo: 'MARLIN_FP4', source_quant_algo: 'W4A16_NVFP4', group_size: 16 });
    expect(q.quantized_layers['model.layers.1.self_attn.k_proj']).toEqual({ quant_algo: 'FP8' });
    expect(existsSync(join(out, 'hf_quant_config.json'))).toBe(false);
  });

  it('a modelopt config.json with the algorithm only in hf_quant_config.json is read from there; a non-NVFP4 one says so', async () => {
    const dir = join(work, 'fp8-only');
    await mutateModel(src('mixed-precision'), dir, (_n, t) => t);
    await editJson(join(dir, 'config.json'), (c) => {
      c.quantization_config = { quant_method: 'modelopt' };
    });
    expect(json<{ description: string }>(['inspect', dir]).description).toBe('ModelOpt MIXED_PRECISION');
    await editJson(join(dir, 'hf_quant_config.json'), (c) => {
      (c.quantization as Record<string, unknown>).quant_algo = 'FP8';
    });
    const r = cli(['convert', dir, '-o', join(work, 'fp8-only-out')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`error: ${dir}: not an NVFP4 checkpoint (ModelOpt quant_algo FP8 (hf_quant_config.json))\n`);
  });
});

/** Rewrites a single-shard model's tensors with `edit` over the whole map. */
async function rewrite(from: string, to: string, edit: (t: Map<string, TensorData>) => [string, TensorData][]): Promise<void> {
  await mutateModel(from, to, (_n, t) => t);
  const file = join(to, 'model.safetensors');
  const tensors = await readAll(file);
  await rm(file);
  await writeTensors(file, edit(tensors));
}

function scalarOf(t: TensorData): number {
  return t.data.readFloatLE(0);
}

describe('3-D expert tensors convert exactly as the same experts stored one 2-D tensor each', () => {
  it('the source reader un-transposes Llama-4 K-major experts and slices batched N-major ones (against the generator\'s own content)', async () => {
    for (const [id, group, gated] of [
      ['llama4', 'model.layers.1.feed_forward.experts', true],
      ['nemotron-h', 'backbone.layers.1.mixer.experts', false],
    ] as const) {
      const ckpt = await openCheckpoint(src(id));
      try {
        const g = findLinears(ckpt, requireNvfp4(ckpt)).groups.find((x) => x.prefix === group)!;
        expect(g.gated).toBe(gated);
        for (const [e, ex] of g.experts.entries()) {
          for (const role of gated ? (['gate', 'up', 'down'] as const) : (['up', 'down'] as const)) {
            const lin = expertPart(ex, role);
            const tensor = gated ? `${group}.${role === 'down' ? 'down_proj' : 'gate_up_proj'}` : `${group}.${role}_proj`;
            const n = gated && role !== 'down' ? 2 * lin.n : lin.n;
            const want = expertContent(1, tensor, e, n, lin.k);
            const row0 = gated && role === 'up' ? lin.n : 0;
            expect(Buffer.compare(await readSource(ckpt, lin, 'weight'), want.codes.subarray(row0 * (lin.k / 2), (row0 + lin.n) * (lin.k / 2)))).toBe(0);
            expect(Buffer.compare(await readSource(ckpt, lin, 'scale'), want.scales.subarray(row0 * (lin.k / 16), (row0 + lin.n) * (lin.k / 16)))).toBe(0);
          }
        }
      } finally {
        await ckpt.close();
      }
    }
  });

  it('Llama-4: fused gate_up_proj / down_proj give the stacks of per-expert gate_proj / up_proj / down_proj', async () => {
    const split = join(work, 'llama4-split');
    const X = 'model.layers.1.feed_forward.experts';
    await rewrite(src('llama4'), split, (t) => {
      const out: [string, TensorData][] = [];
      for (const [name, d] of t) {
        if (name.startsWith(`${X}.`)) continue;
        out.push([name, d]);
      }
      for (let e = 0; e < 2; e++) {
        const gu = expertContent(1, `${X}.gate_up_proj`, e, 128, 128);
        const dn = expertContent(1, `${X}.down_proj`, e, 128, 64);
        const parts: [string, Buffer, Buffer, number, number, string][] = [
          ['gate_proj', gu.codes.subarray(0, 64 * 64), gu.scales.subarray(0, 64 * 8), 64, 128, 'gate_up_proj'],
          ['up_proj', gu.codes.subarray(64 * 64), gu.scales.subarray(64 * 8), 64, 128, 'gate_up_proj'],
          ['down_proj', dn.codes, dn.scales, 128, 64, 'down_proj'],
        ];
        for (const [role, codes, scales, n, k, from] of parts) {
          const p = `${X}.${e}.${role}`;
          out.push([`${p}.weight`, { dtype: 'U8', shape: [n, k / 2], data: Buffer.from(codes) }]);
          out.push([`${p}.weight_scale`, { dtype: 'F8_E4M3', shape: [n, k / 16], data: Buffer.from(scales) }]);
          out.push([`${p}.weight_scale_2`, t.get(`${X}.${from}_weight_scale_2`)!]);
          out.push([`${p}.input_scale`, t.get(`${X}.${from}_input_scale`)!]);
        }
      }
      return out;
    });
    await expectSameStacks(src('llama4'), split, X, ['w13', 'w2']);
    expect(scalarOf((await readAll(join(split, 'model.safetensors'))).get(`${X}.1.up_proj.weight_scale_2`)!)).toBeGreaterThan(0);
  });

  it('Nemotron-H: batched up_proj.weight / down_proj.weight give the stacks of per-expert up_proj / down_proj', async () => {
    const one = join(work, 'nemotron-batched-one-shard');
    await generateStructure(one, 'nemotron-h');
    const split = join(work, 'nemotron-split');
    const X = 'backbone.layers.1.mixer.experts';
    await rewrite(one, split, (t) => {
      const out: [string, TensorData][] = [...t].filter(([n]) => !n.startsWith(`${X}.`));
      for (let e = 0; e < 3; e++) {
        for (const [role, n, k] of [['up_proj', 64, 128], ['down_proj', 128, 64]] as const) {
          const c = expertContent(1, `${X}.${role}`, e, n, k);
          const p = `${X}.${e}.${role}`;
          out.push([`${p}.weight`, { dtype: 'U8', shape: [n, k / 2], data: c.codes }]);
          out.push([`${p}.weight_scale`, { dtype: 'F8_E4M3', shape: [n, k / 16], data: c.scales }]);
          out.push([`${p}.weight_scale_2`, t.get(`${X}.${role}.weight_scale_2`)!]);
        }
      }
      return out;
    });
    await expectSameStacks(one, split, X, ['w13', 'w2']);
  });
});

/** Converts both models and compares the named stacks' tensors byte for byte. */
async function expectSameStacks(a: string, b: string, group: string, which: string[]): Promise<void> {
  const outs: Map<string, TensorData>[] = [];
  for (const [i, m] of [a, b].entries()) {
    const out = join(work, `${group}-${i}-${Date.now()}`);
    const r = cli(['convert', m, '-o', out, '--device', 'cpu']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    outs.push(await readModel(out));
  }
  for (const w of which) {
    for (const suffix of ['_weight', '_weight_scale', '_weight_scale_2']) {
      const name = `${group}.${w}${suffix}`;
      const [x, y] = [outs[0]!.get(name), outs[1]!.get(name)];
      expect(x, name).toBeDefined();
      expect(y!.shape).toEqual(x!.shape);
      expect(Buffer.compare(x!.data, y!.data), name).toBe(0);
    }
  }
}

describe('non-gated stacks are the ones vLLM\'s Marlin MoE path takes (FORMAT.md 6.2)', () => {
  it('w13 is up alone (N = Ip), w2 has K = Ip; the records say gated: false', async () => {
    const out = join(work, 'nemotron-h-v2');
    const t = await readModel(out);
    // E = 3, H = 128, I = 64 -> Ip = 64: w13 [E, H/16, 2*Ip], w2 [E, Ip/16, 2*H].
    expect(t.get('backbone.layers.0.mixer.experts.w13_weight')!.shape).toEqual([3, 8, 128]);
    expect(t.get('backbone.layers.0.mixer.experts.w13_weight_scale')!.shape).toEqual([3, 8, 64]);
    expect(t.get('backbone.layers.1.mixer.experts.w2_weight')!.shape).toEqual([3, 4, 256]);
    const manifest = JSON.parse(await readFile(join(out, 'marlin_fp4_manifest.json'), 'utf8')) as { layers: { name: string; gated?: boolean }[] };
    expect(manifest.layers.find((l) => l.name === 'backbone.layers.1.mixer.experts.w13')!.gated).toBe(false);
    expect(manifest.layers.find((l) => l.name === 'backbone.layers.0.mixer.shared_experts.up_proj')!.gated).toBeUndefined();
  });
});

describe('verify fails an output that holds NVFP4 left unconverted', () => {
  it('a U8 tensor, and F8_E4M3 block scales outside a converted layer', async () => {
    const good = join(work, 'mixed-precision-v2');
    const bad = join(work, 'leftover');
    await mutateModel(good, bad, (n, t) => {
      if (n === 'model.layers.0.mlp.gate.weight') return { dtype: 'U8', shape: [t.shape[0]!, t.shape[1]! * 2], data: t.data };
      if (n === 'model.layers.1.self_attn.q_proj.weight_scale') return { dtype: 'F8_E4M3', shape: [4], data: t.data };
      return t;
    });
    const v = await verifyCheckpoint({ dir: bad, device: 'cpu', m: [1] });
    expect(v.passed).toBe(false);
    expect(v.errors).toContain('model.layers.0.mlp.gate.weight: U8 tensor (packed FP4) in the converted checkpoint: NVFP4 weights left unconverted');
    expect(v.errors).toContain('model.layers.1.self_attn.q_proj.weight_scale: F8_E4M3 block scales outside any converted layer: NVFP4 scales left unconverted');
    const r = cli(['verify', bad, '-q']);
    expect(r.code).toBe(1);
    expect(r.stdout + r.stderr).toMatch(/FAIL/);
  });
});

interface Refusal {
  title: string;
  from: string;
  edit?: (name: string, t: TensorData) => TensorData | undefined;
  json?: [string, (c: Record<string, unknown>) => void];
  /** The stderr line after "error: <model dir>/". */
  error: string | RegExp;
}

const L4 = 'model.layers.0.feed_forward.experts';
const REFUSALS: Refusal[] = [
  {
    title: 'a Llama-4 fused expert tensor with its block scales missing',
    from: 'llama4',
    edit: (n, t) => (n === `${L4}.gate_up_proj_weight_scale` ? undefined : t),
    error: `model.safetensors: tensor ${L4}.gate_up_proj_weight_scale: missing (the block scales of ${L4}.gate_up_proj)`,
  },
  {
    title: 'Llama-4 block scales whose packed tensor is missing',
    from: 'llama4',
    edit: (n, t) => (n === `${L4}.down_proj` ? undefined : t),
    error: `model.safetensors: tensor ${L4}.down_proj: missing (the packed FP4 weight of ${L4}.down_proj; its block scales ${L4}.down_proj_weight_scale cannot be placed)`,
  },
  {
    title: 'a 3-D block-scale tensor of the wrong shape (named, not its weight)',
    from: 'llama4',
    edit: (n, t) => (n === `${L4}.down_proj_weight_scale` ? { ...t, shape: [2, 8, 64] } : t),
    error: `model.safetensors: tensor ${L4}.down_proj_weight_scale: shape [2, 8, 64] fits neither [E, N, K/16] = [2, 32, 16] (weight [2, 32, 128] as [E, N, K/2]) nor [E, K/16, N] = [2, 4, 128] (weight as [E, K/2, N], stored K-major)`,
  },
  {
    title: 'a U8 tensor that no converted layer can place',
    from: 'llama4',
    edit: (n, t) => (n === 'model.layers.1.post_attention_layernorm.weight' ? { dtype: 'U8', shape: [256], data: t.data } : t),
    error: 'model.safetensors: tensor model.layers.1.post_attention_layernorm.weight_scale: missing (the block scales of model.layers.1.post_attention_layernorm)',
  },
  {
    title: 'a packed tensor on the exclude list (the router made U8)',
    from: 'llama4',
    edit: (n, t) => (n === 'model.layers.1.feed_forward.router.weight' ? { dtype: 'U8', shape: [2, 256], data: t.data } : t),
    error: 'model.safetensors: tensor model.layers.1.feed_forward.router.weight: model.layers.1.feed_forward.router is on the exclude/ignore list but its weight is packed NVFP4 (U8); it cannot be copied unconverted',
  },
  {
    title: 'a packed module on the exclude list',
    from: 'w4a16',
    json: ['config.json', (c) => ((c.quantization_config as Record<string, unknown>).exclude_modules = ['lm_head', 'model.layers.0.self_attn.o_proj'])],
    error: 'model.safetensors: tensor model.layers.0.self_attn.o_proj.weight: model.layers.0.self_attn.o_proj is on the exclude/ignore list but its weight is packed NVFP4 (U8); it cannot be copied unconverted',
  },
  {
    title: 'a MIXED_PRECISION table that calls packed experts FP8',
    from: 'mixed-precision',
    json: ['hf_quant_config.json', (c) => (((c.quantization as Record<string, Record<string, unknown>>).quantized_layers!['model.layers.0.mlp.experts'] as Record<string, unknown>).quant_algo = 'FP8')],
    error: /^model\.safetensors: tensor model\.layers\.0\.mlp\.experts\.0\.down_proj\.weight: packed as U8, but quantized_layers gives model\.layers\.0\.mlp\.experts\.0\.down_proj quant_algo FP8; marlin-fp4 converts NVFP4 and W4A16_NVFP4 only and will not copy it unconverted$/,
  },
  {
    title: 'a MIXED_PRECISION table with no entry for packed experts',
    from: 'mixed-precision',
    json: ['hf_quant_config.json', (c) => delete (c.quantization as Record<string, Record<string, unknown>>).quantized_layers!['model.layers.0.mlp.experts']],
    error: /^model\.safetensors: tensor model\.layers\.0\.mlp\.experts\.0\.down_proj\.weight: packed NVFP4 \(U8\), but quantized_layers has no entry for model\.layers\.0\.mlp\.experts\.0\.down_proj; marlin-fp4 will not guess its scheme$/,
  },
  {
    title: 'a MIXED_PRECISION config with an empty table',
    from: 'mixed-precision',
    json: ['hf_quant_config.json', (c) => ((c.quantization as Record<string, unknown>).quantized_layers = {})],
    error: ': quant_algo MIXED_PRECISION needs a non-empty quantized_layers table (none found in config.json or hf_quant_config.json)',
  },
];

describe('refusals: exit 2, one line naming the tensor, no output at all', () => {
  for (const c of REFUSALS) {
    it(c.title, async () => {
      const model = join(work, `refuse-${c.title.replace(/\W+/g, '-')}`);
      await mutateModel(src(c.from), model, c.edit ?? ((_n, t) => t));
      if (c.json) await editJson(join(model, c.json[0]), c.json[1]);
      const out = `${model}-out`;
      const r = cli(['convert', model, '-o', out]);
      expect(r.stdout).toBe('');
      const lines = r.stderr.split('\n').filter(Boolean);
      expect(lines).toHaveLength(1);
      expect(r.code).toBe(2);
      const rest = lines[0]!.slice('error: '.length);
      const rel = rest.startsWith(`${model}/`) ? rest.slice(model.length + 1) : rest.startsWith(model) ? rest.slice(model.length) : rest;
      if (typeof c.error === 'string') expect(rel).toBe(c.error);
      else expect(rel).toMatch(c.error);
      // The invariant for a refusal: no output at all (so no U8 tensor in one).
      expect(existsSync(out)).toBe(false);
      // inspect lists the same problem and says convert would refuse.
      const ins = json<{ convertible: boolean; problems: { message: string }[] }>(['inspect', model]);
      expect(ins.convertible).toBe(false);
      expect(ins.problems.map((p) => p.message).some((m) => m.endsWith(rel))).toBe(true);
    });
  }

  it('inspect gives an unplaceable U8 tensor\'s module the fate refused, never passed-through', async () => {
    const model = join(work, 'refuse-a-U8-tensor-that-no-converted-layer-can-place');
    if (!existsSync(model)) throw new Error('run after the refusal cases');
    const r = json<{ modules: { name: string; fate: string; reason?: string }[] }>(['inspect', model]);
    expect(r.modules.find((m) => m.name === 'model.layers.1.post_attention_layernorm')).toMatchObject({ fate: 'refused' });
  });

  it('non-gated experts beside an unquantized gate projection', async () => {
    const one = join(work, 'nemotron-one-shard');
    await generateStructure(one, 'nemotron-h');
    const model = join(work, 'refuse-bf16-gate');
    const gate = 'backbone.layers.0.mixer.experts.1.gate_proj.weight';
    await rewrite(one, model, (t) => [...t, [gate, { dtype: 'BF16', shape: [64, 128], data: Buffer.alloc(64 * 128 * 2) }]]);
    const out = join(work, 'refuse-bf16-gate-out');
    const r = cli(['convert', model, '-o', out]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`error: ${join(model, 'model.safetensors')}: tensor ${gate}: backbone.layers.0.mixer.experts's up and down projections are packed NVFP4 but this gate projection is not\n`);
    expect(existsSync(out)).toBe(false);
  });
});

describe('the invariant over the committed fixtures: no U8 tensor in any output', () => {
  it.each(['llama-tiny-modelopt', 'llama-tiny-ct', 'qwen3-moe-tiny-modelopt', 'qwen3-moe-tiny-ct'])('%s', async (fixture) => {
    const out = join(work, `inv-${fixture}`);
    const r = cli(['convert', join(MODELS, fixture), '-o', out, '--device', 'cpu', '-q']);
    expect(r.code).toBe(0);
    expect(await u8Tensors(out)).toEqual([]);
  });
});

describe.skipIf(!cuda.available)(cuda.available ? `structures on the GPU (${cuda.name})` : `structures on the GPU (skipped: no usable CUDA device: ${cuda.reason})`, () => {
  it.each(FIXTURES.map((f) => f.id))('%s: --device cuda gives the CPU bytes and verifies on the GPU', async (id) => {
    const [gpu, cpu] = [join(work, `${id}-gpu`), join(work, `${id}-cpu`)];
    expect(cli(['convert', src(id), '-o', gpu, '--device', 'cuda', '-q']).code).toBe(0);
    expect(cli(['convert', src(id), '-o', cpu, '--device', 'cpu', '-q']).code).toBe(0);
    const [a, b] = [await readModel(gpu), await readModel(cpu)];
    expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
    for (const [name, t] of a) expect(Buffer.compare(t.data, b.get(name)!.data), name).toBe(0);
    const v = await verifyCheckpoint({ dir: gpu, device: 'cuda', m: [1, 16] });
    expect(v.errors).toEqual([]);
    expect(v.passed).toBe(true);
  });
});
