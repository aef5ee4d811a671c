// The verification GEMMs of the native addon (native/src/gemm_cpu.cc, gemm_cuda.cu), typed, and
// what is needed around them: deterministic activations and the error measures (the per-column
// one native, verify_cpu.cc). Y = X @ W^T, fp32 accumulation, float32 out.
import { addon, type NativeAddon } from '../transform/addon.js';
import type { ActDtype, Backend, LayoutVersion } from '../transform/marlin.js';
import type { Scheme } from '../format/quant-config.js';

export interface MarlinGemmInput {
  /** Activations [m, k] as raw float16 / bfloat16 bits. */
  x: Uint8Array;
  m: number;
  /** Real input features (rows of the packed weight at or beyond k/16 are padding). */
  k: number;
  /** Output columns wanted: the first n of np. */
  n: number;
  np: number;
  kp: number;
  layout: LayoutVersion;
  dtype: ActDtype;
  /** I32 [kp/16, 2·np] as bytes. */
  weight: Uint8Array;
  /** Processed F8 [kp/16, np]; MXFP4: E8M0 bytes [kp/32, np]. */
  scales: Uint8Array;
  /** The stored global scale: 2 bytes (F16/BF16) under v1, 4 (F32) under v2; MXFP4 has none. */
  global?: Uint8Array;
  /** nvfp4 (default) or mxfp4 (FORMAT.md section 5). */
  scheme?: Scheme;
  threads?: number;
  /**
   * 'fast' (default: on CUDA the tensor-core kernel, on the CPU the register-blocked tiles) or
   * 'simple' (the plain kernel each fast one is tested against).
   */
  kernel?: 'fast' | 'simple';
  /**
   * The rows of x as consecutive Ms (summing to m): the CUDA fast kernel, whose work split
   * depends on M, is launched once per M on one upload of the weight. Other kernels' rows never
   * depend on M, and they ignore it.
   */
  splitM?: number[];
  /** Receives Y (m · n floats) instead of a fresh array: reused across calls, no garbage. */
  out?: Float32Array;
}

export interface ReferenceGemmInput {
  x: Uint8Array;
  m: number;
  n: number;
  k: number;
  /** NVFP4 source: U8 [n, k/2]. */
  weight: Uint8Array;
  /** F8_E4M3 [n, k/16]; MXFP4: E8M0 [n, k/32]. */
  scale: Uint8Array;
  /** weight_scale_2 (NVFP4 only). */
  ws2?: number;
  /** nvfp4 (default) or mxfp4. */
  scheme?: Scheme;
  dtype: ActDtype;
  threads?: number;
  /** CPU only: 'fast' (default) or 'simple' (the plain kernel the fast one is tested against). */
  kernel?: 'fast' | 'simple';
  /**
   * The block scales as a correct conversion keeps them (NVFP4 only): v2's lost scales (below
   * 2^-6 / sf, block-scales.ts scaleIsLost) and −0 (0x80; Marlin stores scales without a sign)
   * as 0, applied natively to a copy (native/src/verify_cpu.h KeptScales).
   */
  clamp?: { layout: LayoutVersion; sf: number };
  /** Receives Y (m · n floats) instead of a fresh array. */
  out?: Float32Array;
}

/** One timed shape and M of `gemmBench` (microseconds are medians per call). */
export interface GemmBenchRow {
  n: number;
  k: number;
  m: number;
  np: number;
  kp: number;
  /** The fast Marlin GEMM, the zeroing of its float32 output included. */
  oursUs: number;
  /** cuBLAS GemmEx on a dense W [n, k] of the activation dtype; null when cuBLAS could not be loaded. */
  cublasUs: number | null;
  /** Dequantizing the Marlin weight into that dense W (timed for M >= 128 only), else null. */
  dequantUs: number | null;
  /** Packed weight + processed scales + global scale. */
  weightBytes: number;
  /** The kernel's work split. */
  plan: string;
}

export interface GemmBenchReport {
  device: string;
  /** "cublasGemmEx", or why cuBLAS was not timed. */
  cublas: string;
  /** Device-to-device copy bandwidth, bytes read + written, GB/s. */
  copyGBs: number;
  l2Bytes: number;
  rows: GemmBenchRow[];
}

export interface GemmBenchInput {
  /** [n, k] pairs. */
  shapes: [number, number][];
  ms: number[];
  dtype: ActDtype;
  iters?: number;
  warmup?: number;
}

interface GemmAddon {
  gemmMarlin(input: MarlinGemmInput, backend?: Backend): Promise<Float32Array>;
  gemmBench(input: GemmBenchInput): Promise<GemmBenchReport>;
  gemmReference(input: ReferenceGemmInput, backend?: Backend): Promise<Float32Array>;
  gpuGemmEngine(): string;
  columnErrors(y: Float32Array, ref: Float32Array, shape: ColumnShape): Promise<ColumnErrors>;
}

function native(): NativeAddon & GemmAddon {
  return addon() as NativeAddon & GemmAddon;
}

/** X @ W^T read from the converted Marlin tensors: Float32Array [m, n]. */
export function gemmMarlin(input: MarlinGemmInput, backend: Backend = 'cpu'): Promise<Float32Array> {
  return native().gemmMarlin(input, backend);
}

/**
 * The fast Marlin GEMM and cuBLAS timed on the GPU (random weights, rotated through more than
 * twice the L2; CUDA events; medians). Rejects with "CUDA unavailable: …" without a usable GPU.
 */
export function gemmBench(input: GemmBenchInput): Promise<GemmBenchReport> {
  return native().gemmBench(input);
}

/**
 * X @ W^T with W dequantized from the NVFP4 source (FORMAT.md section 1). On CUDA the product is
 * cuBLAS's SGEMM when libcublas loads, else a plain kernel (see referenceEngine).
 */
export function gemmReference(input: ReferenceGemmInput, backend: Backend = 'cpu'): Promise<Float32Array> {
  return native().gemmReference(input, backend);
}

/** What the reference GEMM multiplies with on a backend, e.g. "cublas (libcublas.so.13)". */
export function referenceEngine(backend: Backend): string {
  return backend === 'cuda' ? native().gpuGemmEngine() : 'cpu';
}

// One scratch float for f32Bits: a fresh typed array per value made the activations of a large
// K take seconds of the main thread.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function f32Bits(v: number): number {
  scratchF32[0] = v;
  return scratchU32[0]!;
}

/** float16 bits of a value that float16 holds exactly (a normal number or 0). */
function halfBitsExact(v: number): number {
  if (v === 0) return 0;
  const x = f32Bits(v);
  return ((x >>> 16) & 0x8000) | ((((x >>> 23) & 0xff) - 112) << 10) | ((x & 0x7fffff) >>> 13);
}

/**
 * Deterministic activations [m, k] for a seed: multiples of 1/64 in (-4, 4) with a roughly
 * bell-shaped spread (sum of two uniforms), exact in both float16 and bfloat16, so the same
 * values feed both dtypes.
 */
export function randomActivations(m: number, k: number, dtype: ActDtype, seed: number): Buffer {
  // A value is (a + b − 127) / 64 with a, b in [0, 128): its bits come from a table of the 255
  // sums (a lookup per value instead of a conversion made the activations of a run 10× faster).
  const bitsOf = new Uint16Array(255);
  for (let sum = 0; sum < 255; sum++) {
    const v = (sum - 127) / 64;
    bitsOf[sum] = dtype === 'bfloat16' ? f32Bits(v) >>> 16 : halfBitsExact(v);
  }
  const out = Buffer.alloc(m * k * 2);
  // The values as 16-bit words where the machine is little-endian, as the bytes are (Buffer.alloc
  // gives memory of its own, aligned).
  const words = LITTLE_ENDIAN ? new Uint16Array(out.buffer, out.byteOffset, m * k) : undefined;
  let s = (Math.imul(seed + 1, 2654435761) >>> 0) || 1;
  for (let i = 0; i < m * k; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    const a = s & 127;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    const bits = bitsOf[a + (s & 127)]!;
    if (words) words[i] = bits;
    else out.writeUInt16LE(bits, 2 * i);
  }
  return out;
}

export interface GemmError {
  /** ||y - ref|| / ||ref|| (Frobenius); 0 when both are 0, Infinity when only ref is. */
  rel: number;
  /** max |y - ref|. */
  maxAbs: number;
  /** Elements of y that are NaN or infinite. */
  nonFinite: number;
}

/** Compares y with ref (both [m, n]); y may be wider (cols), taking columns [col0, col0+n). */
export function gemmError(y: Float32Array, ref: Float32Array, shape?: { m: number; n: number; cols: number; col0: number }): GemmError {
  const m = shape?.m ?? 1;
  const n = shape?.n ?? ref.length;
  const cols = shape?.cols ?? n;
  const col0 = shape?.col0 ?? 0;
  let d2 = 0;
  let r2 = 0;
  let maxAbs = 0;
  let nonFinite = 0;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      const a = y[i * cols + col0 + j]!;
      const b = ref[i * n + j]!;
      if (!Number.isFinite(a)) {
        nonFinite++;
        continue;
      }
      const d = a - b;
      d2 += d * d;
      r2 += b * b;
      if (Math.abs(d) > maxAbs) maxAbs = Math.abs(d);
    }
  }
  const rel = nonFinite > 0 ? Infinity : r2 > 0 ? Math.sqrt(d2 / r2) : d2 > 0 ? Infinity : 0;
  return { rel, maxAbs: nonFinite > 0 ? Infinity : maxAbs, nonFinite };
}

/**
 * Whole-matrix relative Frobenius bounds against vLLM's golden GEMM outputs
 * (fixtures/golden/README.md), for the kernel tests; verify judges per column (columnErrors).
 */
export function defaultTolerance(dtype: ActDtype): number {
  return dtype === 'float16' ? 2e-3 : 1e-2;
}

export interface ColumnErrors {
  /**
   * The largest column error over the output columns: for column j,
   * ||y_j - ref_j|| / max(||ref_j||, ||ref||_F / sqrt(n)) over the m rows. A column far below
   * the layer's typical magnitude (cancellation at small M) is judged against the typical one.
   */
  rel: number;
  /** The column where rel was found. */
  column: number;
  /** max |y - ref| over all elements. */
  maxAbs: number;
  /** The whole-matrix relative Frobenius error (information: it dilutes one bad column by sqrt(n)). */
  frobenius: number;
  /** Elements of y that are NaN or infinite (rel and maxAbs are then Infinity). */
  nonFinite: number;
}

/** Where y and ref lie in their buffers (see columnErrors). */
export interface ColumnShape {
  m: number;
  n: number;
  /** Columns of y (default n), of which [col0, col0 + n) are judged. */
  cols?: number;
  col0?: number;
  /** First row of y judged. */
  row0?: number;
  /** First row and columns of ref (default 0 and n). */
  refRow0?: number;
  refCols?: number;
}

/**
 * Per-column judging of y against ref (both [m, n]; y may be wider: cols, taking columns
 * [col0, col0+n), and may hold more rows: rows [row0, row0+m)). One flipped nibble or scale
 * byte changes one column: its error does not shrink with N as the whole-matrix error does.
 * Native (verify_cpu.cc column_errors), on a pool thread: the main thread only waits.
 */
export function columnErrors(y: Float32Array, ref: Float32Array, shape: ColumnShape): Promise<ColumnErrors> {
  return native().columnErrors(y, ref, shape);
}

/**
 * The value of weight_scale_2 that the converted checkpoint keeps: layout v1 stores it rounded
 * to the activation dtype (FORMAT.md section 3), v2 exactly (float32, divided by a power of
 * two). The reference GEMM multiplies with it, so that a correct conversion matches to
 * float32 accumulation order and a per-column bound far below one weight's worth holds.
 */
export function keptGlobalScale(ws2: number, layout: LayoutVersion, dtype: ActDtype): number {
  if (layout === 'v2') return Math.fround(ws2);
  // v1's stored bits are the rounded value times 2^(bias - 7) (layout.h exponent_bias: 126
  // for bfloat16, 14 for float16), an exact power of two.
  const bits = addon().processGlobalScale(ws2, { layout, dtype, sf: 1 }).readUInt16LE(0);
  if (dtype === 'bfloat16') return new Float32Array(new Uint32Array([(bits << 16) >>> 0]).buffer)[0]! / 2 ** 119;
  const e = (bits >> 10) & 0x1f;
  const mant = bits & 0x3ff;
  return (e === 0 ? mant * 2 ** -24 : (1 + mant / 1024) * 2 ** (e - 15)) / 2 ** 7;
}

/** What multiplies in a GEMM check, and how precisely (one place to choose the kernels). */
export interface GemmEngine {
  /** For the report, e.g. "cpu" or "cublas (libcublas.so.13)". */
  reference: string;
  /**
   * The Marlin kernel's output rows depend only on their own activation rows and its code
   * path not on M: all Ms go through one launch, the rows split afterwards, with the same
   * numbers. False for a kernel with M-dependent tiles (the fast CUDA kernel): still one call,
   * which launches it once per M (MarlinGemmInput.splitM). The reference is always one call
   * over every M's rows.
   */
  marlinRowwise: boolean;
  /**
   * Default bound on the per-column error: both kernels dequantize exactly and accumulate in
   * float32, so a correct conversion differs only by summation order (about 1e-6 at K = 16k);
   * one wrong nibble or scale byte moves its column by 1e-3 or more (README, verify).
   */
  tolerance(dtype: ActDtype): number;
  marlin(input: MarlinGemmInput): Promise<Float32Array>;
  referenceGemm(input: ReferenceGemmInput): Promise<Float32Array>;
}

/** Per-column bound of the float32 engines (see GemmEngine.tolerance). */
export const EXACT_ENGINE_TOLERANCE = 1e-4;

/**
 * The GEMM engine of a backend. A faster Marlin kernel (tensor cores, rounded weights) plugs
 * in here with its own tolerance and rowwise flag; verify calls nothing else.
 */
export function gemmEngine(backend: Backend): GemmEngine {
  return {
    reference: referenceEngine(backend),
    // The CPU kernel walks K in the same order for every row whatever M is; the CUDA default
    // (the fast tensor-core kernel, float32 accumulation of exact products, within 2e-6 of the
    // simple kernel: bench/notes/gemm.md) picks its split by M.
    marlinRowwise: backend === 'cpu',
    tolerance: () => EXACT_ENGINE_TOLERANCE,
    marlin: (input) => gemmMarlin(input, backend),
    referenceGemm: (input) => gemmReference(input, backend),
  };
}
