// SHA-256 of whole files on worker threads, so hashing runs beside the conversion instead of
// after it on the main thread; and of bytes as they are written (BufferHash).
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { addon } from '../transform/addon.js';

// The worker streams a file through node:crypto; inline source keeps it valid from src/ and dist/.
const WORKER = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { openSync, readSync, closeSync } = require('node:fs');
// One reused 1 MiB buffer and synchronous reads (this is a worker thread): no garbage, so
// each worker adds a few MB of memory, not a heap of stream chunks.
const buf = Buffer.allocUnsafe(1 << 20);
parentPort.on('message', ({ path }) => {
  let fd;
  try {
    fd = openSync(path, 'r');
    const h = createHash('sha256');
    let bytes = 0;
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; bytes += n) h.update(buf.subarray(0, n));
    parentPort.postMessage({ sha256: h.digest('hex'), bytes });
  } catch (e) {
    parentPort.postMessage({ error: e.message });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
});
`;

export interface FileDigest {
  sha256: string;
  bytes: number;
}

/**
 * Hashes files on worker threads as they are added: source shards while the conversion runs,
 * each output shard as soon as it is closed. done() resolves once every added file is hashed.
 */
export class HashQueue {
  private readonly queue: { path: string; resolve: (d: FileDigest) => void; reject: (e: Error) => void }[] = [];
  private readonly results = new Map<string, Promise<FileDigest>>();
  private readonly idle: Worker[] = [];
  private readonly all: Worker[] = [];
  private readonly max: number;

  constructor(workers = Math.min(4, Math.max(1, availableParallelism() - 1))) {
    this.max = workers;
  }

  add(path: string): void {
    void this.digest(path);
  }

  /** The digest of one file, queued like add(); the caller awaits it (and close()s the queue). */
  digest(path: string): Promise<FileDigest> {
    const known = this.results.get(path);
    if (known) return known;
    const p = new Promise<FileDigest>((resolve, reject) => this.queue.push({ path, resolve, reject }));
    p.catch(() => {}); // surfaced by done() or the caller
    this.results.set(path, p);
    this.pump();
    return p;
  }

  async done(): Promise<Map<string, FileDigest>> {
    const out = new Map<string, FileDigest>();
    try {
      for (const [path, p] of this.results) out.set(path, await p);
    } finally {
      await this.close();
    }
    return out;
  }

  async close(): Promise<void> {
    await Promise.all(this.all.map((w) => w.terminate()));
    this.all.length = 0;
    this.idle.length = 0;
  }

  private pump(): void {
    while (this.queue.length > 0) {
      let w = this.idle.pop();
      if (!w && this.all.length < this.max) {
        w = new Worker(WORKER, { eval: true });
        this.all.push(w);
      }
      if (!w) return;
      const job = this.queue.shift()!;
      const worker = w;
      const onMessage = (m: { sha256?: string; bytes?: number; error?: string }) => {
        worker.off('message', onMessage);
        if (m.error) job.reject(new Error(`${job.path}: cannot read for its checksum: ${m.error}`));
        else job.resolve({ sha256: m.sha256!, bytes: m.bytes! });
        this.idle.push(worker);
        this.pump();
      };
      worker.on('message', onMessage);
      worker.postMessage({ path: job.path });
    }
  }
}

/** SHA-256 of a few files, e.g. for verify's manifest check. */
export async function sha256Files(paths: string[]): Promise<Map<string, FileDigest>> {
  const q = new HashQueue();
  for (const p of paths) q.add(p);
  return q.done();
}

/**
 * SHA-256 of bytes handed over in order, hashed on libuv's pool by the addon (OpenSSL, as
 * node:crypto): convert hashes each output shard from the buffers it writes, beside the write,
 * instead of reading the file back (native/src/addon_sha256.cc says why). Each update must be
 * awaited before the next.
 */
export class BufferHash {
  private readonly handle = addon().sha256New();
  private bytes = 0;

  update(chunks: Uint8Array[]): Promise<void> {
    for (const c of chunks) this.bytes += c.length;
    return addon().sha256Update(this.handle, chunks);
  }

  /** The digest of everything handed over; the hash takes no more bytes after it. */
  digest(): FileDigest {
    return { sha256: addon().sha256Digest(this.handle), bytes: this.bytes };
  }
}
