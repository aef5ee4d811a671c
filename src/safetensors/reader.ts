import { constants as bufferConstants } from 'node:buffer';
import { SafetensorsError } from './errors.js';
import { readHeaderFrom, type SafetensorsHeader, type TensorEntry } from './header.js';
import { openRegularFile, readExactly, type OpenOptions, type RandomAccessFile } from './io.js';

/**
 * Random access to the tensors of one safetensors file. Holds a single read-only handle and
 * reads each tensor with positional reads, so memory use is bounded by what the caller asks
 * for, never by the file size.
 */
export class SafetensorsReader {
  private closed = false;
  /** Reads in flight through withFd(). */
  private readonly borrowed = new Set<Promise<unknown>>();

  private constructor(
    private readonly handle: RandomAccessFile,
    readonly header: SafetensorsHeader,
  ) {}

  /** Regular files only, opened without blocking (see openRegularFile). */
  static async open(path: string, opts: OpenOptions = {}): Promise<SafetensorsReader> {
    const { handle } = await openRegularFile(path, opts);
    return SafetensorsReader.fromFile(handle, path);
  }

  /** Reads through an already open file (local, or remote by range requests); closes it on failure. */
  static async fromFile(handle: RandomAccessFile, path: string): Promise<SafetensorsReader> {
    try {
      return new SafetensorsReader(handle, await readHeaderFrom(handle, path));
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  entry(name: string): TensorEntry {
    const e = this.header.tensors.get(name);
    if (!e) throw new SafetensorsError(this.header.path, name, 'no such tensor');
    return e;
  }

  has(name: string): boolean {
    return this.header.tensors.has(name);
  }

  /** In data-offset order (the header's Map is built that way). */
  names(): string[] {
    return [...this.header.tensors.keys()];
  }

  async read(name: string): Promise<Buffer> {
    const e = this.entry(name);
    return this.readAt(e, 0, e.end - e.begin);
  }

  async readRange(name: string, byteOffset: number, length: number): Promise<Buffer> {
    const e = this.entry(name);
    const size = e.end - e.begin;
    if (
      !Number.isSafeInteger(byteOffset) ||
      !Number.isSafeInteger(length) ||
      byteOffset < 0 ||
      length < 0 ||
      byteOffset + length > size
    ) {
      throw new SafetensorsError(
        this.header.path,
        name,
        `byte range offset ${byteOffset} length ${length} is outside the tensor's ${size} bytes`,
      );
    }
    return this.readAt(e, byteOffset, length);
  }

  /**
   * Fills `target` with `target.length` bytes of tensor `name` from `byteOffset`: lets callers
   * reuse buffers, since fresh memory's page faults cost more than reading from the page cache.
   */
  async readRangeInto(name: string, byteOffset: number, target: Uint8Array): Promise<Uint8Array> {
    const e = this.entry(name);
    const size = e.end - e.begin;
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset + target.length > size) {
      throw new SafetensorsError(
        this.header.path,
        name,
        `byte range offset ${byteOffset} length ${target.length} is outside the tensor's ${size} bytes`,
      );
    }
    if (this.closed) throw new Error(`${this.header.path}: reader is closed`);
    await readExactly(this.handle, target, this.header.dataStart + e.begin + byteOffset, this.header.path, e.name);
    return target;
  }

  /**
   * Fills `target` with the tensors `names`, which must lie back to back in the data section
   * in that order (each begins where the one before ends): one positional read for all of
   * them, instead of one per tensor. Tensors of an MoE layer's experts are often stored so.
   */
  async readAdjacentInto(names: readonly string[], target: Uint8Array): Promise<Uint8Array> {
    const { position, bytes } = this.adjacentRange(names);
    if (target.length !== bytes) {
      throw new SafetensorsError(this.header.path, names[0], `${names.length} adjacent tensors hold ${bytes} bytes, not ${target.length}`);
    }
    if (this.closed) throw new Error(`${this.header.path}: reader is closed`);
    await readExactly(this.handle, target, position, this.header.path, names[0]);
    return target;
  }

  /**
   * Where the tensors `names` lie in the file: they must be back to back in the data section
   * in that order (each begins where the one before ends). Their bytes are `bytes` from file
   * position `position`.
   */
  adjacentRange(names: readonly string[]): { position: number; bytes: number } {
    if (names.length === 0) throw new Error('adjacentRange: no tensor named');
    const first = this.entry(names[0]!);
    let end = first.begin;
    for (const n of names) {
      const e = this.entry(n);
      if (e.begin !== end) throw new SafetensorsError(this.header.path, n, `does not follow ${names[0]} directly in the data section`);
      end = e.end;
    }
    return { position: this.header.dataStart + first.begin, bytes: end - first.begin };
  }

  /**
   * Runs `use` with the descriptor of the open file, for reads done outside this class (many
   * tensors in one native call: checkpoint/read-batch.ts); undefined when there is none (a
   * remote file, or the reader is closed). close() waits for what `use` started, so the
   * descriptor is not closed, and then reused for another file, under a read.
   */
  withFd<T>(use: (fd: number) => Promise<T>): Promise<T> | undefined {
    const fd = (this.handle as { fd?: unknown }).fd;
    if (this.closed || typeof fd !== 'number' || fd < 0) return undefined;
    const p = use(fd);
    this.borrowed.add(p);
    const done = () => this.borrowed.delete(p);
    p.then(done, done);
    return p;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.borrowed]);
    await this.handle.close();
  }

  private async readAt(e: TensorEntry, offset: number, length: number): Promise<Buffer> {
    if (this.closed) throw new Error(`${this.header.path}: reader is closed`);
    // Checked here so a huge tensor fails with its name and a way out, not a bare RangeError.
    if (length > bufferConstants.MAX_LENGTH) {
      throw new SafetensorsError(
        this.header.path,
        e.name,
        `${length} bytes is more than one Buffer can hold (${bufferConstants.MAX_LENGTH}); read it in pieces with readRange`,
      );
    }
    // allocUnsafeSlow, not allocUnsafe: small Buffers come from a shared pool at arbitrary
    // byteOffsets, and callers view tensor bytes as Float32Array/Int32Array etc., which
    // need the view to start on an element boundary. A dedicated ArrayBuffer starts at 0.
    const buf = Buffer.allocUnsafeSlow(length);
    await readExactly(this.handle, buf, this.header.dataStart + e.begin + offset, this.header.path, e.name);
    return buf;
  }
}
