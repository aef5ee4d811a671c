import { open, unlink, type FileHandle } from 'node:fs/promises';
import { DTYPE_SIZE, isDtype, type Dtype } from './dtypes.js';
import { SafetensorsError } from './errors.js';
import { MAX_HEADER_BYTES } from './header.js';
import { writeFully, writevFully } from './io.js';

export interface PlannedTensor {
  name: string;
  dtype: Dtype;
  shape: number[];
}

const METADATA_KEY = '__metadata__';

/** Errors from encodeHeader have no file yet; this stands in for the path. */
const NO_FILE = '<header>';

/**
 * Lays the tensors out back to back in the given order and serializes the header.
 * The layout has to be fixed up front because the header precedes the data, and we stream
 * the data without ever holding the whole file.
 */
export function encodeHeader(
  tensors: PlannedTensor[],
  metadata?: Record<string, string>,
): { header: Buffer; offsets: Map<string, [number, number]> } {
  return layout(NO_FILE, tensors, metadata);
}

function layout(
  file: string,
  tensors: PlannedTensor[],
  metadata: Record<string, string> | undefined,
): { header: Buffer; offsets: Map<string, [number, number]> } {
  const fail = (reason: string, tensor?: string) => new SafetensorsError(file, tensor, reason);
  // The JSON is assembled by hand because JSON.stringify of an object would move
  // integer-like keys ("0", "1", ...) ahead of the others, breaking "keys in planned order".
  const parts: string[] = [];

  if (metadata !== undefined) {
    if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) {
      throw fail('__metadata__ must be an object of strings');
    }
    // Sorted so that equal metadata gives equal bytes however the caller built the object.
    const keys = Object.keys(metadata).sort();
    const fields = keys.map((k) => {
      const v: unknown = metadata[k];
      if (typeof v !== 'string') throw fail(`__metadata__ value for key ${JSON.stringify(k)} must be a string, got ${typeof v}`);
      return `${JSON.stringify(k)}:${JSON.stringify(v)}`;
    });
    parts.push(`${JSON.stringify(METADATA_KEY)}:{${fields.join(',')}}`);
  }

  const offsets = new Map<string, [number, number]>();
  let pos = 0;
  for (const t of tensors) {
    // Plans come from code, but from JS callers too, so the type guarantees are re-checked:
    // a bad plan must fail here, not produce a file our own reader rejects.
    if (t.name === METADATA_KEY) throw fail('name is reserved for the metadata block', t.name);
    if (offsets.has(t.name)) throw fail('planned more than once', t.name);
    if (!isDtype(t.dtype)) throw fail(`unknown dtype ${JSON.stringify(t.dtype)}`, t.name);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw fail(`shape must be an array of non-negative safe integers, got ${JSON.stringify(t.shape)}`, t.name);
    }
    const bytes = t.shape.reduce((n, d) => n * BigInt(d), BigInt(DTYPE_SIZE[t.dtype]));
    const end = BigInt(pos) + bytes;
    if (end > BigInt(Number.MAX_SAFE_INTEGER)) throw fail('data section would exceed 2^53 bytes', t.name);
    offsets.set(t.name, [pos, Number(end)]);
    parts.push(
      `${JSON.stringify(t.name)}:{"dtype":${JSON.stringify(t.dtype)},"shape":[${t.shape.join(',')}],"data_offsets":[${pos},${end}]}`,
    );
    pos = Number(end);
  }

  const json = `{${parts.join(',')}}`;
  // Byte length, not string length: names may be non-ASCII. Padding to 8 puts the data
  // section on an 8-byte boundary, so mmap-based readers can view F64/I64 tensors in place.
  const jsonBytes = Buffer.byteLength(json, 'utf8');
  const padded = Math.ceil(jsonBytes / 8) * 8;
  if (padded > MAX_HEADER_BYTES) throw fail(`header would be ${padded} bytes, over the ${MAX_HEADER_BYTES}-byte limit`);

  const header = Buffer.alloc(8 + padded, 0x20);
  header.writeBigUInt64LE(BigInt(padded), 0);
  header.write(json, 8, 'utf8');
  return { header, offsets };
}

interface Slot {
  name: string;
  begin: number;
  size: number;
}

/**
 * Streams tensors into a new file in planned order. The header is written first from the
 * plan, then each write() appends to the current tensor at its precomputed position, so
 * at no point is more than one caller-supplied chunk in memory.
 */
export class SafetensorsWriter {
  private readonly index: Map<string, number>;
  /** Index of the first tensor that still needs bytes; plan.length once all are complete. */
  private cur = 0;
  /** Bytes already issued for plan[cur]. */
  private written = 0;
  /** Serializes the I/O; never rejects (failures are recorded in `failure`). */
  private tail: Promise<void> = Promise.resolve();
  private failure: { error: unknown } | undefined;
  private state: 'open' | 'closed' | 'aborted' = 'open';

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    /** The file's first bytes (length prefix and JSON header), written by create(). */
    readonly header: Buffer,
    private readonly plan: Slot[],
  ) {
    this.index = new Map(plan.map((s, i) => [s.name, i]));
    this.skipComplete();
  }

  /** Where the data section starts: the header is written first, then data in planned order. */
  get dataStart(): number {
    return this.header.length;
  }

  static async create(path: string, tensors: PlannedTensor[], metadata?: Record<string, string>): Promise<SafetensorsWriter> {
    // Validate the plan before touching the filesystem, so a bad plan leaves nothing behind.
    const { header, offsets } = layout(path, tensors, metadata);
    // 'wx': an existing file is never clobbered; converting onto the input by mistake fails.
    const handle = await open(path, 'wx');
    try {
      await writeFully(handle, header, 0);
    } catch (e) {
      await handle.close().catch(() => {});
      await unlink(path).catch(() => {});
      throw e;
    }
    const plan = tensors.map((t) => {
      const [begin, end] = offsets.get(t.name)!;
      return { name: t.name, begin, size: end - begin };
    });
    return new SafetensorsWriter(path, handle, header, plan);
  }

  /** Appends `chunk` to tensor `name`; may be called several times per tensor. */
  async write(name: string, chunk: Uint8Array): Promise<void> {
    const position = this.reserve(name, chunk.length);
    if (chunk.length === 0) return;
    return this.writeAt([chunk], position);
  }

  /**
   * Claims the next `bytes` of tensor `name` (the same order and size checks as write()) and
   * returns their position in the file, without writing them: a caller that gathers the
   * bytes of many small tensors writes them later with one writeAt() (convert/coalesce.ts).
   */
  reserve(name: string, bytes: number): number {
    this.assertOpen();
    if (this.failure) throw new Error(`${this.path}: an earlier write failed`, { cause: this.failure.error });
    const idx = this.index.get(name);
    if (idx === undefined) throw new SafetensorsError(this.path, name, 'not in the planned tensor list');
    if (idx < this.cur) {
      // Tolerated so a generic "write every tensor's bytes" loop works for zero-size tensors.
      if (bytes === 0) return this.dataStart + this.plan[idx]!.begin + this.plan[idx]!.size;
      throw new SafetensorsError(
        this.path,
        name,
        `overflow: already complete with ${this.plan[idx]!.size} bytes, ${bytes} more would exceed the planned size`,
      );
    }
    const slot = this.plan[this.cur]!;
    if (idx > this.cur) {
      throw new SafetensorsError(
        this.path,
        name,
        `written out of order: tensor ${slot.name} must be finished first (${this.written} of ${slot.size} bytes written)`,
      );
    }
    if (this.written + bytes > slot.size) {
      throw new SafetensorsError(
        this.path,
        name,
        `overflow: ${bytes} bytes after ${this.written} would exceed the planned ${slot.size} bytes`,
      );
    }
    // Bookkeeping advances before the I/O starts, so back-to-back writes that the caller
    // doesn't await still get the right positions and the right order checks.
    const position = this.dataStart + slot.begin + this.written;
    this.written += bytes;
    this.skipComplete();
    return position;
  }

  /**
   * Writes `chunks` back to back from `position`, which reserve() handed out for them, in one
   * call (writev) where they fit one. Writes run one after another, in the order issued.
   */
  writeAt(chunks: Uint8Array[], position: number): Promise<void> {
    this.assertOpen();
    const op = this.tail.then(() => {
      if (this.failure) throw new Error(`${this.path}: an earlier write failed`, { cause: this.failure.error });
      return chunks.length === 1 ? writeFully(this.handle, chunks[0]!, position) : writevFully(this.handle, chunks, position);
    });
    this.tail = op.catch((error: unknown) => {
      this.failure ??= { error };
    });
    return op;
  }

  /**
   * Finishes the file. If a tensor is incomplete or a write failed it throws and leaves the
   * writer open: the caller can still finish the missing bytes or call abort() to remove
   * the partial file. No fsync: the outputs are reproducible, so speed wins over durability.
   */
  async close(): Promise<void> {
    if (this.state === 'closed') return;
    this.assertOpen();
    const pending = this.plan[this.cur];
    if (pending) {
      const rest = this.plan.length - this.cur - 1;
      throw new SafetensorsError(
        this.path,
        pending.name,
        `incomplete: ${this.written} of ${pending.size} bytes written` + (rest > 0 ? ` (${rest} more tensor(s) after it)` : ''),
      );
    }
    await this.tail;
    if (this.failure) throw new Error(`${this.path}: a write failed`, { cause: this.failure.error });
    this.state = 'closed';
    await this.handle.close();
  }

  /** Closes and deletes the partial file. A no-op after a successful close(). */
  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.tail;
    await this.handle.close().catch(() => {});
    try {
      await unlink(this.path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }

  private skipComplete(): void {
    while (this.cur < this.plan.length && this.written === this.plan[this.cur]!.size) {
      this.cur++;
      this.written = 0;
    }
  }

  private assertOpen(): void {
    if (this.state !== 'open') throw new Error(`${this.path}: writer is ${this.state}`);
  }
}
