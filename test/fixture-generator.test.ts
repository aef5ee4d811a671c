// Tests of the fixture generator (tools/fixture-generator/, imported here as TypeScript
// sources; its CLI runs from `npm run build:tools`'s output) and of the synthetic NVFP4
// checkpoints committed under fixtures/models (which it must reproduce byte for byte).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  assignShards,
  generateModel,
  GLOBAL_SCALE_TABLE,
  planTensors,
  PRESETS,
  resolveOptions,
  type GenerateOptions,
} from '../tools/fixture-generator/generate.js';
import { COMMAND, parseCliArgs } from '../tools/fixture-generator/cli.js';
import { SafetensorsReader, type TensorEntry } from '../src/safetensors/index.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MODELS = join(ROOT, 'fixtures', 'models');
/** The compiled CLI (npm test builds it first: `npm run build:tools`). */
const GENERATOR = join(ROOT, COMMAND.replace(/^node /, ''));
const COMMITTED = ['llama-tiny-modelopt', 'llama-tiny-ct', 'qwen3-moe-tiny-modelopt', 'qwen3-moe-tiny-ct'];

let tmp: string;
let counter = 0;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'fixture-generator-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});
const freshDir = (label: string) => join(tmp, `${label}-${counter++}`);

/** The regeneration commands of fixtures/models/README.md, keyed by output directory name. */
async function readmeCommands(): Promise<Map<string, GenerateOptions>> {
  const text = await readFile(join(MODELS, 'README.md'), 'utf8');
  const out = new Map<string, GenerateOptions>();
  for (const line of text.split('\n')) {
    const m = line.trim().startsWith(`${COMMAND} `) ? [line, line.trim().slice(COMMAND.length + 1)] : null;
    if (!m) continue;
    const parsed = parseCliArgs(m[1]!.split(/\s+/));
    if ('help' in parsed) throw new Error('unexpected --help in README');
    const prefix = 'fixtures/models/';
    if (!parsed.dir.startsWith(prefix)) continue; // the non-committed examples
    out.set(parsed.dir.slice(prefix.length), parsed.options);
  }
  return out;
}

interface Model {
  dir: string;
  config: Record<string, any>;
  index: { metadata: { total_size: number }; weight_map: Record<string, string> } | undefined;
  shardFiles: string[];
  readers: Map<string, SafetensorsReader>;
  /** Tensor name -> file it lives in. */
  where: Map<string, string>;
  entry(name: string): TensorEntry;
  bytes(name: string): Promise<Buffer>;
  f32(name: string): Promise<number>;
  names(): string[];
  close(): Promise<void>;
}

async function openModel(dir: string): Promise<Model> {
  const files = (await readdir(dir)).sort();
  const shardFiles = files.filter((f) => f.endsWith('.safetensors'));
  const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
  const index = files.includes('model.safetensors.index.json')
    ? JSON.parse(await readFile(join(dir, 'model.safetensors.index.json'), 'utf8'))
    : undefined;
  const readers = new Map<string, SafetensorsReader>();
  const where = new Map<string, string>();
  for (const f of shardFiles) {
    const r = await SafetensorsReader.open(join(dir, f));
    readers.set(f, r);
    for (const n of r.names()) {
      if (where.has(n)) throw new Error(`${n} in both ${where.get(n)} and ${f}`);
      where.set(n, f);
    }
  }
  const reader = (name: string) => {
    const f = where.get(name);
    if (!f) throw new Error(`no tensor ${name} in ${dir}`);
    return readers.get(f)!;
  };
  return {
    dir,
    config,
    index,
    shardFiles,
    readers,
    where,
    entry: (name) => reader(name).entry(name),
    bytes: (name) => reader(name).read(name),
    f32: async (name) => {
      const e = reader(name).entry(name);
      expect(e.dtype).toBe('F32');
      expect(e.end - e.begin).toBe(4);
      return (await reader(name).read(name)).readFloatLE(0);
    },
    names: () => [...where.keys()].sort(),
    close: async () => {
      for (const r of readers.values()) await r.close();
    },
  };
}

async function withModel<T>(dir: string, fn: (m: Model) => Promise<T>): Promise<T> {
  const m = await openModel(dir);
  try {
    return await fn(m);
  } finally {
    await m.close();
  }
}

async function expectSameFiles(actualDir: string, expectedDir: string): Promise<void> {
  const expected = (await readdir(expectedDir)).sort();
  expect((await readdir(actualDir)).sort()).toEqual(expected);
  for (const f of expected) {
    const [a, b] = await Promise.all([readFile(join(actualDir, f)), readFile(join(expectedDir, f))]);
    expect(a.equals(b), `${f} differs`).toBe(true);
  }
}

/** Quantized module prefixes ('model.layers.0.self_attn.q_proj', ...) of a model. */
function quantizedPrefixes(m: Model): string[] {
  return m
    .names()
    .filter((n) => n.endsWith('.weight_scale'))
    .map((n) => n.slice(0, -'.weight_scale'.length));
}

const isCt = (m: Model) => m.config.quantization_config.quant_method === 'compressed-tensors';
/** weight_scale_2 (ModelOpt) or 1 / weight_global_scale (compressed-tensors). */
async function globalScale(m: Model, p: string): Promise<number> {
  return isCt(m) ? Math.fround(1 / (await m.f32(`${p}.weight_global_scale`))) : m.f32(`${p}.weight_scale_2`);
}
async function inputScale(m: Model, p: string): Promise<number> {
  return isCt(m) ? Math.fround(1 / (await m.f32(`${p}.input_global_scale`))) : m.f32(`${p}.input_scale`);
}

/** Fused groups: the prefixes that must share one global scale, each group a list. */
function fusedGroups(m: Model): string[][] {
  const groups = new Map<string, string[]>();
  for (const p of quantizedPrefixes(m)) {
    const key = p
      .replace(/\.(q_proj|k_proj|v_proj)$/, '.qkv')
      .replace(/\.(gate_proj|up_proj|w1|w3)$/, '.gate_up');
    groups.set(key, [...(groups.get(key) ?? []), p]);
  }
  return [...groups.values()];
}

describe('committed fixtures', () => {
  it('README lists exactly the committed directories', async () => {
    const cmds = await readmeCommands();
    expect([...cmds.keys()].sort()).toEqual([...COMMITTED].sort());
    const dirs = (await readdir(MODELS, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name);
    expect(dirs.sort()).toEqual([...COMMITTED].sort());
  });

  it.each(COMMITTED)('%s: the README command regenerates it byte for byte', async (name) => {
    const options = (await readmeCommands()).get(name)!;
    const out = freshDir(name);
    const r = await generateModel(out, options);
    await expectSameFiles(out, join(MODELS, name));
    expect(r.files).toEqual((await readdir(join(MODELS, name))).sort());
  });

  it.each(COMMITTED)('%s: well under 250 KB, strict-reader valid, sorted shards, pt metadata, consistent index', async (name) => {
    const dir = join(MODELS, name);
    let size = 0;
    for (const f of await readdir(dir)) size += (await stat(join(dir, f))).size;
    expect(size).toBeLessThan(220_000);

    await withModel(dir, async (m) => {
      let tensorBytes = 0;
      for (const [f, r] of m.readers) {
        expect(r.header.metadata).toEqual({ format: 'pt' });
        const names = r.names(); // data-offset order
        expect(names).toEqual([...names].sort());
        for (const n of names) tensorBytes += r.entry(n).end - r.entry(n).begin;
        expect(f).toMatch(m.shardFiles.length === 1 ? /^model\.safetensors$/ : /^model-\d{5}-of-\d{5}\.safetensors$/);
      }
      if (m.shardFiles.length === 1) {
        expect(m.index).toBeUndefined();
      } else {
        // Shard order follows name order: every name of shard i sorts before those of shard i+1.
        const firstLast = m.shardFiles.map((f) => {
          const ns = m.readers.get(f)!.names();
          return [ns[0]!, ns.at(-1)!];
        });
        for (let i = 1; i < firstLast.length; i++) expect(firstLast[i - 1]![1] < firstLast[i]![0]).toBe(true);
        expect(m.index!.metadata.total_size).toBe(tensorBytes);
        const map = m.index!.weight_map;
        expect(Object.keys(map).sort()).toEqual(m.names());
        for (const [n, f] of Object.entries(map)) expect(f, n).toBe(m.where.get(n));
      }
    });
  });

  it('shapes and dtypes (Llama, ModelOpt)', async () => {
    await withModel(join(MODELS, 'llama-tiny-modelopt'), async (m) => {
      const s = (n: string) => [m.entry(n).dtype, m.entry(n).shape];
      expect(s('model.embed_tokens.weight')).toEqual(['BF16', [64, 128]]);
      expect(s('lm_head.weight')).toEqual(['BF16', [64, 128]]);
      expect(s('model.norm.weight')).toEqual(['BF16', [128]]);
      expect(s('model.layers.1.input_layernorm.weight')).toEqual(['BF16', [128]]);
      expect(s('model.layers.1.post_attention_layernorm.weight')).toEqual(['BF16', [128]]);
      const a = 'model.layers.0.self_attn';
      expect(s(`${a}.q_proj.weight`)).toEqual(['U8', [128, 64]]);
      expect(s(`${a}.q_proj.weight_scale`)).toEqual(['F8_E4M3', [128, 8]]);
      expect(s(`${a}.q_proj.weight_scale_2`)).toEqual(['F32', []]);
      expect(s(`${a}.q_proj.input_scale`)).toEqual(['F32', []]);
      expect(s(`${a}.k_proj.weight`)).toEqual(['U8', [64, 64]]);
      expect(s(`${a}.v_proj.weight_scale`)).toEqual(['F8_E4M3', [64, 8]]);
      expect(s(`${a}.o_proj.weight`)).toEqual(['U8', [128, 64]]);
      expect(s('model.layers.1.mlp.gate_proj.weight')).toEqual(['U8', [192, 64]]);
      expect(s('model.layers.1.mlp.up_proj.weight_scale')).toEqual(['F8_E4M3', [192, 8]]);
      expect(s('model.layers.1.mlp.down_proj.weight')).toEqual(['U8', [128, 96]]);
      expect(s('model.layers.1.mlp.down_proj.weight_scale')).toEqual(['F8_E4M3', [128, 12]]);
      expect(m.names().filter((n) => n.startsWith('lm_head'))).toEqual(['lm_head.weight']);
      expect(m.names()).toHaveLength(3 + 2 * (2 + 7 * 4));

      const c = m.config;
      expect(c).toMatchObject({
        architectures: ['LlamaForCausalLM'],
        model_type: 'llama',
        hidden_size: 128,
        intermediate_size: 192,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 64,
        vocab_size: 64,
        torch_dtype: 'bfloat16',
        tie_word_embeddings: false,
        quantization_config: { quant_method: 'modelopt', quant_algo: 'NVFP4', group_size: 16, exclude_modules: ['lm_head'] },
      });
      const hf = JSON.parse(await readFile(join(m.dir, 'hf_quant_config.json'), 'utf8'));
      expect(hf).toEqual({
        producer: { name: 'modelopt', version: '0.29.0' },
        quantization: { quant_algo: 'NVFP4', kv_cache_quant_algo: null, group_size: 16, exclude_modules: ['lm_head'] },
      });
      for (const f of ['generation_config.json', 'tokenizer_config.json']) JSON.parse(await readFile(join(m.dir, f), 'utf8'));
    });
  });

  it('shapes, dtypes and names (Qwen3-MoE, compressed-tensors, w1/w2/w3)', async () => {
    await withModel(join(MODELS, 'qwen3-moe-tiny-ct'), async (m) => {
      const s = (n: string) => [m.entry(n).dtype, m.entry(n).shape];
      const l = 'model.layers.1';
      expect(s(`${l}.mlp.gate.weight`)).toEqual(['BF16', [3, 128]]);
      expect(s(`${l}.self_attn.q_norm.weight`)).toEqual(['BF16', [64]]);
      expect(s(`${l}.self_attn.k_norm.weight`)).toEqual(['BF16', [64]]);
      expect(s(`${l}.self_attn.q_proj.weight_packed`)).toEqual(['U8', [64, 64]]);
      expect(s(`${l}.self_attn.o_proj.weight_packed`)).toEqual(['U8', [128, 32]]);
      expect(s(`${l}.self_attn.o_proj.weight_scale`)).toEqual(['F8_E4M3', [128, 4]]);
      expect(s(`${l}.mlp.experts.2.w1.weight_packed`)).toEqual(['U8', [64, 64]]);
      expect(s(`${l}.mlp.experts.2.w3.weight_scale`)).toEqual(['F8_E4M3', [64, 8]]);
      expect(s(`${l}.mlp.experts.2.w2.weight_packed`)).toEqual(['U8', [128, 32]]);
      expect(s(`${l}.mlp.experts.2.w2.weight_global_scale`)).toEqual(['F32', [1]]);
      expect(s(`${l}.mlp.experts.2.w2.input_global_scale`)).toEqual(['F32', [1]]);
      expect(m.names().some((n) => n.includes('_proj') && n.includes('experts'))).toBe(false);
      expect(m.names().some((n) => n.endsWith('.weight_scale_2') || n.endsWith('.input_scale'))).toBe(false);
      expect(m.names().filter((n) => n.startsWith('model.layers.0.mlp.gate'))).toEqual(['model.layers.0.mlp.gate.weight']);

      expect(m.config).toMatchObject({
        architectures: ['Qwen3MoeForCausalLM'],
        model_type: 'qwen3_moe',
        num_experts: 3,
        num_experts_per_tok: 2,
        moe_intermediate_size: 64,
        hidden_size: 128,
        head_dim: 64,
      });
      expect(m.config.quantization_config).toEqual({
        quant_method: 'compressed-tensors',
        format: 'nvfp4-pack-quantized',
        config_groups: {
          group_0: {
            targets: ['Linear'],
            weights: { num_bits: 4, type: 'float', strategy: 'tensor_group', group_size: 16, symmetric: true, dynamic: false },
            input_activations: { num_bits: 4, type: 'float', strategy: 'tensor_group', group_size: 16, dynamic: 'local', symmetric: true },
          },
        },
        ignore: ['lm_head', 're:.*mlp.gate$'],
        quantization_status: 'compressed',
      });
      expect((await readdir(m.dir)).includes('hf_quant_config.json')).toBe(false);
    });
    await withModel(join(MODELS, 'qwen3-moe-tiny-modelopt'), async (m) => {
      expect(m.config.quantization_config.exclude_modules).toEqual(['lm_head', 'model.layers.*.mlp.gate']);
      expect(m.entry('model.layers.0.mlp.experts.0.down_proj.weight').shape).toEqual([128, 32]);
    });
  });

  it.each(COMMITTED)('%s: fused groups share global and input scales; other groups differ', async (name) => {
    await withModel(join(MODELS, name), async (m) => {
      const groups = fusedGroups(m);
      const moe = name.startsWith('qwen3');
      expect(groups.length).toBe(2 * (moe ? 2 + 2 * 3 : 4));
      const seen = new Set<number>();
      for (const g of groups) {
        const ws = await Promise.all(g.map((p) => globalScale(m, p)));
        const is = await Promise.all(g.map((p) => inputScale(m, p)));
        expect(new Set(ws).size, g.join(', ')).toBe(1);
        expect(new Set(is).size, g.join(', ')).toBe(1);
        expect(ws[0]! > 0 && Number.isFinite(ws[0]!)).toBe(true);
        expect(ws[0]! >= 2 ** -8 && ws[0]! < 2 ** -5).toBe(true);
        expect(seen.has(ws[0]!), `${g[0]} reuses a global scale`).toBe(false);
        seen.add(ws[0]!);
      }
      if (moe) {
        // Sanity of the grouping itself: one expert's gate/up form a group of two.
        expect(groups).toContainEqual(
          name.endsWith('-ct')
            ? ['model.layers.1.mlp.experts.2.w1', 'model.layers.1.mlp.experts.2.w3']
            : ['model.layers.1.mlp.experts.2.gate_proj', 'model.layers.1.mlp.experts.2.up_proj'],
        );
      }
    });
  });

  it.each([
    ['llama-tiny-modelopt', 'llama-tiny-ct'],
    ['qwen3-moe-tiny-modelopt', 'qwen3-moe-tiny-ct'],
  ])('%s vs %s: same codes and block scales, CT global scales are float32 reciprocals', async (mo, ct) => {
    await withModel(join(MODELS, mo), (a) =>
      withModel(join(MODELS, ct), async (b) => {
        const rename = (p: string) => p.replace(/\.gate_proj$/, '.w1').replace(/\.up_proj$/, '.w3').replace(/\.down_proj$/, '.w2');
        const ctName = (p: string) => (p.includes('.experts.') ? rename(p) : p);
        const prefixes = quantizedPrefixes(a);
        expect(prefixes.map(ctName).sort()).toEqual(quantizedPrefixes(b).sort());
        for (const p of prefixes) {
          const q = ctName(p);
          expect((await a.bytes(`${p}.weight`)).equals(await b.bytes(`${q}.weight_packed`)), p).toBe(true);
          expect((await a.bytes(`${p}.weight_scale`)).equals(await b.bytes(`${q}.weight_scale`)), p).toBe(true);
          const ws2 = await a.f32(`${p}.weight_scale_2`);
          const wgs = await b.f32(`${q}.weight_global_scale`);
          expect(wgs).toBe(Math.fround(1 / ws2));
          expect(Math.fround(1 / wgs)).toBe(ws2);
          const is = await a.f32(`${p}.input_scale`);
          const igs = await b.f32(`${q}.input_global_scale`);
          expect(igs).toBe(Math.fround(1 / is));
          expect(Math.fround(1 / igs)).toBe(is);
        }
        for (const n of a.names().filter((x) => a.entry(x).dtype === 'BF16')) {
          expect((await a.bytes(n)).equals(await b.bytes(n)), n).toBe(true);
        }
      }),
    );
  });

  it("qwen3-moe-tiny-modelopt: a layer's experts span two shards", async () => {
    await withModel(join(MODELS, 'qwen3-moe-tiny-modelopt'), async (m) => {
      expect(m.shardFiles).toHaveLength(2);
      const filesOfLayer = new Map<string, Set<string>>();
      for (const [n, f] of Object.entries(m.index!.weight_map)) {
        const x = /^model\.layers\.(\d+)\.mlp\.experts\./.exec(n);
        if (x) filesOfLayer.set(x[1]!, (filesOfLayer.get(x[1]!) ?? new Set()).add(f));
      }
      expect(filesOfLayer.size).toBe(2);
      const split = [...filesOfLayer].filter(([, fs]) => fs.size === 2).map(([l]) => l);
      expect(split.length).toBeGreaterThanOrEqual(1);
    });
  });

  it('block scales are normal E4M3 in 0x20..0x5F, or 0x00 with all-zero codes in ~5% of blocks', async () => {
    await withModel(join(MODELS, 'llama-tiny-modelopt'), async (m) => {
      let blocks = 0;
      let zeroBlocks = 0;
      let lo = 255;
      let hi = 0;
      for (const p of quantizedPrefixes(m)) {
        const s = await m.bytes(`${p}.weight_scale`);
        const w = await m.bytes(`${p}.weight`);
        expect(w.length).toBe(s.length * 8);
        for (let b = 0; b < s.length; b++) {
          blocks++;
          const codes = w.subarray(8 * b, 8 * b + 8);
          if (s[b] === 0) {
            zeroBlocks++;
            expect(codes.every((c) => c === 0)).toBe(true);
          } else {
            expect(s[b]! >= 0x20 && s[b]! <= 0x5f).toBe(true);
            lo = Math.min(lo, s[b]!);
            hi = Math.max(hi, s[b]!);
          }
        }
      }
      expect([lo, hi]).toEqual([0x20, 0x5f]);
      expect(zeroBlocks / blocks).toBeGreaterThan(0.03);
      expect(zeroBlocks / blocks).toBeLessThan(0.08);
    });
  });

  it('BF16 tensors hold finite values of the expected magnitude', async () => {
    await withModel(join(MODELS, 'qwen3-moe-tiny-modelopt'), async (m) => {
      const values = async (n: string) => {
        const b = await m.bytes(n);
        const out: number[] = [];
        const tmpBuf = Buffer.alloc(4);
        for (let i = 0; i < b.length; i += 2) {
          tmpBuf.writeUInt16LE(0, 0);
          tmpBuf.writeUInt16LE(b.readUInt16LE(i), 2);
          out.push(tmpBuf.readFloatLE(0));
        }
        return out;
      };
      for (const v of await values('model.layers.0.input_layernorm.weight')) expect(v >= 0.5 && v < 2).toBe(true);
      const emb = await values('model.embed_tokens.weight');
      for (const v of emb) expect(Math.abs(v) >= 2 ** -9 && Math.abs(v) < 2 ** -2).toBe(true);
      expect(emb.some((v) => v < 0) && emb.some((v) => v > 0)).toBe(true);
    });
  });
});

describe('generateModel', () => {
  it('a mid-size model (llama-tiny, 8 layers, H 1024, 3 shards) is independent of the chunk size', async () => {
    const opts: GenerateOptions = { preset: 'llama-tiny', flavour: 'modelopt', layers: 8, hiddenSize: 1024, shards: 3, seed: 7 };
    const a = freshDir('mid');
    const b = freshDir('mid-chunked');
    const r = await generateModel(a, opts);
    // 1000 bytes: not a multiple of any row length, so rows and tensors straddle chunks.
    await generateModel(b, { ...opts, chunkBytes: 1000 });
    await expectSameFiles(b, a);
    expect(r.tensorCount).toBe(3 + 8 * (2 + 7 * 4));
    expect(r.files).toEqual([
      'config.json',
      'generation_config.json',
      'hf_quant_config.json',
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
      'model.safetensors.index.json',
      'tokenizer_config.json',
    ]);
    await withModel(a, async (m) => {
      expect(m.index!.metadata.total_size).toBe(r.tensorBytes);
      expect(m.entry('model.layers.7.self_attn.o_proj.weight').shape).toEqual([1024, 64]);
      expect(m.entry('model.layers.7.mlp.down_proj.weight_scale').shape).toEqual([1024, 12]);
      expect(m.config.hidden_size).toBe(1024);
      // Balanced: no shard holds more than half of the data.
      for (const f of m.shardFiles) expect((await stat(join(a, f))).size).toBeLessThan(r.tensorBytes / 2);
    });
  });

  it('the seed changes the bytes; zeros: false leaves no zero blocks', async () => {
    const a = freshDir('seed');
    await generateModel(a, { arch: 'qwen3-moe', flavour: 'modelopt', seed: 2, zeros: false, layers: 1 });
    await withModel(a, (m) =>
      withModel(join(MODELS, 'qwen3-moe-tiny-modelopt'), async (ref) => {
        const n = 'model.layers.0.mlp.experts.1.up_proj';
        expect((await m.bytes(`${n}.weight`)).equals(await ref.bytes(`${n}.weight`))).toBe(false);
        expect(await m.f32(`${n}.weight_scale_2`)).not.toBe(await ref.f32(`${n}.weight_scale_2`));
        for (const p of quantizedPrefixes(m)) expect((await m.bytes(`${p}.weight_scale`)).includes(0)).toBe(false);
        expect(m.config.num_hidden_layers).toBe(1);
      }),
    );
  });

  it('refuses a non-empty directory and bad options, leaving nothing behind', async () => {
    const d = freshDir('busy');
    await mkdir(d);
    await writeFile(join(d, 'keep.txt'), 'x');
    await expect(generateModel(d, { preset: 'llama-tiny', flavour: 'modelopt' })).rejects.toThrow(/non-empty/);
    expect(await readdir(d)).toEqual(['keep.txt']);

    const e = freshDir('bad');
    await expect(generateModel(e, { preset: 'llama-tiny', flavour: 'nvfp4' as never })).rejects.toThrow(/flavour/);
    await expect(generateModel(e, { preset: 'llama-tiny', flavour: 'modelopt', hidden: 3 } as never)).rejects.toThrow(/unknown option/);
    await expect(generateModel(e, { preset: 'llama-tiny', flavour: 'modelopt', hiddenSize: 96 })).rejects.toThrow(/multiples of 64/);
    await expect(generateModel(e, { preset: 'llama-8b', arch: 'qwen3-moe', flavour: 'modelopt' })).rejects.toThrow(/llama/);
    await expect(generateModel(e, { arch: 'llama', flavour: 'modelopt', experts: 4 })).rejects.toThrow(/qwen3-moe models only/);
    await expect(generateModel(e, { arch: 'llama', flavour: 'modelopt', intermediateSize: 40, unaligned: true })).rejects.toThrow(/group size/);
    await expect(stat(e)).rejects.toThrow(/ENOENT/);
  });

  it('unaligned: true allows shapes that are not multiples of 64 (for padding tests)', async () => {
    const d = freshDir('unaligned');
    await generateModel(d, { arch: 'qwen3-moe', flavour: 'compressed-tensors', intermediateSize: 48, layers: 1, unaligned: true });
    await withModel(d, async (m) => {
      expect(m.entry('model.layers.0.mlp.experts.0.gate_proj.weight_packed').shape).toEqual([48, 64]);
      expect(m.entry('model.layers.0.mlp.experts.0.down_proj.weight_packed').shape).toEqual([128, 24]);
      expect(m.entry('model.layers.0.mlp.experts.0.down_proj.weight_scale').shape).toEqual([128, 3]);
    });
  });

  it('presets: every quantized N and K is a multiple of 64; sizes as advertised', () => {
    const sizes: Record<string, number> = {};
    for (const preset of Object.keys(PRESETS) as (keyof typeof PRESETS)[]) {
      const plan = planTensors(resolveOptions({ preset, flavour: 'modelopt' }));
      for (const t of plan) {
        if (t.name.endsWith('.weight_scale')) {
          const [n, groups] = t.shape as [number, number];
          expect(n % 64, t.name).toBe(0);
          expect((groups * 16) % 64, t.name).toBe(0);
        }
      }
      sizes[preset] = plan.reduce((a, t) => a + t.bytes, 0);
    }
    expect(sizes['llama-8b']! / 1e9).toBeGreaterThan(5.5);
    expect(sizes['llama-8b']! / 1e9).toBeLessThan(6.5);
    expect(sizes['qwen3-moe-small']! / 1e6).toBeGreaterThan(100);
    expect(sizes['qwen3-moe-small']! / 1e6).toBeLessThan(1000);
    expect(PRESETS['llama-8b']).toMatchObject({ hiddenSize: 4096, intermediateSize: 14336, layers: 32, heads: 32, kvHeads: 8, headDim: 128, vocabSize: 128256 });
  });

  it('global scale table: 2^-8 .. 2^-6 times small factors, reciprocals round-trip, neighbours differ', () => {
    expect(GLOBAL_SCALE_TABLE.length).toBeGreaterThan(30);
    for (let i = 0; i < GLOBAL_SCALE_TABLE.length; i++) {
      const x = GLOBAL_SCALE_TABLE[i]!;
      expect(x).toBe(Math.fround(x));
      expect(x >= 2 ** -8 && x < 2 ** -5).toBe(true);
      expect(Math.fround(1 / Math.fround(1 / x))).toBe(x);
      if (i > 0) expect(x).not.toBe(GLOBAL_SCALE_TABLE[i - 1]);
    }
  });

  it('splitGlobals: the parts of every fused group get different global scales, and nothing else changes', async () => {
    const scalars = async (t: { chunks(): Iterable<Uint8Array> }) => Buffer.concat([...t.chunks()]).readFloatLE(0);
    for (const preset of ['llama-tiny', 'qwen3-moe-tiny'] as const) {
      const plain = planTensors(resolveOptions({ preset, flavour: 'modelopt' }));
      const split = planTensors(resolveOptions({ preset, flavour: 'modelopt', splitGlobals: true }));
      expect(split.map((t) => t.name)).toEqual(plain.map((t) => t.name));
      const ws2 = new Map<string, number>();
      for (const [i, t] of split.entries()) {
        if (t.name.endsWith('.weight_scale_2')) {
          ws2.set(t.name.slice(0, -'.weight_scale_2'.length), await scalars(t));
          continue;
        }
        // Codes, block scales, input scales and unquantized tensors: the same bytes.
        expect(Buffer.concat([...t.chunks()]).equals(Buffer.concat([...plain[i]!.chunks()])), t.name).toBe(true);
      }
      const groups = [...ws2.keys()].flatMap((p) => {
        const parent = p.slice(0, p.lastIndexOf('.'));
        if (p.endsWith('.q_proj')) return [['q_proj', 'k_proj', 'v_proj'].map((n) => `${parent}.${n}`)];
        if (p.endsWith('.gate_proj')) return [['gate_proj', 'up_proj'].map((n) => `${parent}.${n}`)];
        return [];
      });
      expect(groups.length).toBeGreaterThan(preset === 'qwen3-moe-tiny' ? 6 : 3);
      for (const g of groups) expect(new Set(g.map((p) => ws2.get(p))).size, g.join(', ')).toBe(g.length);
    }
    expect(parseCliArgs(['out', '--preset', 'llama-tiny', '--flavour', 'modelopt', '--split-globals'])).toMatchObject({ options: { splitGlobals: true } });
  });

  it('assignShards keeps name order, fills every shard, and handles one tensor per shard', () => {
    const plan = [10, 1000, 1, 1, 1, 5000, 3].map((bytes, i) => ({ name: `t${i}`, bytes }));
    for (let n = 1; n <= plan.length; n++) {
      const shards = assignShards(plan, n);
      expect(shards).toHaveLength(n);
      expect(shards.every((s) => s.length > 0)).toBe(true);
      expect(shards.flat()).toEqual(plan);
    }
    expect(() => assignShards(plan, 8)).toThrow(/cannot split/);
  });
});

describe('CLI', () => {
  const run = promisify(execFile);

  it('writes a model and prints one summary line; refuses to overwrite', async () => {
    expect(existsSync(GENERATOR), `${GENERATOR} is missing: run npm run build:tools (npm test does)`).toBe(true);
    const d = freshDir('cli');
    const { stdout } = await run(process.execPath, [GENERATOR, d, '--preset', 'llama-tiny', '--flavour', 'modelopt', '--layers', '1', '--set', 'vocabSize=32']);
    expect(stdout.trim().split('\n')).toHaveLength(1);
    expect(stdout).toContain('1 layers');
    await withModel(d, async (m) => {
      expect(m.entry('model.embed_tokens.weight').shape).toEqual([32, 128]);
    });
    const err = await run(process.execPath, [GENERATOR, d, '--preset', 'llama-tiny', '--flavour', 'modelopt']).catch((e) => e);
    expect(err.code).toBe(1);
    expect(err.stderr).toMatch(/refusing to write into non-empty directory/);
  });

  it('parses its arguments into generateModel options', () => {
    expect(parseCliArgs(['out', '--preset', 'llama-8b', '--flavour', 'modelopt', '--shards', '4', '--layers', '2', '--seed', '9'])).toEqual({
      dir: 'out',
      options: { preset: 'llama-8b', flavour: 'modelopt', shards: 4, seed: 9, expertNames: 'proj', zeros: true, layers: 2 },
    });
    expect(() => parseCliArgs(['out', '--shards', 'two'])).toThrow(/--shards/);
    expect(() => parseCliArgs(['out', '--bogus'])).toThrow();
    expect(() => parseCliArgs([])).toThrow(/output directory/);
  });
});
