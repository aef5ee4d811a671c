// Produces the bytes of one output tensor, as a sequence of chunks handed to `emit`, so that a
// copy or an MoE stack is streamed (one chunk or one expert at a time), never held whole.
// Block scales re-encoded onto a fused group's shared global are re-encoded here, in the read
// buffer and before the transform, so the CPU and GPU backends see the same bytes.
import { readTensorInto, type Checkpoint } from '../checkpoint/model-dir.js';
import type { OutputTensor } from '../plan/plan.js';
import { asInputError } from '../plan/linears.js';
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

/** Row slices of K/16 rows, each about SLICE_BYTES of output, aligned to `step` rows. */
function slices(rows: number, bytesPerRow: number, step: number): RowSlice[] {
  const per = Math.max(step, Math.floor(SLICE_BYTES / bytesPerRow / step) * step);
  const out: RowSlice[] = [];
  for (let r = 0; r < rows; r += per) out.push({ rowBegin: r, rowEnd: Math.min(rows, r + per) });
  return out;
}

export interface ProduceContext {
  ckpt: Checkpoint;
  layout: LayoutVersion;
  dtype: ActDtype;
  backend: Backend;
  pool: BufferPool;
  /** Input bytes consumed, for progress. */
  onInput(bytes: number): void;
}

/**
 * Hands a chunk to the writer. It may return before the bytes are written (the write overlaps
 * the next read and transform); `release` runs once they are, and frees the chunk's buffer.
 */
export type Emit = (chunk: Uint8Array, release?: () => void) => Promise<void>;

/** Permutation of a v2 bias inside chunks of 32 (FORMAT.md section 4). */
const BIAS_PERM = [0, 1, 2, 3].flatMap((i) => [0, 1, 8, 9, 16, 17, 24, 25].map((j) => 2 * i + j));

/** Runs a transform; its errors become the user's, naming the shard file too. */
async function relabel<T>(ctx: ProduceContext, run: () => Promise<T> | T): Promise<T> {
  try {
    return await run();
  } catch (e) {
    asInputError(ctx.ckpt, e);
  }
}

/** A tensor's bytes in a pooled buffer; give it back to ctx.pool when done. */
async function read(ctx: ProduceContext, name: string): Promise<Buffer> {
  const e = ctx.ckpt.tensors.get(name)!.entry;
  const b = ctx.pool.take(e.end - e.begin);
  await timed('read', readTensorInto(ctx.ckpt, name, 0, b));
  ctx.onInput(b.length);
  return b;
}

/** Reads tensors into pooled buffers, runs `use`, and returns the buffers to the pool. */
async function withInputs<T>(ctx: ProduceContext, names: string[], use: (data: Buffer[]) => Promise<T>): Promise<T> {
  const data: Buffer[] = [];
  try {
    for (const n of names) data.push(await read(ctx, n));
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
        const chunk = ctx.pool.take(Math.min(COPY_CHUNK, size - off));
        await timed('read', readTensorInto(ctx.ckpt, p.tensor, off, chunk));
        ctx.onInput(chunk.length);
        await emit(chunk, () => ctx.pool.give(chunk));
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
      await emit(await relabel(ctx, () => processGlobalScale(p.linear.source.global, p.linear.ws2, { ...opts, sf: p.linear.scales.sf })));
      return;
    case 'input-scale': {
      const b = Buffer.alloc(4);
      b.writeFloatLE(p.value);
      await emit(b);
      return;
    }
    case 'bias': {
      const { source, shape } = p.linear;
      const size = DTYPE_SIZE[t.dtype];
      const out = Buffer.alloc(shape.np * size);
      await withInputs(ctx, [source.bias!], async ([src]) => {
        for (let i = 0; i < shape.np; i++) {
          const from = Math.floor(i / 32) * 32 + BIAS_PERM[i % 32]!;
          // Columns past N are v2's zero padding.
          if (from < shape.n) src!.copy(out, i * size, from * size, (from + 1) * size);
        }
      });
      await emit(out);
      return;
    }
    case 'stack-weight': {
      const { group, part, parts } = p.stack;
      for (const ex of group.experts) {
        const names = parts.map((role) => ex[role].weight);
        await withInputs(ctx, names, (data) => emitWeight(ctx, names[0]!, data, part, emit));
      }
      return;
    }
    case 'stack-scales': {
      const { group, part, parts, scales, reencodings } = p.stack;
      for (const [e, ex] of group.experts.entries()) {
        const names = parts.map((role) => ex[role].scale);
        await withInputs(ctx, names, (data) => {
          data.forEach((d, i) => {
            const r = reencodings[e]![i];
            if (r) reencodeInPlace(d, r);
          });
          return emitScales(ctx, names[0]!, data, part, scales.sf, emit);
        });
      }
      return;
    }
    case 'stack-global': {
      const { group, parts, ws2, scales } = p.stack;
      const each = await Promise.all(ws2.map((w, e) => relabel(ctx, () => processGlobalScale(group.experts[e]![parts[0]!].global, w, { ...opts, sf: scales.sf }))));
      await emit(Buffer.concat(each));
      return;
    }
  }
}

/** Repacks one linear (or one expert's parts, concatenated) slice by slice. */
async function emitWeight(ctx: ProduceContext, name: string, parts: Buffer[], shape: LinearShape, emit: Emit): Promise<void> {
  const backend = ctx.backend;
  for (const rows of slicesFor(ctx, shape.kp / 16, packedWeightBytes(shape, parts.length, 1), 1)) {
    const out = ctx.pool.take(packedWeightBytes(shape, parts.length, rows.rowEnd - rows.rowBegin));
    await timed('transform', relabel(ctx, () => repackWeightStack(name, [parts], shape, { out, rows, backend })));
    await emitInChunks(out, emit, () => ctx.pool.give(out));
  }
}

/**
 * The CPU produces cache-sized slices that are written at once; the GPU gets the whole
 * tensor in one call (one transfer each way) and its result is written in chunks.
 */
function slicesFor(ctx: ProduceContext, rows: number, bytesPerRow: number, step: number): RowSlice[] {
  return ctx.backend === 'cuda' ? [{ rowBegin: 0, rowEnd: rows }] : slices(rows, bytesPerRow, step);
}

async function emitInChunks(buf: Buffer, emit: Emit, release: () => void): Promise<void> {
  if (buf.length <= SLICE_BYTES) return emit(buf, release);
  let left = Math.ceil(buf.length / SLICE_BYTES);
  const done = () => {
    if (--left === 0) release();
  };
  for (let off = 0; off < buf.length; off += SLICE_BYTES) await emit(buf.subarray(off, off + SLICE_BYTES), done);
}

/** Processes one linear's (or one expert's) block scales slice by slice. */
async function emitScales(ctx: ProduceContext, name: string, parts: Buffer[], shape: LinearShape, sf: number, emit: Emit): Promise<void> {
  const step = ctx.layout === 'v1' ? 2 : 1;
  const backend = ctx.backend;
  for (const rows of slicesFor(ctx, shape.kp / 16, processedScaleBytes(shape, parts.length, 1), step)) {
    const out = ctx.pool.take(processedScaleBytes(shape, parts.length, rows.rowEnd - rows.rowBegin));
    await timed(
      'transform',
      relabel(ctx, () => processScalesStack(name, [parts], shape, { layout: ctx.layout, dtype: ctx.dtype, sf, out, rows, backend })),
    );
    await emitInChunks(out, emit, () => ctx.pool.give(out));
  }
}
