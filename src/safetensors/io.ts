import type { FileHandle } from 'node:fs/promises';
import { SafetensorsError } from './errors.js';

// Node 20's fs binding asserts that a read/write length fits in an int32: asking for 2 GiB
// or more in one call aborts the whole process instead of throwing. Real checkpoints have
// tensors past 2 GiB (large embeddings), so every call is capped well below that.
export const MAX_IO_CHUNK = 1 << 30;

/**
 * Fills `buf` from `position`, looping because a positional read may legally return fewer
 * bytes than asked. Hitting end-of-file means the file is shorter than its header claims
 * (or was truncated after we looked at it), which is a property of the file, hence a
 * SafetensorsError rather than a generic I/O error.
 */
export async function readExactly(
  handle: FileHandle,
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
