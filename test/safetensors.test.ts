import { randomBytes } from 'node:crypto';
import { type FileHandle, mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DTYPE_SIZE,
  type Dtype,
  encodeHeader,
  isDtype,
  MAX_HEADER_BYTES,
  parseHeader,
  type PlannedTensor,
  readHeader,
  SafetensorsError,
  SafetensorsReader,
  SafetensorsWriter,
} from '../src/safetensors/index.js';
import { MAX_IO_CHUNK, readExactly, writeFully } from '../src/safetensors/io.js';

const GOLDEN = fileURLToPath(new URL('../fixtures/golden/', import.meta.url));
const ALL_DTYPES = Object.keys(DTYPE_SIZE) as Dtype[];

let dir: string;
let counter = 0;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'safetensors-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
const tmpPath = (label = 'f') => join(dir, `${label}-${counter++}.safetensors`);

/** Assembles a file by hand so tests can express headers no writer would produce. */
function rawFile(header: string | Uint8Array, data: Uint8Array | number = 0, lengthPrefix?: bigint): Buffer {
  const json = typeof header === 'string' ? Buffer.from(header, 'utf8') : Buffer.from(header);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(lengthPrefix ?? BigInt(json.length));
  const body = typeof data === 'number' ? Buffer.alloc(data) : Buffer.from(data);
  return Buffer.concat([prefix, json, body]);
}

async function writeRaw(content: Uint8Array): Promise<string> {
  const p = tmpPath('raw');
  await writeFile(p, content);
  return p;
}

async function writeTensors(path: string, tensors: { plan: PlannedTensor; data: Buffer }[], metadata?: Record<string, string>) {
  const w = await SafetensorsWriter.create(
    path,
    tensors.map((t) => t.plan),
    metadata,
  );
  for (const t of tensors) await w.write(t.plan.name, t.data);
  await w.close();
}

async function expectStError(
  p: Promise<unknown>,
  reason: RegExp,
  tensor: string | undefined,
  file?: string,
): Promise<SafetensorsError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SafetensorsError);
  const se = err as SafetensorsError;
  expect(se.reason).toMatch(reason);
  expect(se.tensor).toBe(tensor);
  if (file !== undefined) expect(se.file).toBe(file);
  expect(se.message).not.toContain('\n');
  expect(se.message).toContain(se.reason.replace(/\n/g, '\\n'));
  if (tensor !== undefined) expect(se.message).toContain(`tensor ${tensor.replace(/\n/g, "\\n")}: `);
  return se;
}

const bytesFor = (dtype: Dtype, shape: number[]) => shape.reduce((n, d) => n * d, DTYPE_SIZE[dtype]);

describe('dtypes', () => {
  it('knows sizes and rejects names that are not own keys', () => {
    expect(ALL_DTYPES).toHaveLength(16);
    expect(DTYPE_SIZE.BF16).toBe(2);
    expect(DTYPE_SIZE.F8_E8M0).toBe(1);
    expect(DTYPE_SIZE.I64).toBe(8);
    expect(isDtype('F8_E4M3')).toBe(true);
    for (const s of ['F4', 'f32', 'toString', '__proto__', 'constructor', '']) expect(isDtype(s)).toBe(false);
  });
});

describe('SafetensorsError', () => {
  it('formats a one-line message with and without a tensor', () => {
    expect(new SafetensorsError('a.st', 'w', 'bad').message).toBe('a.st: tensor w: bad');
    expect(new SafetensorsError('a.st', undefined, 'bad').message).toBe('a.st: bad');
    const e = new SafetensorsError('a.st', 'evil\nname', 'x\ry');
    expect(e.message).toBe('a.st: tensor evil\\nname: x\\ry');
    expect(e.tensor).toBe('evil\nname');
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('SafetensorsError');
  });
});

describe('round trip', () => {
  it('writes and reads every dtype, chunked, with zero-size and scalar tensors', async () => {
    const tensors: { plan: PlannedTensor; data: Buffer }[] = [];
    ALL_DTYPES.forEach((dtype, i) => {
      const shape = [3, i + 1, 5];
      tensors.push({ plan: { name: `t.${dtype}`, dtype, shape }, data: randomBytes(bytesFor(dtype, shape)) });
    });
    tensors.push({ plan: { name: 'empty', dtype: 'F32', shape: [0] }, data: Buffer.alloc(0) });
    tensors.push({ plan: { name: 'empty2d', dtype: 'BF16', shape: [4, 0] }, data: Buffer.alloc(0) });
    tensors.push({ plan: { name: 'scalar', dtype: 'F64', shape: [] }, data: randomBytes(8) });
    tensors.push({ plan: { name: 'Ünïcødé ✓', dtype: 'U8', shape: [3] }, data: randomBytes(3) });

    const path = tmpPath();
    const w = await SafetensorsWriter.create(
      path,
      tensors.map((t) => t.plan),
    );
    for (const { plan, data } of tensors) {
      // Irregular chunk sizes, including empty chunks, exercise the append bookkeeping.
      const sizes = [1, 0, 7, 64, 3];
      let off = 0;
      for (let k = 0; off < data.length; k++) {
        const n = Math.min(sizes[k % sizes.length]!, data.length - off);
        await w.write(plan.name, data.subarray(off, off + n));
        off += n;
      }
      if (data.length === 0) await w.write(plan.name, data);
    }
    await w.close();

    const total = tensors.reduce((n, t) => n + t.data.length, 0);
    const r = await SafetensorsReader.open(path);
    try {
      expect(r.header.dataStart % 8).toBe(0);
      expect(r.header.dataStart).toBe(8 + r.header.headerSize);
      expect(r.header.fileSize).toBe(r.header.dataStart + total);
      expect((await stat(path)).size).toBe(r.header.fileSize);
      expect(r.header.metadata).toEqual({});
      expect(r.names()).toEqual(tensors.map((t) => t.plan.name));
      for (const { plan, data } of tensors) {
        expect(r.has(plan.name)).toBe(true);
        const e = r.entry(plan.name);
        expect(e).toMatchObject({ name: plan.name, dtype: plan.dtype, shape: plan.shape });
        expect(e.end - e.begin).toBe(data.length);
        const got = await r.read(plan.name);
        expect(got.equals(data)).toBe(true);
        // Own ArrayBuffer at offset 0, so typed-array views are always aligned.
        expect(got.byteOffset).toBe(0);
      }
      const f32 = await r.read('t.F32');
      expect(new Float32Array(f32.buffer, f32.byteOffset, f32.length / 4)).toHaveLength(3 * 3 * 5);

      const src = tensors.find((t) => t.plan.name === 't.I32')!.data;
      expect((await r.readRange('t.I32', 4, 8)).equals(src.subarray(4, 12))).toBe(true);
      expect((await r.readRange('t.I32', src.length, 0)).length).toBe(0);
      await expectStError(r.readRange('t.I32', src.length - 2, 4), /outside the tensor's/, 't.I32', path);
      await expectStError(r.readRange('t.I32', -1, 1), /outside/, 't.I32');
      await expectStError(r.readRange('t.I32', 0.5, 1), /outside/, 't.I32');
      expect(r.has('nope')).toBe(false);
      expect(() => r.entry('nope')).toThrow(SafetensorsError);
      expect(() => r.entry('nope')).toThrow(`${path}: tensor nope: no such tensor`);
      await expectStError(r.read('nope'), /^no such tensor$/, 'nope');
    } finally {
      await r.close();
    }
    await r.close(); // idempotent
    await expect(r.read('t.U8')).rejects.toThrow(/closed/);
  });

  it('round-trips metadata, including awkward keys', async () => {
    const metadata = { format: 'pt', 'ümlaut key': 'välue\n"quoted"', '10': 'numeric-looking', __proto__x: 'y', empty: '' };
    const withProto: Record<string, string> = { ...metadata };
    Object.defineProperty(withProto, '__proto__', { value: 'not a prototype', enumerable: true, configurable: true, writable: true });
    const path = tmpPath();
    await writeTensors(path, [{ plan: { name: 'w', dtype: 'U8', shape: [2] }, data: Buffer.from([1, 2]) }], withProto);
    const h = await readHeader(path);
    expect(Object.keys(h.metadata).sort()).toEqual(Object.keys(withProto).sort());
    for (const k of Object.keys(withProto)) expect(Object.getOwnPropertyDescriptor(h.metadata, k)?.value).toBe(withProto[k]);
    expect(Object.getPrototypeOf(h.metadata)).toBe(Object.prototype);
    expect([...h.tensors.keys()]).toEqual(['w']);
  });

  it('handles a file with no tensors and an empty metadata block', async () => {
    const path = tmpPath();
    await writeTensors(path, [], {});
    const r = await SafetensorsReader.open(path);
    expect(r.names()).toEqual([]);
    expect(r.header.metadata).toEqual({});
    expect(r.header.fileSize).toBe(r.header.dataStart);
    await r.close();
    const bare = encodeHeader([]);
    expect(bare.header.subarray(8).toString()).toBe('{}      ');
  });

  it('reports a file truncated after open as SafetensorsError on read', async () => {
    const path = tmpPath();
    await writeTensors(path, [
      { plan: { name: 'a', dtype: 'U8', shape: [16] }, data: randomBytes(16) },
      { plan: { name: 'b', dtype: 'U8', shape: [16] }, data: randomBytes(16) },
    ]);
    const r = await SafetensorsReader.open(path);
    try {
      await truncate(path, r.header.dataStart + 20);
      expect((await r.read('a')).length).toBe(16);
      await expectStError(r.read('b'), /unexpected end of file/, 'b', path);
    } finally {
      await r.close();
    }
  });
});

describe('encodeHeader determinism and layout', () => {
  const plan: PlannedTensor[] = [
    { name: 'z.weight', dtype: 'BF16', shape: [4, 8] },
    { name: '10', dtype: 'I32', shape: [3] },
    { name: '2', dtype: 'U8', shape: [5] },
    { name: 'a.scale', dtype: 'F8_E4M3', shape: [] },
  ];

  it('lays tensors out in plan order, keeps key order, puts __metadata__ first, pads to 8', () => {
    const { header, offsets } = encodeHeader(plan, { b: '2', a: '1' });
    expect([...offsets]).toEqual([
      ['z.weight', [0, 64]],
      ['10', [64, 76]],
      ['2', [76, 81]],
      ['a.scale', [81, 82]],
    ]);
    const len = Number(header.readBigUInt64LE(0));
    expect(header.length).toBe(8 + len);
    expect(len % 8).toBe(0);
    const json = header.subarray(8).toString('utf8');
    expect(json.trimEnd()).toBe(
      '{"__metadata__":{"a":"1","b":"2"},' +
        '"z.weight":{"dtype":"BF16","shape":[4,8],"data_offsets":[0,64]},' +
        '"10":{"dtype":"I32","shape":[3],"data_offsets":[64,76]},' +
        '"2":{"dtype":"U8","shape":[5],"data_offsets":[76,81]},' +
        '"a.scale":{"dtype":"F8_E4M3","shape":[],"data_offsets":[81,82]}}',
    );
    expect(/^ *$/.test(json.slice(json.trimEnd().length))).toBe(true);
    // Our own parser accepts what we produce.
    const h = parseHeader('mem', header.subarray(8), header.length + 82);
    expect([...h.tensors.keys()]).toEqual(['z.weight', '10', '2', 'a.scale']);
  });

  it('produces identical bytes for identical input (metadata order does not matter)', async () => {
    expect(encodeHeader(plan, { a: '1', b: '2' }).header.equals(encodeHeader(plan, { b: '2', a: '1' }).header)).toBe(true);
    const data = plan.map((p) => ({ plan: p, data: Buffer.alloc(bytesFor(p.dtype, p.shape), 0xab) }));
    const p1 = tmpPath();
    const p2 = tmpPath();
    await writeTensors(p1, data, { x: '1', y: '2' });
    await writeTensors(p2, data, { y: '2', x: '1' });
    expect((await readFile(p1)).equals(await readFile(p2))).toBe(true);
  });

  it('rejects bad plans', () => {
    const bad = (tensors: PlannedTensor[], reason: RegExp, tensor: string | undefined, metadata?: Record<string, string>) => {
      try {
        encodeHeader(tensors, metadata);
      } catch (e) {
        expect(e).toBeInstanceOf(SafetensorsError);
        expect((e as SafetensorsError).reason).toMatch(reason);
        expect((e as SafetensorsError).tensor).toBe(tensor);
        return;
      }
      throw new Error('expected encodeHeader to throw');
    };
    bad([{ name: 'a', dtype: 'U8', shape: [1] }, { name: 'a', dtype: 'U8', shape: [1] }], /more than once/, 'a');
    bad([{ name: '__metadata__', dtype: 'U8', shape: [1] }], /reserved/, '__metadata__');
    bad([{ name: 'a', dtype: 'F4' as Dtype, shape: [1] }], /unknown dtype "F4"/, 'a');
    bad([{ name: 'a', dtype: 'U8', shape: [-1] }], /non-negative safe integers/, 'a');
    bad([{ name: 'a', dtype: 'U8', shape: [1.5] }], /non-negative safe integers/, 'a');
    bad([{ name: 'a', dtype: 'F64', shape: [2 ** 30, 2 ** 30] }], /exceed 2\^53/, 'a');
    bad([], /must be a string, got number/, undefined, { k: 1 as unknown as string });
  });
});

describe('writer misuse', () => {
  const plan: PlannedTensor[] = [
    { name: 'a', dtype: 'F32', shape: [2] },
    { name: 'z', dtype: 'F32', shape: [0] },
    { name: 'b', dtype: 'U8', shape: [3] },
  ];

  it('rejects writing out of order, overflow, unknown tensors, and incomplete close', async () => {
    const path = tmpPath();
    const w = await SafetensorsWriter.create(path, plan);
    await expectStError(w.write('b', Buffer.alloc(1)), /out of order: tensor a must be finished first \(0 of 8 bytes/, 'b', path);
    await expectStError(w.write('nope', Buffer.alloc(1)), /not in the planned tensor list/, 'nope');
    await w.write('a', Buffer.alloc(5));
    await expectStError(w.write('a', Buffer.alloc(4)), /overflow: 4 bytes after 5 would exceed the planned 8/, 'a');
    await expectStError(w.close(), /incomplete: 5 of 8 bytes written \(2 more tensor/, 'a');
    await w.write('a', Buffer.alloc(3));
    await w.write('z', Buffer.alloc(0)); // zero-size tensor already complete: an empty write is fine
    await expectStError(w.write('z', Buffer.alloc(1)), /overflow: already complete/, 'z');
    await expectStError(w.write('a', Buffer.alloc(1)), /overflow: already complete/, 'a');
    await w.write('b', Buffer.from([7]));
    await expectStError(w.close(), /incomplete: 1 of 3 bytes written$/, 'b');
    // The writer stays usable after a refused close.
    await w.write('b', Buffer.from([8, 9]));
    await w.close();
    await w.close(); // idempotent
    await expect(w.write('b', Buffer.alloc(0))).rejects.toThrow(/closed/);
    await w.abort(); // no-op after a successful close: the finished file stays
    const r = await SafetensorsReader.open(path);
    expect([...(await r.read('b'))]).toEqual([7, 8, 9]);
    await r.close();
  });

  it('never clobbers an existing file', async () => {
    const path = tmpPath();
    await writeFile(path, 'precious');
    await expect(SafetensorsWriter.create(path, plan)).rejects.toMatchObject({ code: 'EEXIST' });
    expect(await readFile(path, 'utf8')).toBe('precious');
  });

  it('validates the plan before creating the file', async () => {
    const path = tmpPath();
    await expectStError(SafetensorsWriter.create(path, [{ name: 'x', dtype: 'Q8' as Dtype, shape: [] }]), /unknown dtype/, 'x', path);
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('abort closes and removes the partial file', async () => {
    const path = tmpPath();
    const w = await SafetensorsWriter.create(path, plan);
    await w.write('a', Buffer.alloc(2));
    await w.abort();
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
    await w.abort(); // idempotent
    await expect(w.write('a', Buffer.alloc(1))).rejects.toThrow(/aborted/);
    await expect(w.close()).rejects.toThrow(/aborted/);
  });

  it('keeps positions right when writes are not awaited one by one', async () => {
    const path = tmpPath();
    const big: PlannedTensor[] = [
      { name: 'p', dtype: 'U8', shape: [1000] },
      { name: 'q', dtype: 'I16', shape: [500] },
    ];
    const p = randomBytes(1000);
    const q = randomBytes(1000);
    const w = await SafetensorsWriter.create(path, big);
    const ops: Promise<void>[] = [];
    for (let i = 0; i < 1000; i += 100) ops.push(w.write('p', p.subarray(i, i + 100)));
    for (let i = 0; i < 1000; i += 250) ops.push(w.write('q', q.subarray(i, i + 250)));
    await Promise.all(ops);
    await w.close();
    const r = await SafetensorsReader.open(path);
    expect((await r.read('p')).equals(p)).toBe(true);
    expect((await r.read('q')).equals(q)).toBe(true);
    await r.close();
  });
});

describe('golden fixtures', () => {
  it('parses dense_small.safetensors and reads consistent tensors', async () => {
    const path = join(GOLDEN, 'dense_small.safetensors');
    const h = await readHeader(path);
    expect(h.fileSize).toBe((await stat(path)).size);
    expect(h.dataStart).toBe(8 + h.headerSize);
    expect(h.tensors.size).toBe(89);
    expect(h.tensors.get('d128x256.weight')).toMatchObject({ dtype: 'U8', shape: [128, 128] });
    expect(h.tensors.get('d128x256.weight_scale')).toMatchObject({ dtype: 'F8_E4M3', shape: [128, 16] });
    expect(h.tensors.get('d128x256.weight_scale_2')).toMatchObject({ dtype: 'F32', shape: [] });
    expect(h.tensors.get('d128x256.ref.w_dequant_f32')).toMatchObject({ dtype: 'F32', shape: [128, 256] });
    expect(h.tensors.get('d128x256.v1.qweight')).toMatchObject({ dtype: 'I32', shape: [16, 256] });
    expect(h.tensors.get('d128x256.x.m1.bf16')).toMatchObject({ dtype: 'BF16', shape: [1, 256] });
    const cases = JSON.parse(h.metadata.cases!) as Record<string, { N: number; K: number }>;
    expect(cases['d128x256']).toMatchObject({ N: 128, K: 256 });
    expect(Object.keys(h.metadata).sort()).toEqual(['cases', 'layout_v2']);

    // Decoding the NVFP4 weight with its scales must give the stored reference, which only
    // holds if every tensor was read from exactly the right bytes.
    const r = await SafetensorsReader.open(path);
    try {
      const w = await r.read('d128x256.weight');
      const sc = await r.read('d128x256.weight_scale');
      const s2 = (await r.read('d128x256.weight_scale_2')).readFloatLE(0);
      const ref = await r.read('d128x256.ref.w_dequant_f32');
      const E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
      const fp4 = (q: number) => (q & 8 ? -1 : 1) * E2M1[q & 7]!;
      const e4m3 = (x: number) => {
        const e = (x >> 3) & 15;
        const m = x & 7;
        return (x & 0x80 ? -1 : 1) * (e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7));
      };
      let bad = 0;
      for (let n = 0; n < 128; n++) {
        for (let k = 0; k < 256; k++) {
          const byte = w[n * 128 + (k >> 1)]!;
          const v = fp4(k & 1 ? byte >> 4 : byte & 15) * e4m3(sc[n * 16 + (k >> 4)]!) * s2;
          const want = ref.readFloatLE((n * 256 + k) * 4);
          if (Math.abs(v - want) > 1e-6 * Math.abs(want)) bad++;
        }
      }
      expect(bad).toBe(0);
    } finally {
      await r.close();
    }
  });

  it.each(['dense_small', 'dense_large', 'moe'])('reads every tensor of %s.safetensors', async (name) => {
    const path = join(GOLDEN, `${name}.safetensors`);
    const r = await SafetensorsReader.open(path);
    try {
      let next = 0;
      for (const n of r.names()) {
        const e = r.entry(n);
        expect(e.begin).toBe(next);
        next = e.end;
        expect((await r.read(n)).length).toBe(e.end - e.begin);
      }
      expect(next).toBe(r.header.fileSize - r.header.dataStart);
    } finally {
      await r.close();
    }
  });
});

describe('hostile inputs', () => {
  const entry = (dtype: string, shape: unknown[], b: number, e: number) => ({ dtype, shape, data_offsets: [b, e] });
  const hdr = (o: unknown) => JSON.stringify(o);
  const u8 = (b: number, e: number) => `{"dtype":"U8","shape":[${e - b}],"data_offsets":[${b},${e}]}`;

  type Case = [label: string, content: () => Buffer | Promise<Buffer>, reason: RegExp, tensor?: string];
  const cases: Case[] = [
    ['empty file', () => Buffer.alloc(0), /file is 0 bytes, too short for the 8-byte header length prefix/],
    ['file shorter than 8 bytes', () => Buffer.from([1, 2, 3]), /file is 3 bytes, too short/],
    ['header length 2^40', () => rawFile('{}', 0, 2n ** 40n), new RegExp(`header length 1099511627776 exceeds the ${MAX_HEADER_BYTES}-byte limit`)],
    ['header length 2^64-1', () => rawFile('{}', 0, 2n ** 64n - 1n), /header length 18446744073709551615 exceeds the .*limit/],
    ['header length beyond the file', () => rawFile('{}', 8, 100n), /header length 100 exceeds the 10 bytes after the length prefix/],
    ['invalid UTF-8', () => rawFile(Uint8Array.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d])), /header is not valid UTF-8/],
    ['overlong UTF-8', () => rawFile(Uint8Array.from([0x7b, 0xc0, 0xaf, 0x7d])), /not valid UTF-8/],
    ['UTF-8 BOM', () => rawFile(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{}')])), /not valid JSON/],
    ['not JSON', () => rawFile('{"a": '), /header is not valid JSON/],
    ['empty header', () => rawFile(''), /header is not valid JSON/],
    ['NUL padding', () => rawFile('{}\0\0\0\0\0\0'), /not valid JSON/],
    ['leading whitespace', () => rawFile(' {}'), /header must start with '\{'/],
    ['JSON array', () => rawFile('[]'), /header must be a JSON object, got \[\]/],
    ['JSON null', () => rawFile('null'), /header must be a JSON object, got null/],
    ['JSON number', () => rawFile('5'), /header must be a JSON object, got 5/],
    ['duplicate tensor name', () => rawFile(`{"w":${u8(0, 4)},"w":${u8(4, 8)}}`, 8), /^duplicate key "w"$/, 'w'],
    ['duplicate via escapes', () => rawFile(`{"w":${u8(0, 4)},"\\u0077":${u8(0, 4)}}`, 4), /duplicate key "w"/, 'w'],
    ['duplicate field inside an entry', () => rawFile(`{"w":{"dtype":"F32","dtype":"U8","shape":[4],"data_offsets":[0,4]}}`, 4), /duplicate key "dtype" in w/, 'w'],
    ['duplicate __metadata__', () => rawFile(`{"__metadata__":{},"__metadata__":{}}`), /duplicate key "__metadata__"/],
    ['duplicate metadata key', () => rawFile(`{"__metadata__":{"k":"1","k":"2"}}`), /duplicate key "k" in __metadata__/],
    ['unknown dtype', () => rawFile(hdr({ w: entry('Q8', [4], 0, 4) }), 4), /unknown dtype "Q8"/, 'w'],
    ['prototype dtype', () => rawFile(hdr({ w: entry('toString', [4], 0, 4) }), 4), /unknown dtype "toString"/, 'w'],
    ['dtype not a string', () => rawFile(hdr({ w: { dtype: 4, shape: [4], data_offsets: [0, 4] } }), 4), /dtype must be a string, got 4/, 'w'],
    ['negative shape dim', () => rawFile(hdr({ w: entry('U8', [-1], 0, 0) })), /shape\[0\] must be a non-negative safe integer, got -1/, 'w'],
    ['non-integer shape dim', () => rawFile(hdr({ w: entry('U8', [2, 1.5], 0, 3) }), 3), /shape\[1\] must be a non-negative safe integer, got 1.5/, 'w'],
    ['string shape dim', () => rawFile(hdr({ w: entry('U8', ['4'], 0, 4) }), 4), /shape\[0\] must be a non-negative safe integer, got "4"/, 'w'],
    ['unsafe shape dim', () => rawFile(hdr({ w: entry('U8', [2 ** 60], 0, 4) }), 4), /shape\[0\] must be a non-negative safe integer/, 'w'],
    ['shape not an array', () => rawFile(hdr({ w: { dtype: 'U8', shape: 4, data_offsets: [0, 4] } }), 4), /shape must be an array, got 4/, 'w'],
    ['entry not an object', () => rawFile(hdr({ w: [1, 2] })), /entry must be an object/, 'w'],
    ['missing data_offsets', () => rawFile(hdr({ w: { dtype: 'U8', shape: [4] } }), 4), /data_offsets is missing/, 'w'],
    ['data_offsets of wrong arity', () => rawFile(hdr({ w: { dtype: 'U8', shape: [4], data_offsets: [0, 4, 8] } }), 4), /data_offsets must be \[begin, end\]/, 'w'],
    ['negative offset', () => rawFile(hdr({ w: entry('U8', [0], -1, -1) })), /data_offsets\[0\] must be a non-negative safe integer, got -1/, 'w'],
    ['extra field', () => rawFile(hdr({ w: { ...entry('U8', [4], 0, 4), extra: 1 } }), 4), /unexpected field\(s\) "extra"/, 'w'],
    ['begin after end', () => rawFile(hdr({ w: entry('U8', [0], 4, 0) }), 4), /data_offsets \[4, 0\] have begin after end/, 'w'],
    ['byte length mismatch', () => rawFile(hdr({ w: entry('F32', [2, 3], 0, 20) }), 20), /byte length mismatch: F32 \[2, 3\] needs 24 bytes but data_offsets \[0, 20\] span 20/, 'w'],
    ['element count beyond 2^53', () => rawFile(hdr({ w: entry('U8', [2 ** 30, 2 ** 30, 2 ** 30], 0, 0) })), /byte length mismatch: .* needs 1237940039285380274899124224 bytes/, 'w'],
    ['offsets out of bounds', () => rawFile(hdr({ a: entry('U8', [4], 0, 4), w: entry('U8', [2 ** 40], 4, 4 + 2 ** 40) }), 8), /data_offsets \[4, 1099511627780\] out of bounds: the data section is only 8 bytes/, 'w'],
    ['overlap', () => rawFile(hdr({ a: entry('U8', [4], 0, 4), b: entry('U8', [4], 2, 6) }), 6), /data_offsets \[2, 6\] overlap tensor a \[0, 4\]/, 'b'],
    ['zero-size tensor inside another', () => rawFile(hdr({ a: entry('U8', [4], 0, 4), z: entry('U8', [0], 2, 2) }), 4), /overlap tensor a/, 'z'],
    ['gap between tensors', () => rawFile(hdr({ a: entry('U8', [4], 0, 4), b: entry('U8', [4], 6, 10) }), 10), /gap of 2 unused bytes after tensor a \(ends at 4\)/, 'b'],
    ['gap at the start', () => rawFile(hdr({ b: entry('U8', [4], 2, 6) }), 6), /gap of 2 unused bytes at the start of the data section/, 'b'],
    ['trailing bytes after the last tensor', () => rawFile(hdr({ a: entry('U8', [4], 0, 4) }), 7), /3 unused bytes after the last tensor/],
    [
      'truncated data section',
      async () => {
        const p = tmpPath();
        await writeTensors(p, [
          { plan: { name: 'a', dtype: 'F32', shape: [4] }, data: randomBytes(16) },
          { plan: { name: 'b', dtype: 'F32', shape: [4] }, data: randomBytes(16) },
        ]);
        const full = await readFile(p);
        return full.subarray(0, full.length - 3);
      },
      /data_offsets \[16, 32\] out of bounds: the data section is only 29 bytes \(file truncated\?\)/,
      'b',
    ],
    ['non-string metadata value', () => rawFile(hdr({ __metadata__: { k: 1 } })), /__metadata__ value for key "k" must be a string, got 1/],
    ['nested metadata value', () => rawFile(hdr({ __metadata__: { k: { x: '1' } } })), /__metadata__ value for key "k" must be a string, got an object/],
    ['metadata not an object', () => rawFile(hdr({ __metadata__: ['a'] })), /__metadata__ must be an object of strings/],
    ['newline in tensor name', () => rawFile(hdr({ 'evil\nname': entry('Q8', [1], 0, 1) }), 1), /unknown dtype/, 'evil\nname'],
  ];

  it.each(cases)('%s', async (_label, content, reason, tensor) => {
    const path = await writeRaw(await content());
    await expectStError(readHeader(path), reason, tensor, path);
    // The reader goes through the same validation.
    await expectStError(SafetensorsReader.open(path), reason, tensor, path);
  });

  it('parseHeader rejects a fileSize that cannot hold the header', () => {
    expect(() => parseHeader('x', Buffer.from('{}'), 9)).toThrow(/header of 2 bytes does not fit in a file of 9 bytes/);
  });

  it('accepts JSON whitespace as padding after the object', async () => {
    const path = await writeRaw(rawFile(`{"a":${u8(0, 2)}}\n\t  `, 2));
    const h = await readHeader(path);
    expect(h.tensors.get('a')).toEqual({ name: 'a', dtype: 'U8', shape: [2], begin: 0, end: 2 });
  });

  it('does not read past the header when the data section is huge', async () => {
    // A valid header followed by 64 MiB of data: readHeader must not care how big the data is.
    const path = tmpPath();
    const size = 64 * 1024 * 1024;
    await writeFile(path, rawFile(`{"a":${u8(0, size)}}`));
    await truncate(path, (await stat(path)).size + size);
    const before = process.memoryUsage().arrayBuffers;
    const h = await readHeader(path);
    expect(h.tensors.get('a')!.end).toBe(size);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(size / 2);
  });
});

describe('large files', () => {
  it('handles offsets past 4 GiB in a sparse file and refuses tensors larger than a Buffer', async () => {
    const path = tmpPath('sparse');
    const huge = 2 ** 33; // 8 GiB, more than one Buffer can hold in Node 20
    const header = `{"small":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"big":{"dtype":"BF16","shape":[${huge / 2}],"data_offsets":[8,${8 + huge}]},"tail":{"dtype":"I64","shape":[1],"data_offsets":[${8 + huge},${16 + huge}]}}`;
    const prefix = rawFile(header, Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]));
    await writeFile(path, prefix);
    // Extend without writing: the file system keeps the 8 GiB hole sparse.
    await truncate(path, prefix.length + huge + 8);
    const r = await SafetensorsReader.open(path);
    try {
      expect(r.names()).toEqual(['small', 'big', 'tail']);
      expect([...(await r.read('small'))]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      expect((await r.read('tail')).readBigInt64LE(0)).toBe(0n);
      expect([...(await r.readRange('big', huge - 4, 4))]).toEqual([0, 0, 0, 0]);
      await expectStError(r.read('big'), /more than one Buffer can hold.*readRange/, 'big', path);
    } finally {
      await r.close();
    }
  });

  it('splits positional I/O into calls below the int32 limit that aborts Node 20', async () => {
    // A real >2 GiB buffer is too heavy for a unit test; a stand-in with a large `length`
    // is enough, since the helpers only pass it through to the handle.
    const total = 2 * MAX_IO_CHUNK + 123;
    const fake = { length: total } as unknown as Uint8Array;
    const calls: [number, number, number][] = [];
    const handle = {
      read: async (_b: Uint8Array, off: number, len: number, pos: number) => {
        calls.push([off, len, pos]);
        return { bytesRead: Math.min(len, 1000 + len / 2) }; // short reads, as the OS may do
      },
      write: async (_b: Uint8Array, off: number, len: number, pos: number) => {
        calls.push([off, len, pos]);
        return { bytesWritten: len };
      },
    } as unknown as FileHandle;

    await readExactly(handle, fake, 100, 'f', 't');
    expect(calls.every(([, len]) => len <= MAX_IO_CHUNK && len < 2 ** 31)).toBe(true);
    let done = 0;
    for (const [off, len, pos] of calls) {
      expect(off).toBe(done);
      expect(pos).toBe(100 + done);
      done += Math.min(len, 1000 + len / 2);
    }
    expect(done).toBe(total);

    calls.length = 0;
    await writeFully(handle, fake, 7);
    expect(calls.map(([, len]) => len)).toEqual([MAX_IO_CHUNK, MAX_IO_CHUNK, 123]);
    expect(calls.map(([, , pos]) => pos)).toEqual([7, 7 + MAX_IO_CHUNK, 7 + 2 * MAX_IO_CHUNK]);
  });

  it('reports end of file from readExactly as a SafetensorsError', async () => {
    const handle = { read: async () => ({ bytesRead: 0 }) } as unknown as FileHandle;
    await expectStError(readExactly(handle, new Uint8Array(4), 10, 'f', 't'), /unexpected end of file at byte 10/, 't', 'f');
  });
});
