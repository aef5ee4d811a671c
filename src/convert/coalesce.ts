// Gathers the small tensors of an output shard into few writes, and lets the shard's checksum
// trail its writes. An MoE shard holds thousands of tiny tensors (every expert's 4-byte input
// scales, per-stack global scales, norms) between its large stacks: written one by one, each
// cost a round trip through libuv's pool (shared with the reads and the transforms), and the
// shard's producer waited for every one. Here a small chunk is copied into a staging buffer
// and handed back at once; the staged bytes go out with the next large chunk in one writev, or
// alone when the buffer is full. Large chunks are written as they come (still cache-hot on the
// CPU path), never copied.
//
// One write is in flight per shard (writes to one file serialize in the kernel anyway). Each
// write's bytes also go, in file order, to a consumer beside the writes (the shard's SHA-256),
// on a chain of its own: hashing (about 1.4 GB/s on the H200 host) is slower than writing, and
// when every write waited for the hash of the one before, a 2.15 GB shard of the 128-expert
// MoE took 2.4 s to write where its hash alone takes 1.5 s. A chunk is released once both its
// write and its hash are done; the producer may run up to the writer's in-flight budget ahead
// of them (the caller's, after the size of the pieces it hands over: convert/produce.ts).
import type { SafetensorsWriter } from '../safetensors/index.js';
import { timed } from './profile.js';

/**
 * Takes the bytes of each write as it is issued, in file order, one call at a time (the next
 * call waits for it); the buffers stay valid until it resolves.
 */
export type BesideWrites = (chunks: Uint8Array[]) => Promise<void>;

/** Chunks up to this size are copied into a staging buffer. */
export const SMALL_CHUNK = 256 * 1024;
/** Capacity of each staging buffer (one filling while others are written or hashed). */
const STAGE_BYTES = 1024 * 1024;

/** A write issued and not yet released: its bytes, and when both its write and its hash have settled. */
interface InFlight {
  bytes: number;
  settled: Promise<void>;
}

export class CoalescingWriter {
  private stage: Buffer = Buffer.allocUnsafe(STAGE_BYTES);
  /** Staging buffers whose bytes are written and hashed, ready to fill again. */
  private readonly freeStages: Buffer[] = [];
  private staged = 0;
  /** File position of the staged bytes (valid while staged > 0). */
  private stagedAt = 0;
  /** The last write issued (writes go one at a time). */
  private lastWrite: Promise<void> = Promise.resolve();
  /** The last hash call issued (the hash takes the writes' bytes in order). */
  private lastBeside: Promise<void> = Promise.resolve();
  private readonly inFlight: InFlight[] = [];
  private bytesInFlight = 0;
  /** The first failure of a write or of the hash, reported by the next write() or finish(). */
  private failure: { error: unknown } | undefined;

  /**
   * `inFlightBytes`: bytes handed to writes whose write or hash is not done yet, beyond which
   * the producer waits (what the hash may trail the writes by, held per shard).
   */
  constructor(
    private readonly writer: SafetensorsWriter,
    private readonly inFlightBytes: number,
    private readonly beside?: BesideWrites,
  ) {}

  /**
   * Appends `chunk` to tensor `name` (the writer's order and size checks apply at once).
   * Resolves when the caller may go on; `release` runs once the chunk is no longer needed:
   * at once for a small chunk (copied), after its write and hash for a large one.
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

  /** Writes what is staged and waits for every write and hash; the writer can then be closed. */
  async finish(): Promise<void> {
    if (this.staged > 0) await this.flush([]);
    await this.settle();
    if (this.failure) throw this.failure.error;
  }

  /** Waits for every write and hash in flight (after a failure, before the writer is aborted). */
  async settle(): Promise<void> {
    while (this.inFlight.length > 0) await this.inFlight[0]!.settled;
  }

  /** Issues the staged bytes followed by `chunks` (at `position` when nothing is staged) as one write. */
  private async flush(chunks: Uint8Array[], position = this.stagedAt, release?: () => void): Promise<void> {
    const stage = this.staged > 0 ? this.stage : undefined;
    const bufs = stage ? [stage.subarray(0, this.staged), ...chunks] : chunks;
    const bytes = bufs.reduce((a, b) => a + b.length, 0);
    const start = stage ? this.stagedAt : position;
    if (stage) {
      this.stage = this.freeStages.pop() ?? Buffer.allocUnsafe(STAGE_BYTES);
      this.staged = 0;
    }
    // Room for these bytes: the oldest writes and hashes finish first.
    while (this.inFlight.length > 0 && this.bytesInFlight + bytes > this.inFlightBytes) await timed('writeWait', this.inFlight[0]!.settled);
    if (this.failure) throw this.failure.error;
    // The write follows the one before it; the hash follows the hash before it.
    const write = this.lastWrite.then(() => timed('write', this.writer.writeAt(bufs, start)));
    const beside = this.beside ? this.lastBeside.then(() => this.beside!(bufs)) : Promise.resolve();
    this.lastWrite = write.catch(() => {});
    this.lastBeside = beside.catch(() => {});
    const entry: InFlight = {
      bytes,
      settled: Promise.allSettled([write, beside]).then(([w, b]) => {
        this.inFlight.splice(this.inFlight.indexOf(entry), 1);
        this.bytesInFlight -= bytes;
        // A write's error is the one reported; nothing of a failed write is released.
        const failed = w.status === 'rejected' ? w.reason : b.status === 'rejected' ? b.reason : undefined;
        if (failed !== undefined) {
          this.failure ??= { error: failed };
          return;
        }
        if (stage) this.freeStages.push(stage);
        release?.();
      }),
    };
    this.inFlight.push(entry);
    this.bytesInFlight += bytes;
  }
}
