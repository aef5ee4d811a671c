// Reads of many tensors at once: an MoE layer has hundreds of small expert tensors, and one
// read per tensor costs more in round trips than in bytes. Tensors that lie back to back in a
// shard are read with one positional read, the rest side by side (a bounded number at once),
// all into one caller-owned buffer (a pooled, page-locked one when it feeds the GPU).
import { InputError } from '../errors.js';
import { SafetensorsError } from '../safetensors/index.js';
import { addon } from '../transform/addon.js';
import { readTensor, shardPositions, type Checkpoint } from './model-dir.js';

/** Reads in flight at once: libuv runs 4 file operations side by side by default. */
export const READS_AT_ONCE = 4;

/**
 * Runs `fn` over `items`, at most `limit` at a time; results in the items' order. On failure it
 * throws what a serial loop would: the error of the first failing item in order (items are
 * started in order, none after a failed one, and those before it still finish), so the message
 * does not depend on timing or core count.
 */
export async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  const errors = new Map<number, unknown>();
  let firstBad = Infinity;
  let next = 0;
  const lane = async () => {
    while (next < items.length && next < firstBad) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!, i);
      } catch (e) {
        errors.set(i, e);
        firstBad = Math.min(firstBad, i);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
  if (errors.size > 0) throw errors.get(firstBad);
  return out;
}

/** Bytes the tensors take together (what readTensorsInto needs). */
export function tensorsBytes(ckpt: Checkpoint, names: readonly string[]): number {
  return names.reduce((a, n) => {
    const e = ckpt.tensors.get(n)?.entry;
    if (!e) throw new InputError(`${ckpt.dir}: tensor ${n}: missing`);
    return a + e.end - e.begin;
  }, 0);
}

interface Run {
  shard: string;
  names: string[];
  offset: number;
  bytes: number;
}

/**
 * Fills `target` (tensorsBytes long) with the tensors `names` and returns a view of each, in
 * the order given. Inside `target` the tensors lie in file order, so a run of tensors that are
 * adjacent in their shard is one read.
 */
export async function readTensorsInto(ckpt: Checkpoint, names: readonly string[], target: Buffer, limit = READS_AT_ONCE): Promise<Buffer[]> {
  const refs = names.map((n) => {
    const r = ckpt.tensors.get(n);
    if (!r) throw new InputError(`${ckpt.dir}: tensor ${n}: missing`);
    return r;
  });
  // Sort keys looked up once per tensor, not twice per comparison (an MoE's 9,216 global
  // scales are read in one batch).
  const shardIndex = shardPositions(ckpt);
  const shardOf = refs.map((r) => shardIndex.get(r.shard)!);
  const beginOf = refs.map((r) => r.entry.begin);
  const order = refs.map((_, i) => i);
  order.sort((a, b) => shardOf[a]! - shardOf[b]! || beginOf[a]! - beginOf[b]!);
  const views = new Array<Buffer>(names.length);
  const runs: Run[] = [];
  let offset = 0;
  let prevEnd = -1;
  for (const i of order) {
    const { shard, entry } = refs[i]!;
    const size = entry.end - entry.begin;
    if (offset + size > target.length) throw new RangeError(`readTensorsInto: ${target.length} bytes cannot hold ${names.length} tensors`);
    const run = runs.at(-1);
    if (run && run.shard === shard && entry.begin === prevEnd) {
      run.names.push(entry.name);
      run.bytes += size;
    } else {
      runs.push({ shard, names: [entry.name], offset, bytes: size });
    }
    views[i] = target.subarray(offset, offset + size);
    offset += size;
    prevEnd = entry.end;
  }
  if (await readRunsNatively(ckpt, runs, target, limit)) return views;
  await mapLimited(runs, limit, (r) =>
    ckpt.readers
      .get(r.shard)!
      .readAdjacentInto(r.names, target.subarray(r.offset, r.offset + r.bytes))
      .catch((e) => {
        if (e instanceof SafetensorsError) throw new InputError(e.message);
        throw e;
      }),
  );
  return views;
}

// A native batched read (addon_io.cc) takes at least this many bytes or runs, unless the
// batch is smaller: a batch is split into at most `limit` of them, run side by side (as many
// reads at once as the per-run path has, for a disk that is not in the page cache).
const NATIVE_GROUP_BYTES = 4 * 1024 * 1024;
const NATIVE_GROUP_RUNS = 64;

/**
 * Reads the runs of local shards with few native calls instead of one fs/promises read each.
 * On the 2-core VM, reading 20,000 four-byte tensors 16 at a time cost 31 µs a read through
 * fs/promises (19 µs of it inside the call that hands the read to libuv's pool, waking a
 * pool thread), against 2.5 µs for a pread: an MoE with tens of thousands of expert
 * tensors spent most of its planning, and much of its block-scale scans, on the main thread
 * around reads. false: not done (a remote shard, or a native read failed, after which the
 * caller reads again its own way, so that its errors name the file and the tensor).
 */
async function readRunsNatively(ckpt: Checkpoint, runs: Run[], target: Buffer, limit: number): Promise<boolean> {
  if (runs.length === 0) return true;
  const total = runs.reduce((a, r) => a + r.bytes, 0);
  const groups = Math.max(1, Math.min(limit, runs.length, Math.max(Math.ceil(total / NATIVE_GROUP_BYTES), Math.ceil(runs.length / NATIVE_GROUP_RUNS))));
  const perGroup = { bytes: Math.ceil(total / groups), runs: Math.ceil(runs.length / groups) };
  // Consecutive runs of one shard, about equal in bytes and runs.
  const batches: Run[][] = [];
  let bytes = 0;
  for (const r of runs) {
    const cur = batches.at(-1);
    if (!cur || cur[0]!.shard !== r.shard || bytes >= perGroup.bytes || cur.length >= perGroup.runs) {
      batches.push([r]);
      bytes = r.bytes;
    } else {
      cur.push(r);
      bytes += r.bytes;
    }
  }
  const reads: Promise<void>[] = [];
  for (const batch of batches) {
    const reader = ckpt.readers.get(batch[0]!.shard)!;
    const ranges = new Float64Array(3 * batch.length);
    batch.forEach((r, i) => {
      const { position, bytes } = reader.adjacentRange(r.names);
      ranges.set([position, bytes, r.offset], 3 * i);
    });
    const read = reader.withFd((fd) => addon().readRanges(fd, target, ranges));
    if (!read) break;
    reads.push(read);
  }
  const settled = await Promise.allSettled(reads);
  return reads.length === batches.length && settled.every((s) => s.status === 'fulfilled');
}

/**
 * The bytes of many small tensors (an MoE's thousands of scalar global and input scales), in
 * the order named: those lying back to back in a shard in one read (checkpoint writers often
 * store them so, grouped by dtype), the rest `limit` at a time. When a read fails, the tensors
 * are read one by one, so the error names the first tensor in order that cannot be read.
 */
export async function readSmallTensors(ckpt: Checkpoint, names: readonly string[], limit: number): Promise<Buffer[]> {
  if (names.length === 0) return [];
  try {
    return await readTensorsInto(ckpt, names, Buffer.allocUnsafe(tensorsBytes(ckpt, names)), limit);
  } catch {
    return mapLimited(names, limit, (n) => readTensor(ckpt, n));
  }
}
