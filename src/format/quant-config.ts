// config.json's quantization_config of a converted checkpoint: what tells a loader (and
// `detectFormat`) that a directory holds Marlin FP4 weights, which FP4 scheme they are, and
// how they were made.
import type { ActDtype, LayoutVersion } from '../transform/marlin.js';

export const QUANT_METHOD = 'marlin_fp4';

/**
 * The FP4 scheme of the weights: NVFP4 (group 16, E4M3 block scales, a global scale) or
 * MXFP4 (group 32, E8M0 scales, no global scale; FORMAT.md section 5).
 */
export type Scheme = 'nvfp4' | 'mxfp4';

/** One scale per this many weights along K. */
export const SCHEME_GROUP_SIZE: Readonly<Record<Scheme, number>> = Object.freeze({ nvfp4: 16, mxfp4: 32 });
/** NVFP4's block (group) size: one scale per 16 weights along K. */
export const GROUP_SIZE = SCHEME_GROUP_SIZE.nvfp4;

/**
 * What serves the output: the vLLM plugin in integrations/vllm and the vLLM sources (file →
 * commit) its calls were written against. Recorded in config.json so a reader of a converted
 * checkpoint knows which vLLM it was made for; test/serving-record.test.ts keeps this equal to
 * the plugin's own record (integrations/vllm/src/marlin_fp4_vllm/vllm_sources.py).
 */
export const SERVING = {
  plugin: 'marlin-fp4-vllm',
  vllm_sources: {
    'vllm/model_executor/layers/quantization/modelopt.py': '00155cdecca722d98e34234c3d172725b7720b7d',
    'vllm/model_executor/layers/quantization/utils/marlin_utils_fp4.py': '00d52e93333741b205e70acb9217a2849f173696',
    'vllm/model_executor/layers/fused_moe/fused_marlin_moe.py': '00a130a03146d74300d01c0bcf806f323f887fbb',
    'vllm/model_executor/layers/quantization/__init__.py': '0034007debee2a009e030804f2cde7953aff78c6',
    'vllm/plugins/__init__.py': '01425553bdbed63400efa72ff14a8f4ffe20bada',
  },
} as const;

/** The source flavour as the output names it. */
const SOURCE_FORMAT: Record<Scheme, Record<string, string>> = {
  nvfp4: { modelopt: 'modelopt-nvfp4', 'compressed-tensors': 'compressed-tensors-nvfp4' },
  mxfp4: { 'gpt-oss': 'gpt-oss-mxfp4', 'compressed-tensors': 'compressed-tensors-mxfp4' },
};

/** The source algorithms (ModelOpt quant_algo, per layer or whole model) whose layers marlin-fp4 converts. */
export const CONVERTED_ALGOS: readonly string[] = ['NVFP4', 'W4A16_NVFP4'];
/** A converted layer's scheme in the output's quantized_layers table. */
export const CONVERTED_LAYER_ALGO = 'MARLIN_FP4';

export interface QuantConfigInput {
  layout: LayoutVersion;
  dtype: ActDtype;
  /** NVFP4 unless given. */
  scheme?: Scheme;
  /** The source flavour's kind (modelopt, compressed-tensors, gpt-oss). */
  source: string;
  /** The source's quant_algo (NVFP4, W4A16_NVFP4, MIXED_PRECISION; MXFP4). */
  algo?: string;
  /** MIXED_PRECISION's per-layer table, as the source gives it. */
  layers?: Record<string, Record<string, unknown>>;
  /** The source's own quantization config, kept for provenance. */
  original: Record<string, unknown>;
  /** Module prefixes of each fused group, in concatenation order along N. */
  fusedGroups: string[][];
}

/**
 * A MIXED_PRECISION source's per-layer table as the output states it: every NVFP4 /
 * W4A16_NVFP4 entry is now Marlin FP4 (`{"quant_algo": "MARLIN_FP4", "source_quant_algo":
 * …, "group_size": 16}`); every other entry (FP8, …) is kept verbatim, its tensors having
 * passed through unchanged. A loader reads each layer's scheme here.
 */
export function outputLayerTable(layers: Record<string, Record<string, unknown>>): Record<string, Record<string, unknown>> {
  const out: Record<string, Record<string, unknown>> = {};
  for (const key of Object.keys(layers).sort()) {
    const entry = layers[key]!;
    const algo = String(entry.quant_algo ?? '').toUpperCase();
    out[key] = CONVERTED_ALGOS.includes(algo) ? { quant_algo: CONVERTED_LAYER_ALGO, source_quant_algo: algo, group_size: GROUP_SIZE } : entry;
  }
  return out;
}

export function marlinQuantConfig({ layout, dtype, scheme = 'nvfp4', source, algo, layers, original, fusedGroups }: QuantConfigInput): Record<string, unknown> {
  return {
    quant_method: QUANT_METHOD,
    layout,
    activation_dtype: dtype,
    // Written for MXFP4 only, so that NVFP4 outputs stay byte-identical to earlier versions;
    // a reader takes a missing scheme as NVFP4.
    ...(scheme === 'mxfp4' ? { scheme } : {}),
    group_size: SCHEME_GROUP_SIZE[scheme],
    source_format: SOURCE_FORMAT[scheme][source] ?? `${source}-${scheme}`,
    ...(algo ? { source_quant_algo: algo } : {}),
    ...(layers ? { quantized_layers: outputLayerTable(layers) } : {}),
    // Parts that share one sf and one global scale, in concatenation order along N: a loader
    // that fuses them concatenates their tensors (FORMAT.md section 8). marlin-fp4-vllm reads it.
    fused_groups: fusedGroups,
    original_quantization_config: original,
    serving: SERVING,
  };
}
