// The MXFP4 transforms of FORMAT.md section 5, tensor by tensor: the weights repack exactly
// as NVFP4 (marlin.ts's repackWeightStack); the E8M0 scales become a byte permutation of the
// source (64-column transpose, or the single permutation for one group, then reorder by 4),
// padding byte 0x00. The permutation lives in the native addon (layout.h's index math, CPU and
// CUDA); this file checks shapes, names the tensor at fault and states the padding rules.
import { addon, type NativeAddon, type NativePart } from './addon.js';
import { TransformError, type Backend, type LinearShape, type RowSlice } from './marlin.js';

/** MXFP4's group size along K (one E8M0 scale per 32 weights). */
export const MXFP4_GROUP = 32;

/** The addon's MXFP4 calls (native/src/mxfp4*.{h,cc,cu}). */
interface Mxfp4Addon {
  processMxfp4ScalesStack(experts: NativePart[][], opts: { k: number; kp: number; out?: Uint8Array; rowBegin?: number; rowEnd?: number }): Promise<Buffer>;
  decodeMxfp4Scales(
    data: Uint8Array,
    opts: { n: number; np: number; k: number; kp: number; totalNp?: number; colOffset?: number },
  ): Promise<{ scales: Buffer; paddingNonzero: number }>;
  gpuProcessMxfp4ScalesStack: Mxfp4Addon['processMxfp4ScalesStack'];
  gpuDecodeMxfp4Scales: Mxfp4Addon['decodeMxfp4Scales'];
}

function native(backend: Backend = 'cpu') {
  const a = addon() as NativeAddon & Mxfp4Addon;
  return backend === 'cuda'
    ? { process: a.gpuProcessMxfp4ScalesStack, decode: a.gpuDecodeMxfp4Scales }
    : { process: a.processMxfp4ScalesStack, decode: a.decodeMxfp4Scales };
}

async function named<T>(tensor: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (e) {
    throw new TransformError(tensor, (e as Error).message);
  }
}

/**
 * gpt-oss's padding under vLLM's MXFP4 Marlin MoE (FORMAT.md 5.2): the intermediate size to a
 * multiple of 128, the hidden size to a multiple of 256.
 */
export function gptOssPaddedSizes(hidden: number, intermediate: number): { hp: number; ip: number } {
  return { hp: Math.ceil(hidden / 256) * 256, ip: Math.ceil(intermediate / 128) * 128 };
}

/** Bytes of the processed MXFP4 scales of one linear (or one expert with `parts` parts): [Kp/32, ΣNp]. */
export function mxfp4ScaleBytes(s: LinearShape, parts = 1, rows = s.kp / MXFP4_GROUP): number {
  return rows * s.np * parts;
}

export interface Mxfp4ScaleOptions {
  /** Receives the result (reused buffers avoid page faults). */
  out?: Uint8Array;
  /** Only these scale rows (rows of K/32). */
  rows?: RowSlice;
  backend?: Backend;
}

/**
 * Processed scales of a stack: experts[e] lists the parts' U8 [n, k/32] scales, concatenated
 * along N, each padded to `part.np` columns; K padded to `part.kp`. U8 [E, kp/32, ΣNp].
 */
export function processMxfp4ScalesStack(tensor: string, experts: Uint8Array[][], part: LinearShape, { out, rows, backend }: Mxfp4ScaleOptions = {}): Promise<Buffer> {
  const parts = experts.map((ps) => ps.map((data) => ({ data, n: part.n, np: part.np })));
  return named(tensor, () => native(backend).process(parts, { k: part.k, kp: part.kp, out, ...rows }));
}

/** Inverse for one part of a processed tensor: U8 [n, k/32], and the non-zero bytes found in the padding. */
export function decodeMxfp4Scales(
  tensor: string,
  processed: Uint8Array,
  s: LinearShape,
  where: { totalNp: number; colOffset: number } = { totalNp: s.np, colOffset: 0 },
  backend?: Backend,
): Promise<{ scales: Buffer; paddingNonzero: number }> {
  return named(tensor, () => native(backend).decode(processed, { n: s.n, np: s.np, k: s.k, kp: s.kp, ...where }));
}
