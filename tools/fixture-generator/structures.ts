// Fixtures for the checkpoint structures published NVFP4 models use beyond the per-module
// layout generate.ts makes (issue 11; docs/FORMAT.md section 6.1-6.3 says where each was
// read): ModelOpt MIXED_PRECISION (NVFP4 and W4A16_NVFP4 experts beside FP8 attention, the
// per-layer table in hf_quant_config.json or in config.json), W4A16_NVFP4 (no input scales),
// Llama-4's fused 3-D experts (stored K-major, one global per tensor) and Nemotron-H's
// non-gated experts (per expert, batched 3-D, shared experts). Small and deterministic: the
// content comes from content.ts's streams, so the same options give the same bytes.
import { bf16Chunks, blockScaleChunks, codeChunks, f32Scalar, GROUP_SIZE, type Bf16Kind } from './content.js';
import { GLOBAL_SCALE_TABLE, sortedJson, writeCheckpoint } from './generate.js';
import type { GenerateResult, PlannedTensorWithContent } from './types.js';

export type StructureName = 'mixed-precision' | 'w4a16' | 'llama4' | 'nemotron-h';
export const STRUCTURES: readonly StructureName[] = Object.freeze(['mixed-precision', 'w4a16', 'llama4', 'nemotron-h']);

export interface StructureOptions {
  seed?: number;
  shards?: number;
  /**
   * mixed-precision only: where the quantization config lives. 'hf_quant_config' (default):
   * hf_quant_config.json only, config.json has no quantization_config (older exports);
   * 'config': config.json's quantization_config as ModelOpt's convert_hf_quant_config_format
   * writes it (quantized_layers kept verbatim), and hf_quant_config.json beside it.
   */
  algoIn?: 'hf_quant_config' | 'config';
}

// Tiny dimensions: H a multiple of 128 and every N, K a multiple of 64 (layout v1 applies).
const H = 128;
const I = 64;
const HEAD = 64;
const VOCAB = 64;
const CHUNK = 1 << 24;

type Planned = Omit<PlannedTensorWithContent, 'bytes'>;

interface Ctx {
  seed: number;
  plan: Planned[];
  /** Next global / input scale (each call a new table entry, so neighbours differ). */
  scale(): number;
}

/** Section 1's content of one expert of a 3-D tensor (N-major [n, k/2] codes and [n, k/16] scales). */
export function expertContent(seed: number, tensor: string, expert: number, n: number, k: number): { codes: Buffer; scales: Buffer } {
  const c = { seed, label: `${tensor}[${expert}]`, n, k, zeroBlocks: true, chunkBytes: CHUNK };
  return { codes: Buffer.concat([...codeChunks(c)]), scales: Buffer.concat([...blockScaleChunks(c)]) };
}

/** [rows, cols] bytes -> [cols, rows]. */
function transpose(src: Buffer, rows: number, cols: number): Buffer {
  const out = Buffer.alloc(src.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = src[r * cols + c]!;
  return out;
}

const scalar = (name: string, v: number): Planned => ({ name, dtype: 'F32', shape: [], chunks: () => f32Scalar(v) });

function bf16(ctx: Ctx, name: string, shape: number[], kind: Bf16Kind): void {
  const elements = shape.reduce((a, b) => a * b, 1);
  ctx.plan.push({ name, dtype: 'BF16', shape, chunks: () => bf16Chunks({ seed: ctx.seed, label: name, elements, kind, chunkBytes: CHUNK }) });
}

/** A 2-D ModelOpt NVFP4 linear; `global` shared within a fused group; no input scale for W4A16. */
function nvfp4(ctx: Ctx, prefix: string, n: number, k: number, global: number, input: number | undefined): void {
  const c = { seed: ctx.seed, label: prefix, n, k, zeroBlocks: true, chunkBytes: CHUNK };
  ctx.plan.push({ name: `${prefix}.weight`, dtype: 'U8', shape: [n, k / 2], chunks: () => codeChunks(c) });
  ctx.plan.push({ name: `${prefix}.weight_scale`, dtype: 'F8_E4M3', shape: [n, k / GROUP_SIZE], chunks: () => blockScaleChunks(c) });
  ctx.plan.push(scalar(`${prefix}.weight_scale_2`, global));
  if (input !== undefined) ctx.plan.push(scalar(`${prefix}.input_scale`, input));
}

/** A ModelOpt FP8 per-tensor linear: F8_E4M3 [N, K] weight, F32 weight_scale and input_scale. */
function fp8(ctx: Ctx, prefix: string, n: number, k: number): void {
  // Non-negative E4M3 bytes (no NaN): only passed through, never decoded.
  const c = { seed: ctx.seed, label: `${prefix}/fp8`, n, k: k * GROUP_SIZE, zeroBlocks: false, chunkBytes: CHUNK };
  ctx.plan.push({ name: `${prefix}.weight`, dtype: 'F8_E4M3', shape: [n, k], chunks: () => blockScaleChunks(c) });
  ctx.plan.push(scalar(`${prefix}.weight_scale`, ctx.scale()));
  ctx.plan.push(scalar(`${prefix}.input_scale`, ctx.scale()));
}

/**
 * A 3-D expert tensor: E experts of N x K. 'param' names (Llama-4: `X`, `X_weight_scale`,
 * `X_weight_scale_2`, `X_input_scale`), 'module' names (`X.weight`, `X.weight_scale`, …).
 * K-major stores each expert transposed ([K/2, N], [K/16, N]), as ModelOpt exports Llama-4.
 */
function experts3d(ctx: Ctx, x: string, e: number, n: number, k: number, kMajor: boolean, naming: 'param' | 'module'): void {
  const w = naming === 'param' ? x : `${x}.weight`;
  const suffix = naming === 'param' ? '_' : '.';
  const parts = [...Array(e).keys()].map((i) => expertContent(ctx.seed, x, i, n, k));
  const codes = parts.map((p) => (kMajor ? transpose(p.codes, n, k / 2) : p.codes));
  const scales = parts.map((p) => (kMajor ? transpose(p.scales, n, k / GROUP_SIZE) : p.scales));
  const shape = (inner: number) => (kMajor ? [e, inner, n] : [e, n, inner]);
  ctx.plan.push({ name: w, dtype: 'U8', shape: shape(k / 2), chunks: () => codes });
  ctx.plan.push({ name: `${x}${suffix}weight_scale`, dtype: 'F8_E4M3', shape: shape(k / GROUP_SIZE), chunks: () => scales });
  ctx.plan.push(scalar(`${x}${suffix}weight_scale_2`, ctx.scale()));
  ctx.plan.push(scalar(`${x}${suffix}input_scale`, ctx.scale()));
}

function llamaLayerNorms(ctx: Ctx, p: string): void {
  bf16(ctx, `${p}.input_layernorm.weight`, [H], 'norm');
  bf16(ctx, `${p}.post_attention_layernorm.weight`, [H], 'norm');
}

function nvfp4Attention(ctx: Ctx, p: string, heads: number, input: boolean): void {
  const qkv = ctx.scale();
  const inp = input ? ctx.scale() : undefined;
  nvfp4(ctx, `${p}.self_attn.q_proj`, heads * HEAD, H, qkv, inp);
  nvfp4(ctx, `${p}.self_attn.k_proj`, HEAD, H, qkv, inp);
  nvfp4(ctx, `${p}.self_attn.v_proj`, HEAD, H, qkv, inp);
  nvfp4(ctx, `${p}.self_attn.o_proj`, H, heads * HEAD, ctx.scale(), input ? ctx.scale() : undefined);
}

function nvfp4GatedMlp(ctx: Ctx, p: string, inter: number, input: boolean): void {
  const g = ctx.scale();
  const inp = input ? ctx.scale() : undefined;
  nvfp4(ctx, `${p}.gate_proj`, inter, H, g, inp);
  nvfp4(ctx, `${p}.up_proj`, inter, H, g, inp);
  nvfp4(ctx, `${p}.down_proj`, H, inter, ctx.scale(), input ? ctx.scale() : undefined);
}

const common = {
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_size: H,
  max_position_embeddings: 256,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.51.3',
  vocab_size: VOCAB,
};

const nvfp4Config = (algo: 'NVFP4' | 'W4A16_NVFP4', exclude: string[]) => ({
  quant_method: 'modelopt',
  quant_algo: algo,
  group_size: GROUP_SIZE,
  exclude_modules: exclude,
});

const hfQuant = (quantization: Record<string, unknown>) =>
  `${JSON.stringify({ producer: { name: 'modelopt', version: '0.44.0' }, quantization }, null, 4)}\n`;

interface Built {
  plan: Planned[];
  files: Record<string, string>;
}

/** Qwen3-MoE-like: FP8 attention, layer 0's experts NVFP4 (one table key for the experts module), layer 1's W4A16_NVFP4 (per-expert keys, no input scales). */
function mixedPrecision(ctx: Ctx, algoIn: 'hf_quant_config' | 'config'): Built {
  const E = 3;
  const layers: Record<string, Record<string, unknown>> = {};
  bf16(ctx, 'model.embed_tokens.weight', [VOCAB, H], 'weight');
  bf16(ctx, 'lm_head.weight', [VOCAB, H], 'weight');
  bf16(ctx, 'model.norm.weight', [H], 'norm');
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}`;
    llamaLayerNorms(ctx, p);
    bf16(ctx, `${p}.self_attn.q_norm.weight`, [HEAD], 'norm');
    bf16(ctx, `${p}.self_attn.k_norm.weight`, [HEAD], 'norm');
    bf16(ctx, `${p}.mlp.gate.weight`, [E, H], 'weight');
    for (const [name, n, k] of [['q_proj', HEAD, H], ['k_proj', HEAD, H], ['v_proj', HEAD, H], ['o_proj', H, HEAD]] as const) {
      fp8(ctx, `${p}.self_attn.${name}`, n, k);
      layers[`${p}.self_attn.${name}`] = { quant_algo: 'FP8' };
    }
    const w4a16 = l === 1;
    if (!w4a16) layers[`${p}.mlp.experts`] = { quant_algo: 'NVFP4', group_size: GROUP_SIZE };
    for (let e = 0; e < E; e++) {
      nvfp4GatedMlp(ctx, `${p}.mlp.experts.${e}`, I, !w4a16);
      if (w4a16) for (const r of ['gate_proj', 'up_proj', 'down_proj']) layers[`${p}.mlp.experts.${e}.${r}`] = { quant_algo: 'W4A16_NVFP4', group_size: GROUP_SIZE };
    }
  }
  const quantization = { quant_algo: 'MIXED_PRECISION', kv_cache_quant_algo: 'FP8', quantized_layers: layers };
  const config: Record<string, unknown> = {
    architectures: ['Qwen3MoeForCausalLM'],
    model_type: 'qwen3_moe',
    head_dim: HEAD,
    num_attention_heads: 1,
    num_key_value_heads: 1,
    num_hidden_layers: 2,
    num_experts: E,
    num_experts_per_tok: 2,
    moe_intermediate_size: I,
    intermediate_size: 3 * I,
    hidden_act: 'silu',
    ...common,
  };
  if (algoIn === 'config') {
    config.quantization_config = {
      quant_method: 'modelopt',
      quant_algo: 'MIXED_PRECISION',
      quantized_layers: layers,
      ignore: [],
      kv_cache_scheme: { dynamic: false, num_bits: 8, type: 'float' },
      producer: { name: 'modelopt', version: '0.44.0' },
    };
  }
  return { plan: ctx.plan, files: { 'config.json': sortedJson(config), 'hf_quant_config.json': hfQuant(quantization) } };
}

/** Llama-like, one layer, every linear W4A16_NVFP4: no input scales anywhere. */
function w4a16(ctx: Ctx): Built {
  bf16(ctx, 'model.embed_tokens.weight', [VOCAB, H], 'weight');
  bf16(ctx, 'lm_head.weight', [VOCAB, H], 'weight');
  bf16(ctx, 'model.norm.weight', [H], 'norm');
  const p = 'model.layers.0';
  llamaLayerNorms(ctx, p);
  nvfp4Attention(ctx, p, 2, false);
  nvfp4GatedMlp(ctx, `${p}.mlp`, 192, false);
  const q = nvfp4Config('W4A16_NVFP4', ['lm_head']);
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    head_dim: HEAD,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    num_hidden_layers: 1,
    intermediate_size: 192,
    hidden_act: 'silu',
    ...common,
    quantization_config: q,
  };
  return {
    plan: ctx.plan,
    files: { 'config.json': sortedJson(config), 'hf_quant_config.json': hfQuant({ quant_algo: 'W4A16_NVFP4', kv_cache_quant_algo: null, group_size: GROUP_SIZE, exclude_modules: ['lm_head'] }) },
  };
}

/** Llama-4-like: NVFP4 attention and shared expert, fused 3-D routed experts stored K-major. */
function llama4(ctx: Ctx): Built {
  const E = 2;
  bf16(ctx, 'model.embed_tokens.weight', [VOCAB, H], 'weight');
  bf16(ctx, 'lm_head.weight', [VOCAB, H], 'weight');
  bf16(ctx, 'model.norm.weight', [H], 'norm');
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}`;
    llamaLayerNorms(ctx, p);
    nvfp4Attention(ctx, p, 2, true);
    bf16(ctx, `${p}.feed_forward.router.weight`, [E, H], 'weight');
    nvfp4GatedMlp(ctx, `${p}.feed_forward.shared_expert`, I, true);
    // gate_up_proj [E, H/2, 2I]: per expert the N-major [2I, H/2] (gate rows, then up) transposed.
    experts3d(ctx, `${p}.feed_forward.experts.gate_up_proj`, E, 2 * I, H, true, 'param');
    experts3d(ctx, `${p}.feed_forward.experts.down_proj`, E, H, I, true, 'param');
  }
  const text = { head_dim: HEAD, num_attention_heads: 2, num_key_value_heads: 1, num_hidden_layers: 2, num_local_experts: E, num_experts_per_tok: 1, intermediate_size: I, intermediate_size_mlp: 2 * I, hidden_act: 'silu', ...common };
  const config = {
    architectures: ['Llama4ForConditionalGeneration'],
    model_type: 'llama4',
    text_config: { ...text, model_type: 'llama4_text' },
    torch_dtype: 'bfloat16',
    quantization_config: nvfp4Config('NVFP4', ['lm_head', 'model.layers.*.feed_forward.router']),
  };
  return { plan: ctx.plan, files: { 'config.json': sortedJson(config) } };
}

/** Nemotron-H-like MoE: relu² experts (up, down; no gate), layer 0 per expert, layer 1 batched 3-D (N-major), NVFP4 shared experts. */
function nemotronH(ctx: Ctx): Built {
  const E = 3;
  const SHARED = 128;
  bf16(ctx, 'backbone.embeddings.weight', [VOCAB, H], 'weight');
  bf16(ctx, 'backbone.norm_f.weight', [H], 'norm');
  bf16(ctx, 'lm_head.weight', [VOCAB, H], 'weight');
  for (let l = 0; l < 2; l++) {
    const p = `backbone.layers.${l}`;
    bf16(ctx, `${p}.norm.weight`, [H], 'norm');
    bf16(ctx, `${p}.mixer.gate.weight`, [E, H], 'weight');
    nvfp4(ctx, `${p}.mixer.shared_experts.up_proj`, SHARED, H, ctx.scale(), ctx.scale());
    nvfp4(ctx, `${p}.mixer.shared_experts.down_proj`, H, SHARED, ctx.scale(), ctx.scale());
    if (l === 0) {
      for (let e = 0; e < E; e++) {
        nvfp4(ctx, `${p}.mixer.experts.${e}.up_proj`, I, H, ctx.scale(), ctx.scale());
        nvfp4(ctx, `${p}.mixer.experts.${e}.down_proj`, H, I, ctx.scale(), ctx.scale());
      }
    } else {
      // HF NemotronHExperts' (out, in) order: up [E, I, H/2], down [E, H, I/2] (inferred; FORMAT.md 6.3).
      experts3d(ctx, `${p}.mixer.experts.up_proj`, E, I, H, false, 'module');
      experts3d(ctx, `${p}.mixer.experts.down_proj`, E, H, I, false, 'module');
    }
  }
  const config = {
    architectures: ['NemotronHForCausalLM'],
    model_type: 'nemotron_h',
    num_hidden_layers: 2,
    hybrid_override_pattern: 'EE',
    n_routed_experts: E,
    num_experts_per_tok: 2,
    moe_intermediate_size: I,
    moe_shared_expert_intermediate_size: SHARED,
    mlp_hidden_act: 'relu2',
    ...common,
    quantization_config: nvfp4Config('NVFP4', ['lm_head', 'backbone.layers.*.mixer.gate']),
  };
  return { plan: ctx.plan, files: { 'config.json': sortedJson(config) } };
}

/** The tensors (sorted by name, with sizes) and side files of one structure. */
export function planStructure(name: StructureName, opts: StructureOptions = {}): { tensors: PlannedTensorWithContent[]; files: Record<string, string> } {
  const seed = opts.seed ?? 1;
  let next = seed % GLOBAL_SCALE_TABLE.length;
  const ctx: Ctx = { seed, plan: [], scale: () => GLOBAL_SCALE_TABLE[next++ % GLOBAL_SCALE_TABLE.length]! };
  const built =
    name === 'mixed-precision' ? mixedPrecision(ctx, opts.algoIn ?? 'hf_quant_config') : name === 'w4a16' ? w4a16(ctx) : name === 'llama4' ? llama4(ctx) : name === 'nemotron-h' ? nemotronH(ctx) : undefined;
  if (!built) throw new Error(`unknown structure ${JSON.stringify(name)} (known: ${STRUCTURES.join(', ')})`);
  const size = { U8: 1, F8_E4M3: 1, BF16: 2, F32: 4 } as const;
  const tensors = built.plan
    .map((t) => ({ ...t, bytes: t.shape.reduce((a, b) => a * b, size[t.dtype]) }))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { tensors, files: built.files };
}

/** Writes one structure's checkpoint into `dir` (which must not exist or be empty). */
export function generateStructure(dir: string, name: StructureName, opts: StructureOptions = {}): Promise<GenerateResult> {
  const { tensors, files } = planStructure(name, opts);
  return writeCheckpoint(dir, tensors, opts.shards ?? 1, files);
}
