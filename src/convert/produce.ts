// Produces the bytes of one output tensor, as a sequence of chunks handed to `emit`, so that a
// copy or an MoE stack is streamed (one chunk or one expert at a time), never held whole.
import { readTensor, readTensorRange, type Checkpoint } from '../checkpoint/model-dir.js';
import { InputError } from '../errors.js';
import type { OutputTensor } from '../plan/plan.js';
import { where } from '../plan/linears.js';
import { DTYPE_SIZE } from '../safetensors/index.js';
import {
  packedWeightBytes,
  processedScaleBytes,
  processGlobalScale,
  processScalesStack,
  repackWeightStack,
  TransformError,
  type ActDtype,
  type LayoutVersion,
} from '../transform/marlin.js';
import type { BufferPool } from './buffer-pool.js';

const COPY_CHUNK = 64 * 1024 * 1024;

export interface ProduceContext {
  ckpt: Checkpoint;
  layout: LayoutVersion;
  dtype: ActDtype;
  pool: BufferPool;
  /** Input bytes consumed, for progress. */
  onInput(bytes: number): void;
}

type Emit = (chunk: Uint8Array) => Promise<void>;

/** Permutation of a v2 bias inside chunks of 32 (FORMAT.md section 4). */
const BIAS_PERM = [0, 1, 2, 3].flatMap((i) => [0, 1, 8, 9, 16, 17, 24, 25].map((j) => 2 * i + j));

async function relabel<T>(ctx: ProduceContext, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (e) {
    if (e instanceof TransformError) throw new InputError(`${where(ctx.ckpt, e.tensor)}: ${e.reason}`);
    throw e;
  }
}

async function read(ctx: ProduceContext, name: string): Promise<Buffer> {
  const b = await readTensor(ctx.ckpt, name);
  ctx.onInput(b.length);
  return b;
}

export async function produce(ctx: ProduceContext, t: OutputTensor, emit: Emit): Promise<void> {
  const p = t.producer;
  const opts = { layout: ctx.layout, dtype: ctx.dtype };
  switch (p.kind) {
    case 'copy': {
      const size = ctx.ckpt.tensors.get(p.tensor)!.entry.end - ctx.ckpt.tensors.get(p.tensor)!.entry.begin;
      for (let off = 0; off < size; off += COPY_CHUNK) {
        const chunk = await readTensorRange(ctx.ckpt, p.tensor, off, Math.min(COPY_CHUNK, size - off));
        ctx.onInput(chunk.length);
        await emit(chunk);
      }
      return;
    }
    case 'dense-weight': {
      const { source, shape } = p.linear;
      const out = ctx.pool.take(packedWeightBytes(shape));
      await relabel(ctx, async () => repackWeightStack(source.weight, [[await read(ctx, source.weight)]], shape, out));
      await emit(out);
      ctx.pool.give(out);
      return;
    }
    case 'dense-scales': {
      const { source, shape, scales } = p.linear;
      const out = ctx.pool.take(processedScaleBytes(shape));
      await relabel(ctx, async () =>
        processScalesStack(source.scale, [[await read(ctx, source.scale)]], shape, { ...opts, sf: scales.sf, out }),
      );
      await emit(out);
      ctx.pool.give(out);
      return;
    }
    case 'dense-global':
      await emit(relabelSync(ctx, () => processGlobalScale(p.linear.source.global, p.linear.ws2, { ...opts, sf: p.linear.scales.sf })));
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
      const src = await read(ctx, source.bias!);
      const padded = Buffer.alloc(shape.np * size);
      src.copy(padded);
      const out = Buffer.alloc(padded.length);
      for (let i = 0; i < shape.np; i++) {
        const from = Math.floor(i / 32) * 32 + BIAS_PERM[i % 32]!;
        padded.copy(out, i * size, from * size, (from + 1) * size);
      }
      await emit(out);
      return;
    }
    case 'stack-weight': {
      const { group, part, parts } = p.stack;
      const out = ctx.pool.take(packedWeightBytes(part, parts.length));
      for (const ex of group.experts) {
        const data: Buffer[] = [];
        for (const role of parts) data.push(await read(ctx, ex[role].weight));
        await relabel(ctx, () => repackWeightStack(ex[parts[0]!].weight, [data], part, out));
        await emit(out);
      }
      ctx.pool.give(out);
      return;
    }
    case 'stack-scales': {
      const { group, part, parts, scales } = p.stack;
      const out = ctx.pool.take(processedScaleBytes(part, parts.length));
      for (const ex of group.experts) {
        const data: Buffer[] = [];
        for (const role of parts) data.push(await read(ctx, ex[role].scale));
        await relabel(ctx, () => processScalesStack(ex[parts[0]!].scale, [data], part, { ...opts, sf: scales.sf, out }));
        await emit(out);
      }
      ctx.pool.give(out);
      return;
    }
    case 'stack-global': {
      const { group, parts, ws2, scales } = p.stack;
      const each = ws2.map((w, e) => relabelSync(ctx, () => processGlobalScale(group.experts[e]![parts[0]!].global, w, { ...opts, sf: scales.sf })));
      await emit(Buffer.concat(each));
      return;
    }
  }
}

function relabelSync<T>(ctx: ProduceContext, run: () => T): T {
  try {
    return run();
  } catch (e) {
    if (e instanceof TransformError) throw new InputError(`${where(ctx.ckpt, e.tensor)}: ${e.reason}`);
    throw e;
  }
}
