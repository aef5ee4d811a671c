// Synthetic MXFP4 checkpoints (FORMAT.md section 5) for tests and benchmarks: gpt-oss's own
// layout (experts as `…_blocks` U8 [E, N, K/32, 16], `…_scales` U8 E8M0 [E, N, K/32] and
// BF16 `…_bias`, every other tensor BF16, `quant_method: mxfp4`) and compressed-tensors
// `mxfp4-pack-quantized` (`weight_packed` U8 [N, K/2] + `weight_scale` U8 [N, K/32], dense
// attention and per-expert MoE). Deterministic like generate.ts: each tensor's bytes come from
// its own keystream (content.ts), so the same options give byte-identical files.
//
//   node build/tools/fixture-generator/cli.js <out-dir> --preset gpt-oss-tiny [--shards N] [--layers N]
import { bf16Chunks, byteStream, type Bf16Kind } from './content.js';
import { DEFAULT_CHUNK_BYTES, sortedJson, writeCheckpoint } from './generate.js';
import type { GenerateResult, PlannedTensorWithContent } from './types.js';

export type Mxfp4PresetName = 'gpt-oss-tiny' | 'gpt-oss-20b' | 'ct-mxfp4-tiny';

export interface Mxfp4Dims {
  family: 'gpt-oss' | 'compressed-tensors';
  hiddenSize: number;
  /** Per-expert intermediate size. */
  intermediateSize: number;
  experts: number;
  expertsPerTok: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocabSize: number;
}

// gpt-oss-tiny keeps gpt-oss's awkward sizes in miniature: H = 160 (5 groups of 32, not a
// multiple of 64) and I = 96 pad to Hp = 256 and Ip = 128 under vLLM's Marlin MoE rule, so
// padded rows, padded K and padded bias entries all occur. gpt-oss-20b is the published
// model's shapes (openai/gpt-oss-20b config.json as transcribed in docs/FORMAT.md 5.2),
// full vocabulary: about 13.8 GB.
export const MXFP4_PRESETS: Readonly<Record<Mxfp4PresetName, Readonly<Mxfp4Dims>>> = Object.freeze({
  'gpt-oss-tiny': Object.freeze({ family: 'gpt-oss', hiddenSize: 160, intermediateSize: 96, experts: 3, expertsPerTok: 2, layers: 2, heads: 2, kvHeads: 1, headDim: 32, vocabSize: 64 }),
  'gpt-oss-20b': Object.freeze({ family: 'gpt-oss', hiddenSize: 2880, intermediateSize: 2880, experts: 32, expertsPerTok: 4, layers: 24, heads: 64, kvHeads: 8, headDim: 64, vocabSize: 201088 }),
  'ct-mxfp4-tiny': Object.freeze({ family: 'compressed-tensors', hiddenSize: 128, intermediateSize: 64, experts: 3, expertsPerTok: 2, layers: 2, heads: 2, kvHeads: 1, headDim: 64, vocabSize: 64 }),
});

export const isMxfp4Preset = (name: string): name is Mxfp4PresetName => Object.hasOwn(MXFP4_PRESETS, name);

export interface Mxfp4Options {
  preset: Mxfp4PresetName;
  shards?: number;
  seed?: number;
  /** Overrides the preset's layer count. */
  layers?: number;
  /** Overrides the preset's vocabulary size. */
  vocabSize?: number;
  chunkBytes?: number;
}

/**
 * E8M0 scale bytes: 2^-9 .. 2^1 (bytes 118..128), the range real MXFP4 checkpoints use, and
 * about 3% byte 0x00 (the kernel reads it as 0, a source reader as 2^-127: both give ~0).
 */
function* e8m0Chunks(seed: number, label: string, count: number, chunkBytes: number): Generator<Buffer> {
  const s = byteStream(seed, `${label}/e8m0`);
  for (let done = 0; done < count; done += chunkBytes) {
    const buf = s.next(Math.min(chunkBytes, count - done));
    for (let i = 0; i < buf.length; i++) {
      const b = buf[i]!;
      buf[i] = b < 8 ? 0 : 118 + (b % 11);
    }
    yield buf;
  }
}

function* randomChunks(seed: number, label: string, count: number, chunkBytes: number): Generator<Buffer> {
  const s = byteStream(seed, `${label}/codes`);
  for (let done = 0; done < count; done += chunkBytes) yield s.next(Math.min(chunkBytes, count - done));
}

export function planMxfp4Tensors(dims: Mxfp4Dims, seed: number, chunkBytes: number): PlannedTensorWithContent[] {
  const { hiddenSize: H, intermediateSize: I, experts: E, heads, kvHeads, headDim, vocabSize: V, layers: L } = dims;
  if (H % 32 !== 0 || I % 32 !== 0) throw new Error(`hidden ${H} and intermediate ${I} must be multiples of 32 (the MXFP4 group size)`);
  const plan: PlannedTensorWithContent[] = [];
  const size = (shape: number[], bytes: number) => shape.reduce((a, b) => a * b, bytes);
  const bf16 = (name: string, shape: number[], kind: Bf16Kind = 'weight') => {
    const elements = size(shape, 1);
    plan.push({ name, dtype: 'BF16', shape, bytes: 2 * elements, chunks: () => bf16Chunks({ seed, label: name, elements, kind, chunkBytes }) });
  };
  const u8 = (name: string, shape: number[], chunks: (count: number) => Iterable<Uint8Array>) => {
    const count = size(shape, 1);
    plan.push({ name, dtype: 'U8', shape, bytes: count, chunks: () => chunks(count) });
  };
  const codes = (name: string) => (count: number) => randomChunks(seed, name, count, chunkBytes);
  const scales = (name: string) => (count: number) => e8m0Chunks(seed, name, count, chunkBytes);
  const gptOss = dims.family === 'gpt-oss';

  bf16('model.embed_tokens.weight', [V, H]);
  bf16('lm_head.weight', [V, H]);
  bf16('model.norm.weight', [H], 'norm');
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    bf16(`${p}.input_layernorm.weight`, [H], 'norm');
    bf16(`${p}.post_attention_layernorm.weight`, [H], 'norm');
    const attn: [string, number, number][] = [
      ['q_proj', heads * headDim, H],
      ['k_proj', kvHeads * headDim, H],
      ['v_proj', kvHeads * headDim, H],
      ['o_proj', H, heads * headDim],
    ];
    for (const [proj, n, k] of attn) {
      const x = `${p}.self_attn.${proj}`;
      if (gptOss) {
        // gpt-oss keeps attention in BF16, with biases (attention_bias: true).
        bf16(`${x}.weight`, [n, k]);
        bf16(`${x}.bias`, [n]);
      } else {
        u8(`${x}.weight_packed`, [n, k / 2], codes(x));
        u8(`${x}.weight_scale`, [n, k / 32], scales(x));
      }
    }
    if (gptOss) {
      bf16(`${p}.self_attn.sinks`, [heads]);
      bf16(`${p}.mlp.router.weight`, [E, H]);
      bf16(`${p}.mlp.router.bias`, [E]);
      const q = `${p}.mlp.experts`;
      // gate_up rows interleaved (2j gate, 2j+1 up): for a generator only a matter of labels.
      u8(`${q}.gate_up_proj_blocks`, [E, 2 * I, H / 32, 16], codes(`${q}.gate_up_proj`));
      u8(`${q}.gate_up_proj_scales`, [E, 2 * I, H / 32], scales(`${q}.gate_up_proj`));
      bf16(`${q}.gate_up_proj_bias`, [E, 2 * I]);
      u8(`${q}.down_proj_blocks`, [E, H, I / 32, 16], codes(`${q}.down_proj`));
      u8(`${q}.down_proj_scales`, [E, H, I / 32], scales(`${q}.down_proj`));
      bf16(`${q}.down_proj_bias`, [E, H]);
    } else {
      bf16(`${p}.mlp.gate.weight`, [E, H]);
      for (let e = 0; e < E; e++) {
        for (const [proj, n, k] of [['gate_proj', I, H], ['up_proj', I, H], ['down_proj', H, I]] as const) {
          const x = `${p}.mlp.experts.${e}.${proj}`;
          u8(`${x}.weight_packed`, [n, k / 2], codes(x));
          u8(`${x}.weight_scale`, [n, k / 32], scales(x));
        }
      }
    }
  }
  plan.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return plan;
}

/** config.json's quantization_config as each family publishes it (FORMAT.md 5.2, 5.3). */
export function mxfp4QuantizationConfig(dims: Mxfp4Dims): Record<string, unknown> {
  if (dims.family === 'gpt-oss') {
    return { modules_to_not_convert: ['model.layers.*.self_attn', 'model.layers.*.mlp.router', 'model.embed_tokens', 'lm_head'], quant_method: 'mxfp4' };
  }
  return {
    quant_method: 'compressed-tensors',
    format: 'mxfp4-pack-quantized',
    config_groups: { group_0: { targets: ['Linear'], weights: { num_bits: 4, type: 'float', strategy: 'group', group_size: 32, symmetric: true, dynamic: false, scale_dtype: 'torch.uint8' } } },
    ignore: ['lm_head', 're:.*mlp.gate$'],
    quantization_status: 'compressed',
  };
}

function configOf(d: Mxfp4Dims): Record<string, unknown> {
  const common = {
    head_dim: d.headDim,
    hidden_size: d.hiddenSize,
    num_attention_heads: d.heads,
    num_hidden_layers: d.layers,
    num_key_value_heads: d.kvHeads,
    vocab_size: d.vocabSize,
    torch_dtype: 'bfloat16',
    tie_word_embeddings: false,
    rms_norm_eps: 1e-5,
    transformers_version: '4.55.0',
    quantization_config: mxfp4QuantizationConfig(d),
  };
  if (d.family === 'gpt-oss') {
    return {
      architectures: ['GptOssForCausalLM'],
      model_type: 'gpt_oss',
      intermediate_size: d.intermediateSize,
      num_local_experts: d.experts,
      num_experts_per_tok: d.expertsPerTok,
      experts_per_token: d.expertsPerTok,
      attention_bias: true,
      hidden_act: 'silu',
      swiglu_limit: 7.0,
      sliding_window: 128,
      layer_types: [...Array(d.layers).keys()].map((i) => (i % 2 === 0 ? 'sliding_attention' : 'full_attention')),
      rope_theta: 150000,
      max_position_embeddings: 131072,
      ...common,
    };
  }
  return {
    architectures: ['Qwen3MoeForCausalLM'],
    model_type: 'qwen3_moe',
    moe_intermediate_size: d.intermediateSize,
    num_experts: d.experts,
    num_experts_per_tok: d.expertsPerTok,
    hidden_act: 'silu',
    max_position_embeddings: 4096,
    ...common,
  };
}

/** Writes a synthetic MXFP4 checkpoint into `dir` (which must not exist or be empty). */
export async function generateMxfp4Model(dir: string, options: Mxfp4Options): Promise<GenerateResult> {
  if (!isMxfp4Preset(options.preset)) throw new Error(`unknown MXFP4 preset ${JSON.stringify(options.preset)} (known: ${Object.keys(MXFP4_PRESETS).join(', ')})`);
  const dims: Mxfp4Dims = { ...MXFP4_PRESETS[options.preset] };
  if (options.layers !== undefined) dims.layers = options.layers;
  if (options.vocabSize !== undefined) dims.vocabSize = options.vocabSize;
  const plan = planMxfp4Tensors(dims, options.seed ?? 1, options.chunkBytes ?? DEFAULT_CHUNK_BYTES);
  const side = {
    'config.json': sortedJson(configOf(dims)),
    'generation_config.json': sortedJson({ bos_token_id: 1, eos_token_id: 2, transformers_version: '4.55.0' }),
  };
  return writeCheckpoint(dir, plan, options.shards ?? 1, side);
}
