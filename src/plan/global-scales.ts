// Global scales are scalars: read them all up front, so fused-shard checks run before any
// output is written.
import { InputError } from '../errors.js';
import { readTensor, type Checkpoint } from '../checkpoint/model-dir.js';
import { where, type LinearSource } from './linears.js';

/** ModelOpt's weight_scale_2 of a linear (compressed-tensors' reciprocal undone, in f32). */
export async function readGlobalScale(ckpt: Checkpoint, lin: LinearSource): Promise<number> {
  if (!lin.global) throw new Error(`internal: ${lin.prefix} has no global scale (MXFP4)`);
  return globalScale(ckpt, lin, await readTensor(ckpt, lin.global));
}

/** The global scale of `lin` from its tensor's bytes `data` (read by the caller, many at once). */
export function globalScale(ckpt: Checkpoint, lin: LinearSource, data: Buffer): number {
  if (!lin.global) throw new Error(`internal: ${lin.prefix} has no global scale (MXFP4)`);
  const raw = data.readFloatLE(0);
  const value = lin.globalReciprocal ? Math.fround(1 / raw) : raw;
  if (!(value > 0) || !Number.isFinite(value)) {
    throw new InputError(`${where(ckpt, lin.global)}: global scale ${raw} is not a positive finite number`);
  }
  // A subnormal float32 global scale puts every output of the layer below what the activation
  // dtypes hold (and loses precision on the way): refused like 0, in every layout.
  if (value < 2 ** -126) {
    throw new InputError(`${where(ckpt, lin.global)}: global scale ${raw} is a subnormal float32 (below 2^-126): the layer's outputs would underflow`);
  }
  return value;
}

/**
 * The activation scale as ModelOpt's input_scale (compressed-tensors stores its reciprocal).
 * It must be a finite number >= 0 (0 is kept: calibration leaves it for experts no token
 * reached); NaN, an infinity or a negative value is an error here, for convert and verify alike.
 */
export async function readInputScale(ckpt: Checkpoint, lin: LinearSource): Promise<number | undefined> {
  if (!lin.inputScale) return undefined;
  return inputScale(ckpt, lin, await readTensor(ckpt, lin.inputScale));
}

/** The input scale of `lin` (which has one) from its tensor's bytes `data`. */
export function inputScale(ckpt: Checkpoint, lin: LinearSource, data: Buffer): number {
  if (!lin.inputScale) throw new Error(`internal: ${lin.prefix} has no input scale`);
  const raw = data.readFloatLE(0);
  const value = lin.inputReciprocal ? Math.fround(1 / raw) : raw;
  if (!(value >= 0) || !Number.isFinite(value)) {
    const as = lin.inputReciprocal ? ` (input_scale = 1 / ${raw} = ${value})` : '';
    throw new InputError(`${where(ckpt, lin.inputScale)}: input scale ${raw}${as} is not a finite number >= 0`);
  }
  return value;
}
