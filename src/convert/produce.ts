// Produces the bytes of one output tensor, as a sequence of chunks handed to `emit`, so that a
// copy or an MoE stack is streamed (one chunk or one batch of experts at a time), never held whole.
// Block scales re-encoded onto a fused group's shared global are re-encoded here, in the read
// buffer and before the transform, so the CPU and GPU backends see the same bytes.
import { readTensorInto, type Checkpoint } from '../checkpoint/model-dir.js';
import { readTensorsInto, tensorsBytes } from '../checkpoint/read-batch.js';
import type { MoeStack, OutputTensor } from '../plan/plan.js';
import { asInputError, sliceRange, type LinearSource } from '../plan/linears.js';
import type { Scheme } from '../format/quant-config.js';
import { permuteBias, toBf16 } from '../transform/bias.js';
import { MXFP4_GROUP, mxfp4ScaleBytes, processMxfp4ScalesStack } from '../transform/mxfp4.js';
import { readSource } from '../plan/source-bytes.js';
import { DTYPE_SIZE } from '../safetensors/index.js';
import {
  packedWeightBytes,
  processedScaleBytes,
  processGlobalScale,
  processScalesStack,
  repackWeightStack,
  type ActDtype,
  type Backend,
  type LayoutVersion,
  type LinearShape,
  type RowSlice,
} from '../transform/marlin.js';
import { reencodeInPlace } from '../transform/reencode.js';
import type { BufferPool } from './buffer-pool.js';
import { timed } from './profile.js';

// Chunks small enough to be written while still in the CPU cache: on the machines measured,
// writing from a cache-hot 1-4 MiB buffer is several times faster than from a large one.
const COPY_CHUNK = 4 * 1024 * 1024;
const SLICE_BYTES = 4 * 1024 * 1024;
// Experts of a stack per transform call. On the GPU each call has a fixed cost (streams,
// events, device memory, a synchronisation; about 0.45 ms per call on the H200 host) that small
// experts, one call each, paid tens of thousands of times: 16 MiB of input or output per call
// makes it small against the call's transfers, and keeps the buffers in flight (two inputs and
// two outputs per shard, four shards at once) near 256 MiB. On the CPU a call's output is
// written right after it, while in cache: with 2 MiB batches the 2-core VM's write calls took
// 0.36 s for a 1 GB MoE, with 4 MiB ones 1.29 s (its cores have 2 MiB of L2 each).
// MARLIN_FP4_BATCH_BYTES overrides both (benchmarks, and tests of the batching).
const BATCH_BYTES_OVERRIDE = Number(process.env.MARLIN_FP4_BATCH_BYTES) || undefined;
const GPU_BATCH_BYTES = 16 * 1024 * 1024;
const CPU_BATCH_BYTES = 2 * 1024 * 1024;

/** Row slices of K/16 rows, each about SLICE_BYTES of output, aligned to `step` rows. */
function slices(rows: number, bytesPerRow: number, step: number): RowSlice[] {
  const per = Math.max(step, Math.floor(SLICE_BYTES / bytesPerRow / step) * step);
  const out: RowSlice[] = [];
  for (let r = 0; r < rows; r += per) out.push({ rowBegin: r, rowEnd: Math.min(rows, r + per) });
  return out;
}

export interface ProduceContext {
  ckpt: Checkpoint;
  /** The plan's scheme: which scale processing (NVFP4's or MXFP4's) the scales get. */
  scheme: Scheme;
  layout: LayoutVersion;
  dtype: ActDtype;
  backend: Backend;
  pool: BufferPool;
  /** Buffers of the copied tensors (never pinned: they do not go to the GPU). */
  copyPool: BufferPool;
  /** Input bytes consumed, for progress. */
  onInput(bytes: number): void;
}

/**
 * Hands a chunk to the writer. It may return before the bytes are written (the write overlaps
 * the next read and transform); `release` runs once they are, and frees the chunk's buffer.
 */
export type Emit = (chunk: Uint8Array, release?: () => void) => Promise<void>;

/** Runs a transform; its errors become the user's, naming the shard file too. */
async function relabel<T>(ctx: ProduceContext, run: () => Promise<T> | T): Promise<T> {
  try {
    return await run();
  } catch (e) {
    asInputError(ctx.ckpt, e);
  }
}

/** A tensor's bytes (or the slice of them that one expert owns) in a pooled buffer; give it back to ctx.pool when done. */
async function read(ctx: ProduceContext, { name, slice }: Input): Promise<Buffer> {
  const e = ctx.ckpt.tensors.get(name)!.entry;
  const { begin, end } = sliceRange({ slice }, e.end - e.begin);
  const b = ctx.pool.take(end - begin);
  await timed('read', readTensorInto(ctx.ckpt, name, begin, b));
  ctx.onInput(b.length);
  return b;
}

/** A tensor to read: whole, or one expert's slice of it (LinearSource.slice). */
type Input = { name: string; slice?: LinearSource['slice'] };
const weightOf = (lin: LinearSource): Input => ({ name: lin.weight, slice: lin.slice });
const scaleOf = (lin: LinearSource): Input => ({ name: lin.scale, slice: lin.slice });

/** Reads tensors into pooled buffers, runs `use`, and returns the buffers to the pool. */
async function withInputs<T>(ctx: ProduceContext, inputs: (Input | string)[], use: (data: Buffer[]) => Promise<T>): Promise<T> {
  const data: Buffer[] = [];
  try {
    for (const n of inputs) data.push(await read(ctx, typeof n === 'string' ? { name: n } : n));
    return await use(data);
  } finally {
    for (const d of data) ctx.pool.give(d);
  }
}

export async function produce(ctx: ProduceContext, t: OutputTensor, emit: Emit): Promise<void> {
  const p = t.producer;
  const opts = { layout: ctx.layout, dtype: ctx.dtype };
  switch (p.kind) {
    case 'copy': {
      const e = ctx.ckpt.tensors.get(p.tensor)!.entry;
      const size = e.end - e.begin;
      for (let off = 0; off < size; off += COPY_CHUNK) {
        const chunk = ctx.copyPool.take(Math.min(COPY_CHUNK, size - off));
        await timed('read', readTensorInto(ctx.ckpt, p.tensor, off, chunk));
        ctx.onInput(chunk.length);
        await emit(chunk, () => ctx.copyPool.give(chunk));
      }
      return;
    }
    case 'dense-weight': {
      const { source, shape } = p.linear;
      await withInputs(ctx, [source.weight], (data) => emitWeight(ctx, source.weight, data, shape, emit));
      return;
    }
    case 'dense-scales': {
      const { source, shape, scales, reencoding } = p.linear;
      await withInputs(ctx, [source.scale], (data) => {
        if (reencoding) reencodeInPlace(data[0]!, reencoding);
        return emitScales(ctx, source.scale, data, shape, scales.sf, emit);
      });
      return;
    }
    case 'dense-global':
      await emit(await relabel(ctx, () => processGlobalScale(p.linear.source.global!, p.linear.ws2, { ...opts, sf: p.linear.scales.sf })));
      return;
    case 'input-scale': {
      const b = Buffer.alloc(4);
      b.writeFloatLE(p.value);
      await emit(b);
      return;
    }
    case 'bias': {
      // NVFP4 keeps the source dtype; MXFP4 casts to bfloat16 (the plan's dtype for it).
      const { source, shape } = p.linear;
      const out = Buffer.alloc(shape.np * DTYPE_SIZE[t.dtype]);
      const srcDtype = ctx.ckpt.tensors.get(source.bias!)!.entry.dtype;
      await withInputs(ctx, [source.bias!], async ([src]) => {
        const data = t.dtype === srcDtype ? src! : toBf16(src!, srcDtype);
        permuteBias(data, shape.n, shape.np, DTYPE_SIZE[t.dtype], out);
      });
      await emit(out);
      return;
    }
    case 'stack-bias': {
      // gpt-oss: each expert's row of the [E, N] bias, cast to bfloat16, padded and permuted.
      const { sources, part, bias } = p.stack;
      const srcDtype = ctx.ckpt.tensors.get(bias!)!.entry.dtype;
      const width = part.np * sources[0]!.length;
      for (const [e, lins] of sources.entries()) {
        const out = Buffer.alloc(width * 2);
        await withInputs(ctx, [{ name: bias!, slice: { index: e, count: sources.length } }], async ([src]) => {
          permuteBias(toBf16(src!, srcDtype), part.n * lins.length, width, 2, out);
        });
        await emit(out);
      }
      return;
    }
    case 'stack-weight':
    case 'stack-scales':
      await emitStack(ctx, p.stack, p.kind === 'stack-weight' ? 'weight' : 'scale', emit);
      return;
    case 'stack-global': {
      const { sources, ws2, scales } = p.stack;
      // One options object for every expert (a spread per expert cost about 10 µs each on Node 20).
      const scaled = { layout: opts.layout, dtype: opts.dtype, sf: scales.sf };
      const each = await Promise.all(ws2.map((w, e) => relabel(ctx, () => processGlobalScale(sources[e]![0]!.global!, w, scaled))));
      await emit(Buffer.concat(each));
      return;
    }
  }
}

/** A batch of a stack's experts: [begin, end), their input tensors read into one pooled buffer. */
interface ExpertBatch {
  begin: number;
  end: number;
  buffer: Buffer;
  /** inputs[e - begin]: expert e's parts, views into buffer. */
  inputs: Buffer[][];
  /** names[e - begin]: the tensor expert e's errors name (its first part's). */
  names: string[];
}

/**
 * An MoE stack's weight or block scales, a batch of experts per transform call: the CPU's
 * batches keep to CPU_BATCH_BYTES (written while in cache; an expert larger than SLICE_BYTES is
 * sliced by rows as a dense weight is), the GPU's to GPU_BATCH_BYTES. Each batch's tensors are
 * read into one pooled (on the GPU page-locked) buffer, the next batch while this one is
 * transformed. Every expert's bytes are the same whatever the batching.
 */
async function emitStack(ctx: ProduceContext, stack: MoeStack, what: 'weight' | 'scale', emit: Emit): Promise<void> {
  const { sources: experts, part, parts, scales } = stack;
  // gpt-oss, Llama-4, batched Nemotron-H: every expert is a part of shared 3-D tensors; read
  // (sliced, un-transposed) and transform expert by expert.
  if (experts[0]![0]!.slice || experts[0]![0]!.view) return emitSlicedStack(ctx, stack, what, emit);
  const inputNames = (e: number) => experts[e]!.map((lin) => lin[what]);
  const mxfp4 = ctx.scheme === 'mxfp4';
  const outPerExpert =
    what === 'weight' ? packedWeightBytes(part, parts.length) : mxfp4 ? mxfp4ScaleBytes(part, parts.length) : processedScaleBytes(part, parts.length);
  const inPerExpert = tensorsBytes(ctx.ckpt, inputNames(0));
  const budget = BATCH_BYTES_OVERRIDE ?? (ctx.backend === 'cuda' ? GPU_BATCH_BYTES : CPU_BATCH_BYTES);
  const per = Math.max(1, Math.floor(budget / Math.max(outPerExpert, inPerExpert)));

  const read = async (begin: number): Promise<ExpertBatch> => {
    const end = Math.min(experts.length, begin + per);
    const names = Array.from({ length: end - begin }, (_, i) => inputNames(begin + i));
    const flat = names.flat();
    const buffer = ctx.pool.take(tensorsBytes(ctx.ckpt, flat));
    try {
      const views = await timed('read', readTensorsInto(ctx.ckpt, flat, buffer));
      ctx.onInput(buffer.length);
      const inputs = names.map((_, i) => views.slice(i * parts.length, (i + 1) * parts.length));
      if (what === 'scale') {
        // A part whose global differs from its expert's shared one: its block scales re-encoded.
        for (const [i, data] of inputs.entries()) {
          for (const [j, d] of data.entries()) {
            const r = stack.reencodings[begin + i]?.[j];
            if (r) reencodeInPlace(d, r);
          }
        }
      }
      return { begin, end, buffer, inputs, names: names.map((n) => n[0]!) };
    } catch (e) {
      ctx.pool.give(buffer);
      throw e;
    }
  };

  let next: Promise<ExpertBatch> | undefined = read(0);
  try {
    while (next) {
      const batch: ExpertBatch = await next;
      next = batch.end < experts.length ? read(batch.end) : undefined;
      try {
        if (batch.end - batch.begin === 1) {
          // One expert: the dense path (the CPU slices a big one by rows).
          if (what === 'weight') await emitWeight(ctx, batch.names[0]!, batch.inputs[0]!, part, emit);
          else await emitScales(ctx, batch.names[0]!, batch.inputs[0]!, part, scales.sf, emit);
          continue;
        }
        const out = ctx.pool.take(outPerExpert * (batch.end - batch.begin));
        const backend = ctx.backend;
        try {
          if (what === 'weight') {
            await timed('transform', relabel(ctx, () => repackWeightStack(batch.names, batch.inputs, part, { out, backend })));
          } else if (mxfp4) {
            await timed('transform', relabel(ctx, () => processMxfp4ScalesStack(batch.names[0]!, batch.inputs, part, { out, backend })));
          } else {
            const opts = { layout: ctx.layout, dtype: ctx.dtype, sf: scales.sf, out, backend };
            await timed('transform', relabel(ctx, () => processScalesStack(batch.names, batch.inputs, part, opts)));
          }
        } catch (e) {
          ctx.pool.give(out);
          throw e;
        }
        await emitInChunks(ctx, out, emit, () => ctx.pool.give(out));
      } finally {
        ctx.pool.give(batch.buffer);
      }
    }
  } finally {
    // After a failure, the batch read ahead must land before its buffer goes back to the pool.
    if (next) await next.then((b) => ctx.pool.give(b.buffer), () => {});
  }
}

/** A stack whose experts are slices of shared tensors (gpt-oss): one expert per read and transform. */
async function emitSlicedStack(ctx: ProduceContext, stack: MoeStack, what: 'weight' | 'scale', emit: Emit): Promise<void> {
  const { sources, part, scales } = stack;
  for (const [e, lins] of sources.entries()) {
    await withParts(ctx, lins, what, (data) => {
      if (what === 'weight') return emitWeight(ctx, lins[0]!.weight, data, part, emit);
      data.forEach((d, j) => {
        const r = stack.reencodings[e]?.[j];
        if (r) reencodeInPlace(d, r);
      });
      return emitScales(ctx, lins[0]!.scale, data, part, scales.sf, emit);
    });
  }
}

/**
 * Linears' weights or scales in section 1's layout (a slice of a shared tensor, or a 3-D
 * tensor's part sliced and un-transposed: plan/source-bytes.ts), in pooled buffers for `use`.
 */
async function withParts<T>(ctx: ProduceContext, lins: LinearSource[], what: 'weight' | 'scale', use: (data: Buffer[]) => Promise<T>): Promise<T> {
  const data: Buffer[] = [];
  try {
    for (const lin of lins) {
      const src = await timed('read', readSource(ctx.ckpt, lin, what));
      const b = ctx.pool.take(src.length);
      src.copy(b);
      ctx.onInput(b.length);
      data.push(b);
    }
    return await use(data);
  } finally {
    for (const d of data) ctx.pool.give(d);
  }
}

/** Repacks one linear (or one expert's parts, concatenated) slice by slice. */
async function emitWeight(ctx: ProduceContext, name: string, parts: Buffer[], shape: LinearShape, emit: Emit): Promise<void> {
  const backend = ctx.backend;
  for (const rows of slicesFor(ctx, shape.kp / 16, packedWeightBytes(shape, parts.length, 1), 1)) {
    const out = ctx.pool.take(packedWeightBytes(shape, parts.length, rows.rowEnd - rows.rowBegin));
    await timed('transform', relabel(ctx, () => repackWeightStack(name, [parts], shape, { out, rows, backend })));
    await emitInChunks(ctx, out, emit, () => ctx.pool.give(out));
  }
}

/**
 * The CPU produces cache-sized slices that are written at once; the GPU gets the whole
 * tensor in one call (one transfer each way) and its result is written in chunks.
 */
function slicesFor(ctx: ProduceContext, rows: number, bytesPerRow: number, step: number): RowSlice[] {
  return ctx.backend === 'cuda' ? [{ rowBegin: 0, rowEnd: rows }] : slices(rows, bytesPerRow, step);
}

/**
 * Bytes a shard's writer may hold in writes whose write or hash is not done (coalesce.ts),
 * after the size of the pieces handed to it: room for two GPU pieces of 16 MiB and staged
 * bytes; two of the CPU's 4 MiB slices or copy chunks. Each shard in flight holds on to that
 * much: with 48 MiB on the CPU too, converting llama-8b with --device cpu peaked at 446 MB
 * of resident memory instead of about 205.
 */
export function inFlightBytes(backend: Backend): number {
  return backend === 'cuda' ? 3 * GPU_BATCH_BYTES : 2 * SLICE_BYTES;
}

/**
 * Hands a transform's output to the writer in pieces (each written and hashed as it comes):
 * the CPU's slices are cache-sized already; the GPU's outputs go in pieces of its batch size.
 * In 4 MiB pieces, the 128-expert MoE's GPU run took 4.31 s instead of 3.79 s (H200 host):
 * each piece is a write and a hash update, and each costs a round trip through the main thread.
 */
async function emitInChunks(ctx: ProduceContext, buf: Buffer, emit: Emit, release: () => void): Promise<void> {
  const piece = ctx.backend === 'cuda' ? GPU_BATCH_BYTES : SLICE_BYTES;
  if (buf.length <= piece) return emit(buf, release);
  let left = Math.ceil(buf.length / piece);
  const done = () => {
    if (--left === 0) release();
  };
  for (let off = 0; off < buf.length; off += piece) await emit(buf.subarray(off, off + piece), done);
}

/** Processes one linear's (or one expert's) block scales slice by slice. */
async function emitScales(ctx: ProduceContext, name: string, parts: Buffer[], shape: LinearShape, sf: number, emit: Emit): Promise<void> {
  const step = ctx.layout === 'v1' ? 2 : 1;
  const backend = ctx.backend;
  if (ctx.scheme === 'mxfp4') {
    // E8M0 bytes permuted (FORMAT.md 5.1): rows of K/32, no sf.
    for (const rows of slicesFor(ctx, shape.kp / MXFP4_GROUP, mxfp4ScaleBytes(shape, parts.length, 1), 1)) {
      const out = ctx.pool.take(mxfp4ScaleBytes(shape, parts.length, rows.rowEnd - rows.rowBegin));
      await timed('transform', relabel(ctx, () => processMxfp4ScalesStack(name, [parts], shape, { out, rows, backend })));
      await emitInChunks(ctx, out, emit, () => ctx.pool.give(out));
    }
    return;
  }
  for (const rows of slicesFor(ctx, shape.kp / 16, processedScaleBytes(shape, parts.length, 1), step)) {
    const out = ctx.pool.take(processedScaleBytes(shape, parts.length, rows.rowEnd - rows.rowBegin));
    await timed(
      'transform',
      relabel(ctx, () => processScalesStack(name, [parts], shape, { layout: ctx.layout, dtype: ctx.dtype, sf, out, rows, backend })),
    );
    await emitInChunks(ctx, out, emit, () => ctx.pool.give(out));
  }
}
