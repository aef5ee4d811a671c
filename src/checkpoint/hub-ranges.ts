// A file on the Hugging Face Hub read with HTTP range requests, as the RandomAccessFile the
// safetensors reader takes: `inspect <repo-id>` reads each shard's header and its scalar
// tensors this way and downloads nothing else. Small reads fetch a 64 KiB block (a header's
// 8-byte prefix and its JSON usually come in one request) and keep it; the scalar tensors are
// prefetched together, neighbours coalesced into one request, since the per-layer loops that
// read them go one scalar at a time and a round trip to the Hub costs tens of milliseconds.
import { EnvironmentError } from '../errors.js';
import type { RandomAccessFile } from '../safetensors/index.js';

/** Reads below this size fetch a whole block and keep it. */
const BLOCK = 64 * 1024;
/** Ranges this close together are fetched as one (a round trip costs more than this many bytes). */
const COALESCE_GAP = 64 * 1024;
/** A coalesced request is at most this long. */
const MAX_REQUEST = 4 * 1024 * 1024;
const PARALLEL = 8;

export class RangeFile implements RandomAccessFile {
  private blocks: { start: number; data: Uint8Array }[] = [];
  /** Bytes of file content fetched so far. */
  fetched = 0;

  constructor(
    private readonly blob: Blob,
    readonly name: string,
    /** Turns a failed request into the CLI's one-line error. */
    private readonly mapError: (e: unknown) => unknown = (e) => e,
  ) {}

  async stat(): Promise<{ size: number }> {
    return { size: this.blob.size };
  }

  async read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }> {
    const end = Math.min(position + length, this.blob.size);
    if (end <= position) return { bytesRead: 0 };
    let block = this.blocks.find((b) => b.start <= position && b.start + b.data.length >= end);
    if (!block) {
      if (end - position < BLOCK) {
        block = { start: position, data: await this.fetch(position, Math.min(this.blob.size, position + BLOCK)) };
        this.blocks.push(block);
      } else {
        const data = await this.fetch(position, end);
        buffer.set(data, offset);
        return { bytesRead: data.length };
      }
    }
    buffer.set(block.data.subarray(position - block.start, end - block.start), offset);
    return { bytesRead: end - position };
  }

  /** Fetches these [begin, end) byte ranges now, neighbours together, and keeps them. */
  async prefetch(ranges: [number, number][]): Promise<void> {
    const sorted = ranges.filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
    const merged: [number, number][] = [];
    for (const [a, b] of sorted) {
      const last = merged[merged.length - 1];
      if (last && a - last[1] <= COALESCE_GAP && Math.max(b, last[1]) - last[0] <= MAX_REQUEST) last[1] = Math.max(last[1], b);
      else merged.push([a, b]);
    }
    const todo = merged.filter(([a, b]) => !this.blocks.some((k) => k.start <= a && k.start + k.data.length >= b));
    let next = 0;
    const worker = async () => {
      while (next < todo.length) {
        const [a, b] = todo[next++]!;
        this.blocks.push({ start: a, data: await this.fetch(a, b) });
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, todo.length) }, worker));
  }

  async close(): Promise<void> {
    this.blocks = [];
  }

  private async fetch(begin: number, end: number): Promise<Uint8Array> {
    let data: Uint8Array;
    try {
      data = new Uint8Array(await this.blob.slice(begin, end).arrayBuffer());
    } catch (e) {
      throw this.mapError(e);
    }
    if (data.length !== end - begin) {
      throw new EnvironmentError(`${this.name}: asked the Hub for bytes ${begin}-${end - 1}, got ${data.length} bytes (range requests not honoured)`);
    }
    this.fetched += data.length;
    return data;
  }
}
