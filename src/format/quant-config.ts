// config.json's quantization_config of a converted checkpoint: what tells a loader (and
// `detectFormat`) that a directory holds Marlin FP4 weights, and how they were made.
import type { ActDtype, LayoutVersion } from '../transform/marlin.js';

export const QUANT_METHOD = 'marlin_fp4';
/** NVFP4's block (group) size: one scale per 16 weights along K. */
export const GROUP_SIZE = 16;

/** The source flavour as the output names it. */
const SOURCE_FORMAT = { modelopt: 'modelopt-nvfp4', 'compressed-tensors': 'compressed-tensors-nvfp4' } as const;

export interface QuantConfigInput {
  layout: LayoutVersion;
  dtype: ActDtype;
  source: keyof typeof SOURCE_FORMAT;
  /** The source's own quantization config, kept for provenance. */
  original: Record<string, unknown>;
  /** Module prefixes of each fused group, in concatenation order along N. */
  fusedGroups: string[][];
}

export function marlinQuantConfig({ layout, dtype, source, original, fusedGroups }: QuantConfigInput): Record<string, unknown> {
  return {
    quant_method: QUANT_METHOD,
    layout,
    activation_dtype: dtype,
    group_size: GROUP_SIZE,
    source_format: SOURCE_FORMAT[source],
    // Parts that share one sf and one global scale, in concatenation order along N: a loader
    // that fuses them concatenates their tensors (FORMAT.md section 8). marlin-fp4-vllm reads it.
    fused_groups: fusedGroups,
    original_quantization_config: original,
  };
}
