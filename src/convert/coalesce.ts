// Gathers the small tensors of an output shard into few writes. An MoE shard holds thousands
// of tiny tensors (every expert's 4-byte input scales, per-stack global scales, norms) between
// its large stacks: written one by one, each cost a round trip through libuv's four threads
// (shared with the reads and the transforms), and the shard's producer waited for every one.
// Here a small chunk is copied into a staging buffer and handed back at once; the staged bytes
// go out with the next large chunk in one writev, or alone when the buffer is full. One write
// is in flight per shard, as before; large chunks are written as they come (still cache-hot
// on the CPU path), never copied. Each write's bytes can also go, in file order, to a consumer
// beside the write (the shard's checksum), before their buffers are handed back.
import type { SafetensorsWriter } from '../safetensors/index.js';
import { timed } from './profile.js';

/**
 * Takes the bytes of each write as it is issued, in file order, one call at a time (the next
 * write waits for it); the buffers stay valid until it resolves.
 */
export type BesideWrites = (chunks: Uint8Array[]) => Promise<void>;

/** Chunks up to this size are copied into the staging buffer. */
export const SMALL_CHUNK = 256 * 1024;
/** Capacity of each of the two staging buffers (one filling while the other is written). */
const STAGE_BYTES = 1024 * 1024;

export class CoalescingWriter {
  private stage = Buffer.allocUnsafe(STAGE_BYTES);
  private spare = Buffer.allocUnsafe(STAGE_BYTES);
  private staged = 0;
  /** File position of the staged bytes (valid while staged > 0). */
  private stagedAt = 0;
  private pending: Promise<void> = Promise.resolve();

  constructor(
    private readonly writer: SafetensorsWriter,
    private readonly beside?: BesideWrites,
  ) {}

  /**
   * Appends `chunk` to tensor `name` (the writer's order and size checks apply at once).
   * Resolves when the caller may go on; `release` runs once the chunk is no longer needed:
   * at once for a small chunk (copied), after its write for a large one.
   */
  async write(name: string, chunk: Uint8Array, release?: () => void): Promise<void> {
    const position = this.writer.reserve(name, chunk.length);
    if (chunk.length === 0) return release?.();
    if (chunk.length <= SMALL_CHUNK) {
      if (this.staged + chunk.length > this.stage.length) await this.flush([]);
      if (this.staged === 0) this.stagedAt = position;
      this.stage.set(chunk, this.staged);
      this.staged += chunk.length;
      release?.();
      return;
    }
    if (this.staged > 0 && this.stagedAt + this.staged !== position) throw new Error(`internal: ${name} does not follow the staged bytes`);
    await this.flush([chunk], position, release);
  }

  /** Writes what is staged and waits for every write; the writer can then be closed. */
  async finish(): Promise<void> {
    if (this.staged > 0) await this.flush([]);
    await this.pending;
  }

  /** Waits for the write in flight (after a failure, before the writer is aborted). */
  async settle(): Promise<void> {
    await this.pending.catch(() => {});
  }

  /** Issues the staged bytes followed by `chunks` (at `position` when nothing is staged) as one write. */
  private async flush(chunks: Uint8Array[], position = this.stagedAt, release?: () => void): Promise<void> {
    // One write in flight: the previous one (and what ran beside it) has also released the
    // spare staging buffer.
    await timed('writeWait', this.pending);
    const bufs = this.staged > 0 ? [this.stage.subarray(0, this.staged), ...chunks] : chunks;
    const start = this.staged > 0 ? this.stagedAt : position;
    [this.stage, this.spare] = [this.spare, this.stage];
    this.staged = 0;
    const write = timed('write', this.writer.writeAt(bufs, start));
    const beside = this.beside?.(bufs) ?? Promise.resolve();
    // Both settle before the buffers are released or the next write starts; a write's error
    // is the one reported.
    this.pending = Promise.allSettled([write, beside]).then(([w, b]) => {
      if (w.status === 'rejected') throw w.reason;
      if (b.status === 'rejected') throw b.reason;
      release?.();
    });
    this.pending.catch(() => {}); // surfaced by the next await of `pending`
  }
}
