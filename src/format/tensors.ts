// The output checkpoint's tensors: for each converted module, the names, dtypes and shapes
// that convert writes and verify expects (FORMAT.md sections 6 and 8; DESIGN.md beside this
// file). Pure functions of the module's (padded) shape: no I/O, no checkpoint.
import { DTYPE_SIZE, type Dtype } from '../safetensors/index.js';
import type { ActDtype, LayoutVersion, LinearShape } from '../transform/marlin.js';
import { GROUP_SIZE } from './quant-config.js';

/** What a converted module is: a dense linear, or one of an MoE layer's expert stacks. */
export type ModuleKind = 'linear' | 'moe-w13' | 'moe-w2';

export interface TensorSpec {
  name: string;
  dtype: Dtype;
  shape: number[];
}

/** The three tensors every converted module has (T: their names, or their specs). */
export interface QuantizedTensors<T = TensorSpec> {
  weight: T;
  scales: T;
  global: T;
}

/** How the output is laid out and for which activations: what every shape and dtype depends on. */
export interface OutputLayout {
  layout: LayoutVersion;
  dtype: ActDtype;
}

/** The Marlin weight: packed FP4 codes, 8 per 32-bit word. */
export const PACKED_WEIGHT_DTYPE: Dtype = 'I32';
/** The processed block scales: one byte per group and column. */
export const BLOCK_SCALE_DTYPE: Dtype = 'F8_E4M3';
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
export function moduleTensorNames(name: string, kind: ModuleKind): QuantizedTensors<string> {
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

/** A module's weight, scales and global scale as the output stores them. */
export function moduleTensors(name: string, kind: ModuleKind, { part, parts, experts }: ModuleShape, o: OutputLayout): QuantizedTensors {
  const names = moduleTensorNames(name, kind);
  const lead = experts === undefined ? [] : [experts];
  // Rows of K/16 (one scale group each; Marlin's tile rows for the weight too).
  const rows = part.kp / GROUP_SIZE;
  const width = part.np * parts;
  return {
    weight: { name: names.weight, dtype: PACKED_WEIGHT_DTYPE, shape: [...lead, rows, 2 * width] },
    scales: { name: names.scales, dtype: BLOCK_SCALE_DTYPE, shape: [...lead, rows, width] },
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
