// The output checkpoint's tensors: for each converted module, the names, dtypes and shapes
// that convert writes and verify expects (FORMAT.md sections 6 and 8; DESIGN.md beside this
// file). Pure functions of the module's (padded) shape: no I/O, no checkpoint.
import { DTYPE_SIZE, type Dtype } from '../safetensors/index.js';
import type { ActDtype, LayoutVersion, LinearShape } from '../transform/marlin.js';
import { SCHEME_GROUP_SIZE, type Scheme } from './quant-config.js';

/** What a converted module is: a dense linear, or one of an MoE layer's expert stacks. */
export type ModuleKind = 'linear' | 'moe-w13' | 'moe-w2';

export interface TensorSpec {
  name: string;
  dtype: Dtype;
  shape: number[];
}

/** The tensors every converted module has (T: their names, or their specs); MXFP4 has no global scale. */
export interface QuantizedTensors<T = TensorSpec> {
  weight: T;
  scales: T;
  global?: T;
}

/** How the output is laid out and for which activations: what every shape and dtype depends on. */
export interface OutputLayout {
  layout: LayoutVersion;
  dtype: ActDtype;
  /** NVFP4 unless given. */
  scheme?: Scheme;
}

/** The Marlin weight: packed FP4 codes, 8 per 32-bit word. */
export const PACKED_WEIGHT_DTYPE: Dtype = 'I32';
/** The processed block scales: one byte per group and column. */
export const BLOCK_SCALE_DTYPE: Dtype = 'F8_E4M3';
/**
 * MXFP4's processed scales: E8M0 bytes, stored as U8 (as gpt-oss and compressed-tensors store
 * them, and readable by every safetensors version; a loader views them as float8_e8m0fnu).
 */
export const MXFP4_SCALE_DTYPE: Dtype = 'U8';
/** gpt-oss expert biases: cast to the activation dtype (bfloat16, the only MXFP4 Marlin dtype). */
export const MXFP4_BIAS_DTYPE: Dtype = 'BF16';
/** input_scale travels unchanged as a scalar. */
export const INPUT_SCALE_DTYPE: Dtype = 'F32';

/** weight_scale_2: F32 under v2 (sf folded in), the activation dtype under v1 (FORMAT.md section 4). */
export function globalScaleDtype({ layout, dtype }: OutputLayout): Dtype {
  return layout === 'v2' ? 'F32' : dtype === 'float16' ? 'F16' : 'BF16';
}

/** Bytes of one processed global scale (one per dense linear, one per expert of a stack). */
export function globalScaleBytes(o: OutputLayout): number {
  return DTYPE_SIZE[globalScaleDtype(o)];
}

/** Names of a module's tensors: `P.weight`… for a dense linear P, `Q_weight`… for a stack Q (`<experts>.w13`). */
export function moduleTensorNames(name: string, kind: ModuleKind): Required<QuantizedTensors<string>> {
  const sep = kind === 'linear' ? '.' : '_';
  return { weight: `${name}${sep}weight`, scales: `${name}${sep}weight_scale`, global: `${name}${sep}weight_scale_2` };
}

export interface ModuleShape {
  /** Shape of one part (a dense linear, or gate, up or down of one expert). */
  part: LinearShape;
  /** Parts concatenated along N (1 for a dense linear; 2 for w13: gate then up). */
  parts: number;
  /** Experts stacked along a leading dimension; absent for a dense linear. */
  experts?: number;
}

/** A module's weight, scales and (NVFP4) global scale as the output stores them. */
export function moduleTensors(name: string, kind: ModuleKind, { part, parts, experts }: ModuleShape, o: OutputLayout): QuantizedTensors {
  const names = moduleTensorNames(name, kind);
  const lead = experts === undefined ? [] : [experts];
  // The weight has Marlin's tile rows of K/16; the scales one row per group (16 or 32 along K).
  const rows = part.kp / 16;
  const scaleRows = part.kp / SCHEME_GROUP_SIZE[o.scheme ?? 'nvfp4'];
  const width = part.np * parts;
  const weight: TensorSpec = { name: names.weight, dtype: PACKED_WEIGHT_DTYPE, shape: [...lead, rows, 2 * width] };
  if (o.scheme === 'mxfp4') return { weight, scales: { name: names.scales, dtype: MXFP4_SCALE_DTYPE, shape: [...lead, scaleRows, width] } };
  return {
    weight,
    scales: { name: names.scales, dtype: BLOCK_SCALE_DTYPE, shape: [...lead, scaleRows, width] },
    global: { name: names.global, dtype: globalScaleDtype(o), shape: experts === undefined ? [1] : [experts] },
  };
}

/** A linear's activation scale (dense linears and each expert part keep their own), unchanged. */
export const inputScaleName = (linearPrefix: string) => `${linearPrefix}.input_scale`;

export function inputScaleTensor(linearPrefix: string): TensorSpec {
  return { name: inputScaleName(linearPrefix), dtype: INPUT_SCALE_DTYPE, shape: [] };
}

/** A dense linear's bias (v2 only): the source dtype, permuted and zero-padded to Np (FORMAT.md section 4). */
export const biasName = (linearPrefix: string) => `${linearPrefix}.bias`;

export function biasTensor(linearPrefix: string, dtype: Dtype, part: LinearShape): TensorSpec {
  return { name: biasName(linearPrefix), dtype, shape: [part.np] };
}

/** An MoE stack's per-expert bias (gpt-oss): `Q_bias` (e.g. `…experts.w13_bias`) BF16 [E, ΣNp], permuted and zero-padded. */
export function stackBiasTensor(stack: string, experts: number, width: number): TensorSpec {
  return { name: `${stack}_bias`, dtype: MXFP4_BIAS_DTYPE, shape: [experts, width] };
}
