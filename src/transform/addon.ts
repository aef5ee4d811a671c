// Loads the compiled Node-API addon, from the package's native/build (package-root.ts).
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../package-root.js';

/** An opaque handle of a native SHA-256 in progress. */
export type Sha256Handle = { readonly __sha256: unique symbol };

export interface NativePart {
  data: Uint8Array;
  n: number;
  np?: number;
}

/**
 * The addon's calls. Bad arguments throw (TypeError/RangeError); a heavy call's failure
 * rejects with an Error whose message is the reason, except a negative or NaN block scale:
 * that error has code 'MFP4_BAD_BLOCK_SCALE' and says where it is (block-scales.ts reads it
 * and writes the one message).
 */
export interface NativeAddon {
  repackWeightStack(
    experts: NativePart[][],
    opts: { k: number; kp?: number; out?: Uint8Array; rowBegin?: number; rowEnd?: number },
  ): Promise<Buffer>;
  processScalesStack(
    experts: NativePart[][],
    opts: { k: number; kp?: number; layout: string; dtype: string; sf?: number; out?: Uint8Array; rowBegin?: number; rowEnd?: number },
  ): Promise<{ scales: Buffer; sf: number; zeroed: number | null }>;
  unpackWeight(
    data: Uint8Array,
    opts: { n: number; np?: number; k: number; kp?: number; rowWords?: number; wordOffset?: number },
  ): Promise<{ weight: Buffer; paddingNonzero: number }>;
  /** unpackWeight compared with `want` (U8 [n, k/2]) without handing the unpacked bytes back. */
  unpackCompare(
    data: Uint8Array,
    want: Uint8Array,
    opts: { n: number; np?: number; k: number; kp?: number; rowWords?: number; wordOffset?: number },
  ): Promise<{ count: number; first: number; got: number; paddingNonzero: number }>;
  decodeScales(
    data: Uint8Array,
    opts: { n: number; np?: number; k: number; kp?: number; layout: string; sf?: number; totalNp?: number; colOffset?: number },
  ): Promise<{ scales: Buffer; paddingNonzero: number }>;
  /**
   * decodeScales compared with what a correct conversion keeps of `want` (E4M3 [n, k/16], the
   * source's: v2's lost scales and -0 as 0) without handing the decoded scales back.
   */
  decodeCompare(
    data: Uint8Array,
    want: Uint8Array,
    opts: { n: number; np?: number; k: number; kp?: number; layout: string; sf?: number; totalNp?: number; colOffset?: number },
  ): Promise<{ count: number; first: number; got: number; lost: number; paddingNonzero: number }>;
  scanScales(data: Uint8Array): { maxByte: number; maxValue: number; badIndex: number; badByte: number; histogram: Float64Array };
  /** scanScales on a pool thread; `data` must not change until it resolves. */
  scanScalesAsync(data: Uint8Array): Promise<ReturnType<NativeAddon['scanScales']>>;
  scaleFactor(maxByte: number, opts: { layout: string; dtype: string }): number;
  processGlobalScale(ws2: number, opts: { layout: string; dtype: string; sf?: number }): Buffer;
  padShapeV2(n: number, k: number): { np: number; kp: number };
  setThreads(n: number): number;
  /**
   * Reads every range [file position, length, offset in target] (a Float64Array of such
   * triples) of the open file `fd` into `target`, on one pool thread (native/src/addon_io.cc).
   * Rejects with a plain message on a read error or an early end of file.
   */
  readRanges(fd: number, target: Uint8Array, ranges: Float64Array): Promise<void>;
  /** A SHA-256 in progress (native/src/addon_sha256.cc): bytes in order by sha256Update, each awaited before the next. */
  sha256New(): Sha256Handle;
  sha256Update(hash: Sha256Handle, chunks: Uint8Array[]): Promise<void>;
  /** The hex digest; the hash takes no more updates after it. */
  sha256Digest(hash: Sha256Handle): string;
  /** "cpu", or "cpu,cuda" when the addon was built with the CUDA backend. */
  backends: string;
  /**
   * GPU twins of the heavy calls: same arguments, same bytes and results. They reject
   * with "CUDA unavailable: <reason>" without a usable device, and with "built without CUDA
   * support" when the addon was built CPU-only (see `backends`).
   */
  gpuRepackWeightStack: NativeAddon['repackWeightStack'];
  gpuProcessScalesStack: NativeAddon['processScalesStack'];
  gpuUnpackWeight: NativeAddon['unpackWeight'];
  gpuUnpackCompare: NativeAddon['unpackCompare'];
  gpuDecodeScales: NativeAddon['decodeScales'];
  gpuDecodeCompare: NativeAddon['decodeCompare'];
  cudaStatus(): CudaStatus;
  /** cudaStatus() with the first call's driver and device probe on a pool thread. */
  cudaStatusAsync(): Promise<CudaStatus>;
  /** Testing hook: device allocations above `bytes` count as out of memory (0 = no limit). */
  gpuSetMemoryLimit(bytes: number): void;
  /**
   * A buffer of its own memory pages (page-aligned, shared with no other allocation), for
   * gpuPinHost; freed, and unpinned if still pinned, when collected.
   */
  gpuHostBuffer(size: number): Buffer;
  /**
   * Page-locks the buffer's bytes so that GPU calls copy from and to it by DMA (async, full
   * speed). false without a usable CUDA device or when the driver refuses (the buffer then
   * stays pageable: slower, still correct). Costs about as much as touching every page.
   */
  gpuPinHost(buffer: Uint8Array): boolean;
  /** Undoes gpuPinHost of that buffer (false if it was not pinned); no GPU call may be using it. */
  gpuUnpinHost(buffer: Uint8Array): boolean;
  /** Profile of the GPU calls (opt-in: {enable: true}); pinning counts are kept always. */
  gpuProfile(opts?: { enable?: boolean; reset?: boolean }): GpuProfile;
  /**
   * Creates the CUDA context on a pool thread (it takes a while), so that it overlaps what
   * comes next; false without a usable device.
   */
  gpuWarmup(): Promise<boolean>;
}

/**
 * Summed over the gpuRepackWeightStack / gpuProcessScalesStack calls made while profiling:
 * CUDA-event times of each stage (stream time: a copy waiting for a busy copy engine counts),
 * host time inside the calls, and bytes moved (pageableBytes: from or to unpinned memory).
 */
export interface GpuProfile {
  enabled: boolean;
  calls: number;
  h2dMs: number;
  kernelMs: number;
  d2hMs: number;
  wallMs: number;
  h2dBytes: number;
  d2hBytes: number;
  pageableBytes: number;
  pieces: number;
  pinned: number;
  pinnedBytes: number;
  pinFailures: number;
  pinMs: number;
  /** The driver and device probe behind cudaStatus(), once per process. */
  probeMs: number;
  /** Creation of the device's primary context, once per process (see gpuWarmup). */
  contextMs: number;
}

/** What the addon knows about CUDA. Without a usable device, `reason` says why. */
export interface CudaStatus {
  available: boolean;
  reason?: string;
  /** Visible CUDA devices (when a driver answered). */
  devices?: number;
  /** Name and compute capability ("9.0") of the device used (MARLIN_FP4_CUDA_DEVICE, default 0). */
  name?: string;
  capability?: string;
  /** e.g. "sm_80,sm_86,sm_89,sm_90"; "" in a build without CUDA. */
  compiledArchs: string;
}

export const ADDON_PATH = join(PACKAGE_ROOT, 'native', 'build', 'Release', 'marlin_fp4.node');

let cached: NativeAddon | undefined;

// Heavy calls run on worker threads (and on the GPU). Exiting while one runs tears the CUDA
// runtime down under it (static destructors), which can kill the process by a signal instead
// of the exit code asked for: the signal handlers wait for the calls in flight first.
const inFlight = new Set<Promise<unknown>>();

/** Resolves once no native call is in flight, or after `timeoutMs`, whichever comes first. */
export async function nativeCallsSettled(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (inFlight.size > 0 && Date.now() < deadline) {
    const left = deadline - Date.now();
    await Promise.race([Promise.allSettled([...inFlight]), new Promise((r) => setTimeout(r, left).unref())]);
  }
}

/** The addon's exports, each Promise it returns tracked in `inFlight`. */
function tracked(raw: Record<string, unknown>): NativeAddon {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(raw)) {
    if (typeof value !== 'function') {
      out[name] = value;
      continue;
    }
    const fn = value as (...args: unknown[]) => unknown;
    out[name] = (...args: unknown[]) => {
      const r = fn(...args);
      if (r instanceof Promise) {
        inFlight.add(r);
        const done = () => inFlight.delete(r);
        r.then(done, done);
      }
      return r;
    };
  }
  return out as unknown as NativeAddon;
}

export function addon(): NativeAddon {
  if (cached) return cached;
  if (!existsSync(ADDON_PATH)) {
    throw new Error(`native addon not built (${ADDON_PATH} is missing): run \`npm install\` or \`npm run build:native\``);
  }
  cached = tracked(createRequire(import.meta.url)(ADDON_PATH) as Record<string, unknown>);
  const threads = Number(process.env.MARLIN_FP4_THREADS ?? 0);
  if (Number.isInteger(threads) && threads > 0) cached.setThreads(threads);
  return cached;
}
