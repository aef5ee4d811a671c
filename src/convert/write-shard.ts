// Writes one output shard: header from the plan, then every tensor's bytes in order, with one
// write in flight while the next chunk is read and transformed, small tensors gathered into
// few writes (coalesce.ts), each write's bytes hashed beside it for the manifest.
import { join } from 'node:path';
import type { Checkpoint } from '../checkpoint/model-dir.js';
import type { OutputShard, Plan } from '../plan/plan.js';
import { fileError } from '../errors.js';
import { SafetensorsWriter } from '../safetensors/index.js';
import type { Backend } from '../transform/marlin.js';
import type { BufferPool } from './buffer-pool.js';
import { shardMetadata, type LayerRecord } from '../format/records.js';
import { BufferHash, type FileDigest } from '../integrity/sha256.js';
import { inFlightBytes, produce } from './produce.js';
import { CoalescingWriter } from './coalesce.js';
import { mark } from './profile.js';
import { mapLimited } from '../checkpoint/read-batch.js';

export interface ShardJob {
  ckpt: Checkpoint;
  plan: Plan;
  shard: OutputShard;
  /** Where the shard is written (the staging directory) … */
  dir: string;
  /** … and where it will appear, for messages. */
  finalDir: string;
  /** Buffers of the tensors that are transformed (page-locked when they feed the GPU). */
  pool: BufferPool;
  /** Buffers of the tensors copied as they are, which never go to the GPU: pageable, so never pinned. */
  copyPool: BufferPool;
  backend: Backend;
  records: Map<string, LayerRecord>;
  onInput(bytes: number, tensor: string): void;
  /** Receives the shard's sha256, hashed behind the writer as it goes (when given). */
  onDigest?(path: string, digest: FileDigest): void;
}

/** The __metadata__ convert writes into a shard: the records of the modules whose weight it holds. */
export function convertedShardMetadata(plan: Plan, shard: OutputShard, records: Map<string, LayerRecord>): Record<string, string> {
  const layers = shard.tensors.map((t) => records.get(t.name)).filter((r): r is LayerRecord => !!r);
  return shardMetadata(plan.layout, plan.dtype, layers);
}

export async function writeShard(job: ShardJob): Promise<void> {
  const { plan, shard } = job;
  const writer = await SafetensorsWriter.create(join(job.dir, shard.file), shard.tensors, convertedShardMetadata(plan, shard, job.records));
  // The shard's checksum from the bytes as they are written, header first.
  const hash = job.onDigest ? new BufferHash() : undefined;
  const out = new CoalescingWriter(writer, inFlightBytes(job.backend), hash && ((chunks) => hash.update(chunks)));
  try {
    await hash?.update([writer.header]);
    for (const t of shard.tensors) {
      const ctx = {
        ckpt: job.ckpt,
        scheme: plan.scheme,
        layout: plan.layout,
        dtype: plan.dtype,
        backend: job.backend,
        pool: job.pool,
        copyPool: job.copyPool,
        onInput: (n: number) => job.onInput(n, t.name),
      };
      await produce(ctx, t, (chunk, release) => out.write(t.name, chunk, release));
    }
    await out.finish();
    mark(`${shard.file}: last write done`);
    await writer.close();
    if (hash) job.onDigest!(writer.path, hash.digest());
  } catch (e) {
    await out.settle();
    await writer.abort();
    throw fileError(join(job.finalDir, shard.file), 'write', e, 'output');
  }
}

/**
 * Runs `fn` over items with at most `limit` at a time. Writes to one file serialize in the
 * kernel, so shards written side by side keep the disk and the cores busier than one.
 * After a failure no new item starts; once the running ones end, the error thrown is the one a
 * serial loop would meet (the first failing item in order: mapLimited), so convert and verify
 * name the same tensor whatever the timing.
 */
export async function forEachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  await mapLimited(items, limit, (item) => fn(item));
}
