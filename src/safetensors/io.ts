import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { fileError, InputError } from '../errors.js';
import { SafetensorsError } from './errors.js';

// Node 20's fs binding asserts that a read/write length fits in an int32: asking for 2 GiB
// or more in one call aborts the whole process instead of throwing. Real checkpoints have
// tensors past 2 GiB (large embeddings), so every call is capped well below that.
export const MAX_IO_CHUNK = 1 << 30;

/**
 * What reading needs of a file: positional reads, its size, closing. A local FileHandle is one;
 * so is a file on the Hugging Face Hub read with HTTP range requests (checkpoint/hub-ranges.ts).
 */
export interface RandomAccessFile {
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  stat(): Promise<{ size: number }>;
  close(): Promise<void>;
}

/**
 * Fills `buf` from `position`, looping because a positional read may legally return fewer
 * bytes than asked. Hitting end-of-file means the file is shorter than its header claims
 * (or was truncated after we looked at it), which is a property of the file, hence a
 * SafetensorsError rather than a generic I/O error.
 */
export async function readExactly(
  handle: RandomAccessFile,
  buf: Uint8Array,
  position: number,
  file: string,
  tensor: string | undefined,
): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await handle.read(buf, done, Math.min(buf.length - done, MAX_IO_CHUNK), position + done);
    if (bytesRead === 0) {
      throw new SafetensorsError(
        file,
        tensor,
        `unexpected end of file at byte ${position + done}: needed ${buf.length} bytes from byte ${position}, got ${done} (file truncated?)`,
      );
    }
    done += bytesRead;
  }
}

/** Writes all of `buf` at `position`; a positional write may also be partial. */
export async function writeFully(handle: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await handle.write(buf, done, Math.min(buf.length - done, MAX_IO_CHUNK), position + done);
    done += bytesWritten;
  }
}

/**
 * Writes `bufs` back to back from `position` with as few calls as possible: writev, which may
 * write part of them, resumed where it stopped; more than IOV_MAX buffers or MAX_IO_CHUNK
 * bytes in all go in several calls.
 */
export async function writevFully(handle: FileHandle, bufs: Uint8Array[], position: number): Promise<void> {
  let i = 0;
  let skip = 0; // bytes of bufs[i] already written
  while (i < bufs.length) {
    const batch: Uint8Array[] = [];
    let bytes = 0;
    for (let j = i; j < bufs.length && batch.length < IOV_MAX; j++) {
      const b = j === i ? bufs[j]!.subarray(skip) : bufs[j]!;
      if (batch.length > 0 && bytes + b.length > MAX_IO_CHUNK) break;
      batch.push(b);
      bytes += b.length;
    }
    if (batch.length === 1 && bytes > MAX_IO_CHUNK) {
      await writeFully(handle, batch[0]!, position);
      position += bytes;
      i++;
      skip = 0;
      continue;
    }
    let { bytesWritten } = await handle.writev(batch, position);
    if (bytesWritten === 0 && bytes > 0) throw new Error(`writev wrote nothing at byte ${position}`);
    position += bytesWritten;
    while (i < bufs.length && bytesWritten >= bufs[i]!.length - skip) {
      bytesWritten -= bufs[i]!.length - skip;
      i++;
      skip = 0;
    }
    skip += bytesWritten;
  }
}

/** Buffers one writev takes (Linux's IOV_MAX). */
const IOV_MAX = 1024;

/** What a file that is not a regular file is, for messages. */
export function fileKind(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isDirectory()) return 'a directory';
  if (st.isSymbolicLink()) return 'a symbolic link';
  return 'not a regular file';
}

export interface OpenOptions {
  /** Refuse a symbolic link as the last part of the path (ELOOP): for paths already resolved. */
  noFollow?: boolean;
  /** Open this path instead (the file's resolved real path); messages still name `path`. */
  realPath?: string;
}

/**
 * Opens a file for reading only when it is a regular file, and so that nothing can block:
 * O_NONBLOCK makes open() of a FIFO return at once instead of waiting for a writer (which
 * would also hold a libuv thread, and with it the process's exit, forever), and the type is
 * checked on the open descriptor (fstat), not on a path that could change in between. For
 * a regular file O_NONBLOCK changes nothing. A file that is not regular is an InputError
 * naming it; a failed open is fileError's one line.
 */
export async function openRegularFile(path: string, opts: OpenOptions = {}): Promise<{ handle: FileHandle; stat: Stats }> {
  let handle: FileHandle;
  try {
    handle = await open(opts.realPath ?? path, constants.O_RDONLY | constants.O_NONBLOCK | (opts.noFollow ? constants.O_NOFOLLOW : 0));
  } catch (e) {
    throw fileError(path, 'read', e);
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new InputError(`${path}: not a regular file (${fileKind(st)})`);
    return { handle, stat: st };
  } catch (e) {
    await handle.close();
    throw fileError(path, 'read', e);
  }
}
