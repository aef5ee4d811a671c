// SHA-256 of whole files on worker threads, so hashing runs beside the conversion instead of
// after it on the main thread.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

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

// Hashes a file that is being written front to back: it reads each range as soon as the
// writer reports it complete (from the page cache), so the checksum is ready moments after
// the last write instead of requiring a second pass over the whole file.
const STREAM_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { openSync, readSync, closeSync } = require('node:fs');
const buf = Buffer.allocUnsafe(1 << 20);
const h = createHash('sha256');
const fd = openSync(workerData.path, 'r');
let pos = 0;
parentPort.on('message', ({ upTo, final }) => {
  try {
    while (pos < upTo) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, upTo - pos), pos);
      if (n <= 0) throw new Error('file shorter than written: ' + pos + ' of ' + upTo + ' bytes');
      h.update(buf.subarray(0, n));
      pos += n;
    }
    if (final) {
      closeSync(fd);
      parentPort.postMessage({ sha256: h.digest('hex'), bytes: pos });
    }
  } catch (e) {
    parentPort.postMessage({ error: e.message });
  }
});
`;

export class StreamingHash {
  private readonly worker: Worker;
  private readonly result: Promise<FileDigest>;

  constructor(path: string) {
    this.worker = new Worker(STREAM_WORKER, { eval: true, workerData: { path } });
    this.result = new Promise<FileDigest>((resolve, reject) => {
      this.worker.once('message', (m: { sha256?: string; bytes?: number; error?: string }) => {
        if (m.error) reject(new Error(`${path}: cannot read for its checksum: ${m.error}`));
        else resolve({ sha256: m.sha256!, bytes: m.bytes! });
      });
      this.worker.once('error', reject);
    });
    this.result.catch(() => {}); // surfaced by finish()
  }

  /** Bytes [0, upTo) of the file are written. */
  advance(upTo: number): void {
    this.worker.postMessage({ upTo, final: false });
  }

  /** The file is complete at `size` bytes: its digest. */
  async finish(size: number): Promise<FileDigest> {
    this.worker.postMessage({ upTo: size, final: true });
    try {
      return await this.result;
    } finally {
      await this.worker.terminate();
    }
  }

  async abort(): Promise<void> {
    await this.worker.terminate();
  }
}
