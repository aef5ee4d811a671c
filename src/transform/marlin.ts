// The Marlin FP4 transforms of FORMAT.md, tensor by tensor, with shape rules checked and
// every error naming the tensor at fault. The arithmetic lives in the native addon.
import { EnvironmentError } from '../errors.js';
import { addon, type NativeAddon, type NativePart } from './addon.js';
import { badBlockScaleOf, badScaleReason, nativeErrorReason } from './block-scales.js';

export type LayoutVersion = 'v1' | 'v2';
export type ActDtype = 'float16' | 'bfloat16';
/** Where the heavy transforms run; both give the same bytes. */
export type Backend = 'cpu' | 'cuda';
export type DeviceChoice = Backend | 'auto';

/** The addon's heavy calls for one backend. */
function heavy(backend: Backend = 'cpu') {
  const a: NativeAddon = addon();
  return backend === 'cuda'
    ? {
        repack: a.gpuRepackWeightStack,
        scales: a.gpuProcessScalesStack,
        unpack: a.gpuUnpackWeight,
        unpackCompare: a.gpuUnpackCompare,
        decode: a.gpuDecodeScales,
        decodeCompare: a.gpuDecodeCompare,
      }
    : { repack: a.repackWeightStack, scales: a.processScalesStack, unpack: a.unpackWeight, unpackCompare: a.unpackCompare, decode: a.decodeScales, decodeCompare: a.decodeCompare };
}

/**
 * --device: `auto` takes CUDA when the addon has it and a device answers; asking for `cuda`
 * where there is none is the environment's fault (exit code 3), with the reason. The driver's
 * probe (about 0.2 s on the H200 host) runs on a pool thread, beside whatever the caller starts
 * meanwhile (convert and verify open the checkpoint).
 */
export async function resolveBackend(choice: DeviceChoice): Promise<Backend> {
  if (choice === 'cpu') return 'cpu';
  const st = await addon().cudaStatusAsync();
  if (st.available) {
    // Context creation takes a while too: start it now, beside whatever the caller does next.
    addon()
      .gpuWarmup()
      .catch(() => {}); // the first GPU call reports any failure
    return 'cuda';
  }
  if (choice === 'cuda') throw new EnvironmentError(`--device cuda: no usable CUDA device (${st.reason ?? 'unknown reason'})`);
  return 'cpu';
}

export class TransformError extends Error {
  constructor(
    readonly tensor: string,
    readonly reason: string,
  ) {
    super(`${tensor}: ${reason}`);
    this.name = 'TransformError';
  }
}

/** Shape of one quantized linear: N output features, K input features, and v2's padding. */
export interface LinearShape {
  n: number;
  k: number;
  np: number;
  kp: number;
}

function fail(tensor: string, reason: string): never {
  throw new TransformError(tensor, reason);
}

/**
 * The tensor a call's errors name: one name, or one per expert for a batch of a stack's
 * experts, so that a bad block scale names that expert's own tensor, as a call for it alone would.
 */
export type TensorNames = string | readonly string[];

/** Runs a native call and re-labels its error with the tensor's name (a bad block scale with block-scales.ts's message). */
async function named<T>(tensor: TensorNames, run: () => Promise<T> | T): Promise<T> {
  try {
    return await run();
  } catch (e) {
    if (e instanceof TransformError) throw e;
    if (typeof tensor === 'string') fail(tensor, nativeErrorReason(e));
    const bad = badBlockScaleOf(e);
    if (bad && tensor[bad.expert] !== undefined) fail(tensor[bad.expert]!, badScaleReason({ ...bad, expert: 0, experts: 1 }));
    fail(tensor[0]!, nativeErrorReason(e));
  }
}

/**
 * Checks an NVFP4 linear's weight and block-scale shapes against FORMAT.md and returns the
 * (padded) shape the given layout produces.
 */
export function linearShape(
  tensor: string,
  layout: LayoutVersion,
  weightShape: readonly number[],
  scaleShape: readonly number[],
): LinearShape {
  if (weightShape.length !== 2) fail(tensor, `weight must be 2-D [N, K/2], got [${weightShape.join(', ')}]`);
  const [n, halfK] = weightShape as [number, number];
  const k = 2 * halfK;
  if (n === 0 || k === 0) fail(tensor, `weight is empty [${weightShape.join(', ')}]`);
  if (k % 16 !== 0) fail(tensor, `K = ${k} is not a multiple of 16 (the NVFP4 group size)`);
  if (scaleShape.length !== 2 || scaleShape[0] !== n || scaleShape[1] !== k / 16) {
    fail(tensor, `weight_scale shape [${scaleShape.join(', ')}] is not [N, K/16] = [${n}, ${k / 16}]`);
  }
  if (layout === 'v1') {
    if (n % 64 !== 0) fail(tensor, `N = ${n} is not a multiple of 64: layout v1 cannot pad it (use --layout v2)`);
    if (k % 32 !== 0) fail(tensor, `K = ${k} is not a multiple of 32: layout v1 pairs scale rows (use --layout v2)`);
    return { n, k, np: n, kp: k };
  }
  const { np, kp } = addon().padShapeV2(n, k);
  return { n, k, np, kp };
}

/** Padded intermediate size of an MoE gate/up shard (FORMAT.md section 4, MoE note). */
export function moePaddedIntermediate(intermediate: number, hidden: number, layout: LayoutVersion): number {
  if (layout === 'v1') return intermediate;
  const m = hidden % 128 === 0 ? 64 : 128;
  return Math.ceil(intermediate / m) * m;
}

/** Bytes of the Marlin weight of one linear (or one expert of a stack with `parts` parts). */
export function packedWeightBytes(s: LinearShape, parts = 1, rows = s.kp / 16): number {
  return rows * 2 * s.np * parts * 4;
}

/** Bytes of the processed scales of one linear (or one expert with `parts` parts). */
export function processedScaleBytes(s: LinearShape, parts = 1, rows = s.kp / 16): number {
  return rows * s.np * parts;
}

/**
 * Marlin weight (I32 [Kp/16, 2·Np] as bytes) of one linear. `out`, when given, receives the
 * result: reusing one buffer across tensors avoids the page faults of fresh memory.
 */
export function repackWeight(tensor: string, weight: Uint8Array, s: LinearShape, out?: Uint8Array, backend?: Backend): Promise<Buffer> {
  return repackWeightStack(tensor, [[weight]], s, { out, backend });
}

export interface RepackOptions {
  /** Receives the result (see repackWeight). */
  out?: Uint8Array;
  /** Only these output rows. */
  rows?: RowSlice;
  backend?: Backend;
}

/**
 * Marlin weight of a stack: experts[e] lists the parts concatenated along N (gate, up),
 * each `partShape.n` rows padded to `partShape.np`. Returns I32 [E, Kp/16, 2·ΣNp].
 */
export function repackWeightStack(
  tensor: TensorNames,
  experts: Uint8Array[][],
  part: LinearShape,
  { out, rows, backend }: RepackOptions = {},
): Promise<Buffer> {
  return named(tensor, () => heavy(backend).repack(toParts(experts, part), { k: part.k, kp: part.kp, out, ...rows }));
}

/**
 * Output rows [rowBegin, rowEnd) (rows of K/16; even under v1 for scales) of one tensor:
 * producing a big tensor in slices that are written while still in cache is several times
 * faster than writing it whole from memory.
 */
export interface RowSlice {
  rowBegin: number;
  rowEnd: number;
}

export interface ScaleOptions {
  layout: LayoutVersion;
  dtype: ActDtype;
  /** v2's scale factor; computed from these scales when omitted. */
  sf?: number;
  /** Receives the result when given (see repackWeight). */
  out?: Uint8Array;
  /** Only these rows (needs sf; the result's zeroed is then null). */
  rows?: RowSlice;
  backend?: Backend;
}

export interface ProcessedScales {
  scales: Buffer;
  sf: number;
  /** Non-zero block scales that v2's clamp turned into 0 (data lost); null for a row slice. */
  zeroed: number | null;
}

export function processScales(
  tensor: string,
  scales: Uint8Array,
  s: LinearShape,
  opts: ScaleOptions,
): Promise<ProcessedScales> {
  return processScalesStack(tensor, [[scales]], s, opts);
}

export function processScalesStack(
  tensor: TensorNames,
  experts: Uint8Array[][],
  part: LinearShape,
  opts: ScaleOptions,
): Promise<ProcessedScales> {
  const { rows, backend, ...rest } = opts;
  return named(tensor, () => heavy(backend).scales(toParts(experts, part), { k: part.k, kp: part.kp, ...rest, ...rows }));
}

/**
 * Processed global scale: F16/BF16 [1] under v1, F32 [1] under v2. The one rule for the stored
 * value, in every layout and dtype, for convert and verify alike: it must be finite (the
 * addon refuses an overflow) and not 0 (v1 rounds weight_scale_2 to the activation dtype
 * first: below float16's smallest subnormal, 6e-8, it becomes 0 and the layer outputs zeros).
 */
export function processGlobalScale(tensor: string, ws2: number, opts: ScaleOptions): Buffer {
  if (!(ws2 > 0) || !Number.isFinite(ws2)) fail(tensor, `global scale ${ws2} is not a positive finite number`);
  let stored: Buffer;
  try {
    stored = addon().processGlobalScale(ws2, { layout: opts.layout, dtype: opts.dtype, sf: opts.sf ?? 1 });
  } catch (e) {
    fail(tensor, (e as Error).message);
  }
  const zero = stored.length === 2 ? (stored.readUInt16LE(0) & 0x7fff) === 0 : stored.readFloatLE(0) === 0;
  if (zero) {
    const dt = opts.layout === 'v1' ? opts.dtype : 'float32';
    fail(tensor, `processed global scale underflows ${dt} to 0 (weight_scale_2 ${ws2} is too small for layout ${opts.layout} with ${opts.dtype}; use --layout v2)`);
  }
  return stored;
}

export interface PartLocation {
  /** Width of the whole packed tensor in columns (ΣNp of its parts). */
  totalNp: number;
  /** First column of this part. */
  colOffset: number;
}

/** Inverse of repackWeight for one part of a packed tensor: U8 [N, K/2]. */
export function unpackWeight(
  tensor: string,
  packed: Uint8Array,
  s: LinearShape,
  where: PartLocation = { totalNp: s.np, colOffset: 0 },
  backend?: Backend,
): Promise<{ weight: Buffer; paddingNonzero: number }> {
  return named(tensor, () => heavy(backend).unpack(packed, partOptions(s, where)));
}

/** The native options naming one part's columns in a (possibly concatenated) packed weight. */
function partOptions(s: LinearShape, where: PartLocation) {
  return { n: s.n, np: s.np, k: s.k, kp: s.kp, rowWords: 2 * where.totalNp, wordOffset: 2 * where.colOffset };
}

/**
 * unpackWeight compared with the source it should give back (U8 [N, K/2]), where the unpacking
 * runs (on the GPU the comparison too): how many bytes differ, the first (row · K/2 + byte,
 * -1 when none) and its unpacked value; the unpacked weight itself never comes back.
 */
export function unpackCompare(
  tensor: string,
  packed: Uint8Array,
  want: Uint8Array,
  s: LinearShape,
  where: PartLocation = { totalNp: s.np, colOffset: 0 },
  backend?: Backend,
): Promise<{ count: number; first: number; got: number; paddingNonzero: number }> {
  return named(tensor, () => heavy(backend).unpackCompare(packed, want, partOptions(s, where)));
}

/** Inverse of processScales for one part: E4M3 [N, K/16]; undecodable bytes come back as NaN (0x7F). */
export function decodeScales(
  tensor: string,
  processed: Uint8Array,
  s: LinearShape,
  opts: { layout: LayoutVersion; sf: number },
  where: PartLocation = { totalNp: s.np, colOffset: 0 },
  backend?: Backend,
): Promise<{ scales: Buffer; paddingNonzero: number }> {
  return named(tensor, () => heavy(backend).decode(processed, scaleOptions(s, opts, where)));
}

/** The native options naming one part's columns in (possibly concatenated) processed scales. */
function scaleOptions(s: LinearShape, opts: { layout: LayoutVersion; sf: number }, where: PartLocation) {
  return { n: s.n, np: s.np, k: s.k, kp: s.kp, layout: opts.layout, sf: opts.sf, totalNp: where.totalNp, colOffset: where.colOffset };
}

/**
 * decodeScales compared with the source's block scales (E4M3 [N, K/16]) as a correct
 * conversion keeps them (v2's lost scales and -0 as 0), where the decoding runs; the decoded
 * scales never come back. How many bytes differ, the first (row · K/16 + group, -1 when none)
 * and its decoded byte, and how many of the source's scales v2's clamp loses.
 */
export function decodeCompare(
  tensor: string,
  processed: Uint8Array,
  source: Uint8Array,
  s: LinearShape,
  opts: { layout: LayoutVersion; sf: number },
  where: PartLocation = { totalNp: s.np, colOffset: 0 },
  backend?: Backend,
): Promise<{ count: number; first: number; got: number; lost: number; paddingNonzero: number }> {
  return named(tensor, () => heavy(backend).decodeCompare(processed, source, scaleOptions(s, opts, where)));
}

function toParts(experts: Uint8Array[][], part: LinearShape): NativePart[][] {
  return experts.map((parts) => parts.map((data) => ({ data, n: part.n, np: part.np })));
}

export function setThreads(n: number): number {
  return addon().setThreads(n);
}
