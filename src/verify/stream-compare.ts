// Byte comparisons of things of any size in pieces of bounded size: two files, or one tensor
// of the output against one of the source. Memory is two pooled chunks per comparison,
// whatever the size (a 4 GiB embedding compares like a 4 KiB one).
import { open } from 'node:fs/promises';
import { readTensorInto, type Checkpoint } from '../checkpoint/model-dir.js';
import type { BufferPool } from '../convert/buffer-pool.js';
import { diffBytes } from './bytes.js';

/** Bytes per piece: the size convert copies in. */
export const COMPARE_CHUNK = 4 * 1024 * 1024;

export interface Difference {
  /** Bytes that differ (within the shorter length, plus the difference in length). */
  count: number;
  /** First differing byte, -1 when equal. */
  first: number;
}

/** Walks [0, size) in chunks, filling a buffer of each side per chunk, and diffs them. */
async function compareChunks(
  size: number,
  pool: BufferPool,
  fill: (offset: number, a: Buffer, b: Buffer) => Promise<void>,
): Promise<Difference> {
  let count = 0;
  let first = -1;
  for (let off = 0; off < size; off += COMPARE_CHUNK) {
    const len = Math.min(COMPARE_CHUNK, size - off);
    const a = pool.take(len);
    const b = pool.take(len);
    try {
      await fill(off, a, b);
      if (a.equals(b)) continue;
      const d = diffBytes(a, b);
      count += d.count;
      if (first < 0) first = off + d.first;
    } finally {
      pool.give(a);
      pool.give(b);
    }
  }
  return { count, first };
}

/** Compares tensor `name` of two checkpoints (same byte length, checked by the caller). */
export function compareTensors(a: Checkpoint, b: Checkpoint, name: string, pool: BufferPool, onBytes?: (n: number) => void): Promise<Difference> {
  const e = a.tensors.get(name)!.entry;
  return compareChunks(e.end - e.begin, pool, async (off, x, y) => {
    await Promise.all([readTensorInto(a, name, off, x), readTensorInto(b, name, off, y)]);
    onBytes?.(2 * x.length);
  });
}

/** Compares two files (a differing size is a difference at the shorter length). */
export async function compareFiles(pathA: string, pathB: string, pool: BufferPool): Promise<Difference & { sizeA: number; sizeB: number }> {
  const [fa, fb] = await Promise.all([open(pathA, 'r'), open(pathB, 'r')]);
  try {
    const [sa, sb] = await Promise.all([fa.stat(), fb.stat()]);
    const common = Math.min(sa.size, sb.size);
    const d = await compareChunks(common, pool, async (off, x, y) => {
      await Promise.all([readFully(fa, x, off), readFully(fb, y, off)]);
    });
    const extra = Math.abs(sa.size - sb.size);
    return { count: d.count + extra, first: d.first >= 0 ? d.first : extra ? common : -1, sizeA: sa.size, sizeB: sb.size };
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}

async function readFully(f: import('node:fs/promises').FileHandle, buf: Buffer, position: number): Promise<void> {
  for (let done = 0; done < buf.length; ) {
    const { bytesRead } = await f.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) throw new Error(`file shorter than expected at byte ${position + done}`);
    done += bytesRead;
  }
}
