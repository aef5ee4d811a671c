// The coalescing writer of convert's shards (src/convert/coalesce.ts) and the writer calls it
// rests on (reserve, writeAt, writevFully): the bytes are those of one write per chunk, small
// chunks go out many per call, what runs beside the writes (the shard's checksum) gets every
// byte in order, and partial writev results are resumed.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FileHandle } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { CoalescingWriter, SMALL_CHUNK } from '../src/convert/coalesce.js';
import { inFlightBytes } from '../src/convert/produce.js';
import { convert } from '../src/convert/convert.js';
import { MODELS } from './helpers/models.js';
import { SafetensorsWriter, type PlannedTensor } from '../src/safetensors/index.js';
import { writevFully } from '../src/safetensors/io.js';
import { BufferHash } from '../src/integrity/sha256.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mfp4-coalesce-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A shard of many tiny tensors around a few large ones, as an MoE layer's output is. */
function moeLikePlan(): { plan: PlannedTensor[]; data: Map<string, Buffer> } {
  const plan: PlannedTensor[] = [];
  const data = new Map<string, Buffer>();
  const add = (name: string, bytes: number) => {
    plan.push({ name, dtype: 'U8', shape: [bytes] });
    data.set(name, randomBytes(bytes));
  };
  add('norm', 4096);
  for (let e = 0; e < 300; e++) add(`experts.${e}.input_scale`, 4);
  add('w13_weight', 3 * SMALL_CHUNK + 17); // large: written in chunks of mixed sizes
  add('w13_weight_scale', SMALL_CHUNK - 3);
  for (let e = 0; e < 2000; e++) add(`tiny.${e}`, 700); // more than a staging buffer's worth
  add('empty', 0);
  add('tail', 5);
  return { plan, data };
}

/** Chunks of a tensor as a producer hands them over: large tensors in uneven pieces. */
function* chunks(b: Buffer): Generator<Buffer> {
  if (b.length <= SMALL_CHUNK) return yield b;
  const cuts = [SMALL_CHUNK + 1, 100, 2 * SMALL_CHUNK];
  let off = 0;
  for (const c of cuts) {
    if (off >= b.length) break;
    yield b.subarray(off, Math.min(b.length, off + c));
    off += c;
  }
  if (off < b.length) yield b.subarray(off);
}

/** The budget convert gives a GPU shard's writer (the largest). */
const BUDGET = inFlightBytes('cuda');

describe('CoalescingWriter', () => {
  it('writes the same file as one write per chunk, in far fewer calls, releasing every chunk', async () => {
    const { plan, data } = moeLikePlan();
    const plain = join(dir, 'plain.safetensors');
    const w1 = await SafetensorsWriter.create(plain, plan);
    let chunkCount = 0;
    for (const t of plan) for (const c of chunks(data.get(t.name)!)) (chunkCount++, await w1.write(t.name, c));
    await w1.close();

    const gathered = join(dir, 'gathered.safetensors');
    const w2 = await SafetensorsWriter.create(gathered, plan);
    const writeAt = vi.spyOn(w2, 'writeAt');
    // Beside each write: its bytes, one call at a time (copied here, as a checksum consumes them).
    const seen: Buffer[] = [w2.header];
    let besideRunning = 0;
    const out = new CoalescingWriter(w2, BUDGET, async (bufs) => {
      expect(besideRunning++).toBe(0);
      await new Promise((r) => setTimeout(r, 1));
      seen.push(...bufs.map((b) => Buffer.from(b)));
      besideRunning--;
    });
    let released = 0;
    for (const t of plan) for (const c of chunks(data.get(t.name)!)) await out.write(t.name, c, () => released++);
    await out.finish();
    await w2.close();

    const expected = await readFile(plain);
    expect((await readFile(gathered)).equals(expected)).toBe(true);
    expect(released).toBe(chunkCount);
    // 2,300 small tensors and 4 large chunks: a handful of calls, not one per chunk.
    expect(writeAt.mock.calls.length).toBeLessThan(10);
    expect(chunkCount).toBeGreaterThan(2300);
    // What ran beside the writes got the file's bytes after its header, in order.
    expect(Buffer.concat(seen).equals(expected)).toBe(true);
  });

  it("hashes a shard as it is written: the digest is the file's sha256", async () => {
    const { plan, data } = moeLikePlan();
    const w = await SafetensorsWriter.create(join(dir, 'hashed.safetensors'), plan);
    const hash = new BufferHash();
    await hash.update([w.header]);
    const out = new CoalescingWriter(w, BUDGET, (bufs) => hash.update(bufs));
    for (const t of plan) for (const c of chunks(data.get(t.name)!)) await out.write(t.name, c);
    await out.finish();
    await w.close();
    const file = await readFile(w.path);
    expect(hash.digest()).toEqual({ sha256: createHash('sha256').update(file).digest('hex'), bytes: file.length });
  });

  it('a failed write is reported once the bytes beside it are done, and releases nothing', async () => {
    const w = await SafetensorsWriter.create(join(dir, 'failing.safetensors'), [{ name: 'big', dtype: 'U8', shape: [2 * SMALL_CHUNK] }]);
    vi.spyOn(w, 'writeAt').mockRejectedValue(new Error('disk full'));
    let besideDone = false;
    const out = new CoalescingWriter(w, BUDGET, async () => {
      await new Promise((r) => setTimeout(r, 5));
      besideDone = true;
    });
    let released = false;
    await out.write('big', Buffer.alloc(2 * SMALL_CHUNK), () => (released = true));
    await expect(out.finish()).rejects.toThrow('disk full');
    expect(besideDone).toBe(true);
    expect(released).toBe(false);
    await w.abort();
  });

  it.each(['cuda', 'cpu'] as const)('lets the writes run ahead of a slow hash, up to the %s budget, the hash still getting every byte in order', async (backend) => {
    // Chunks of a quarter of the budget: three fit in flight, the fourth waits for the hash.
    const budget = inFlightBytes(backend);
    const size = budget / 4 + 1;
    expect(size).toBeGreaterThan(SMALL_CHUNK); // written as they come, not staged
    const parts = Array.from({ length: 5 }, () => randomBytes(size));
    const w = await SafetensorsWriter.create(join(dir, `trailing-${backend}.safetensors`), [{ name: 'big', dtype: 'U8', shape: [5 * size] }]);
    const writeAt = vi.spyOn(w, 'writeAt');
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const seen: Buffer[] = [];
    let besideRunning = 0;
    const out = new CoalescingWriter(w, budget, async (bufs) => {
      expect(besideRunning++).toBe(0);
      await gate;
      seen.push(...bufs.map((b) => Buffer.from(b)));
      besideRunning--;
    });
    const released: number[] = [];
    for (let i = 0; i < 3; i++) await out.write('big', parts[i]!, () => released.push(i));
    // The hash has not taken a byte, yet all three writes were issued and run.
    await vi.waitFor(() => expect(writeAt).toHaveBeenCalledTimes(3));
    let fourthIn = false;
    const fourth = out.write('big', parts[3]!, () => released.push(3)).then(() => (fourthIn = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(fourthIn).toBe(false); // over the budget: it waits for the hash
    expect(released).toEqual([]); // written but not hashed: nothing released
    open();
    await fourth;
    await out.write('big', parts[4]!, () => released.push(4));
    await out.finish();
    await w.close();
    expect(released).toEqual([0, 1, 2, 3, 4]);
    const file = await readFile(w.path);
    expect(file.subarray(w.header.length).equals(Buffer.concat(parts))).toBe(true);
    expect(Buffer.concat(seen).equals(Buffer.concat(parts))).toBe(true);
  });

  it('refuses a chunk out of order at once, naming the tensor', async () => {
    const { plan, data } = moeLikePlan();
    const w = await SafetensorsWriter.create(join(dir, 'misuse.safetensors'), plan);
    const out = new CoalescingWriter(w, BUDGET);
    await out.write('norm', data.get('norm')!);
    await expect(out.write('tail', Buffer.alloc(5))).rejects.toThrow(/tail.*out of order: tensor experts\.0\.input_scale must be finished first/);
    await out.settle();
    await w.abort();
  });
});

describe("convert's shard writers", () => {
  it("get their backend's in-flight budget: the CPU path's, not the GPU's", async () => {
    const finish = vi.spyOn(CoalescingWriter.prototype, 'finish');
    try {
      await convert({ model: join(MODELS, 'qwen3-moe-tiny-modelopt'), out: join(dir, 'converted'), layout: 'v2', device: 'cpu' });
      expect(finish.mock.contexts.length).toBeGreaterThan(0);
      for (const writer of finish.mock.contexts) expect((writer as unknown as { inFlightBytes: number }).inFlightBytes).toBe(inFlightBytes('cpu'));
    } finally {
      finish.mockRestore();
    }
    expect(inFlightBytes('cpu')).toBeLessThan(inFlightBytes('cuda'));
  });
});

describe('writevFully', () => {
  it('resumes partial writev results and writes every buffer in order', async () => {
    const file = Buffer.alloc(64, 0xee);
    const calls: number[] = [];
    // A file that takes at most 7 bytes per call, as a partial writev may.
    const handle = {
      async writev(bufs: Uint8Array[], position: number) {
        calls.push(bufs.length);
        let n = 0;
        for (const b of bufs) for (const byte of b) if (n < 7) file[position + n++] = byte;
        return { bytesWritten: n, buffers: bufs };
      },
      async write(buf: Uint8Array, offset: number, length: number, position: number) {
        const n = Math.min(7, length);
        file.set(buf.subarray(offset, offset + n), position);
        return { bytesWritten: n, buffer: buf };
      },
    } as unknown as FileHandle;
    const parts = [Buffer.from('abc'), Buffer.alloc(0), Buffer.from('defghijklmnop'), Buffer.from('q'), Buffer.from('rstuvwxyz0123')];
    await writevFully(handle, parts, 5);
    expect(file.subarray(5, 5 + 30).toString()).toBe('abcdefghijklmnopqrstuvwxyz0123');
    expect(file[4]).toBe(0xee);
    expect(file[35]).toBe(0xee);
    expect(calls.length).toBe(Math.ceil(30 / 7));
  });
});
