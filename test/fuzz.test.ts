// Hostile safetensors: thousands of mutated and random files. Every one must end in a
// SafetensorsError (one line, naming the file) or parse cleanly — never another exception,
// a hang, or an allocation sized by the file's claims. A sample goes through the CLI too.
import { mkdir, readFile, rm, writeFile, cp } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SafetensorsError, SafetensorsReader } from '../src/safetensors/index.js';
import { cli, MODELS, tempDir } from './helpers/models.js';

let work: string;
let valid: Buffer;
beforeAll(async () => {
  work = await tempDir();
  valid = await readFile(join(MODELS, 'llama-tiny-modelopt', 'model.safetensors'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** Seeded xorshift, so a failing case can be replayed from its number. */
function rng(seed: number) {
  let x = seed >>> 0 || 0x9e3779b9;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
  return { next, int: (n: number) => Math.floor(next() * n) };
}

const headerOf = (b: Buffer) => {
  const n = Number(b.readBigUInt64LE(0));
  return { n, json: JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as Record<string, any> };
};

function withHeader(json: unknown, data: Buffer, rawLength?: bigint): Buffer {
  const text = Buffer.from(typeof json === 'string' ? json : JSON.stringify(json));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(rawLength ?? BigInt(text.length));
  return Buffer.concat([len, text, data]);
}

/** One hostile file derived from the valid one (or from nothing). */
function mutate(seed: number): Buffer {
  const r = rng(seed);
  const { n, json } = headerOf(valid);
  const data = valid.subarray(8 + n);
  const names = Object.keys(json).filter((k) => k !== '__metadata__');
  const pick = () => names[r.int(names.length)]!;
  const h = structuredClone(json);
  switch (r.int(14)) {
    case 0: // truncated anywhere
      return valid.subarray(0, r.int(valid.length));
    case 1: { // random bytes flipped in the header
      const b = Buffer.from(valid);
      for (let i = 0, m = 1 + r.int(8); i < m; i++) b[8 + r.int(n)] ^= 1 << r.int(8);
      return b;
    }
    case 2: // absurd header length
      return withHeader(json, data, [2n ** 63n, 2n ** 40n, BigInt(valid.length), BigInt(n + 1 + r.int(1000))][r.int(4)]);
    case 3: // offsets out of range or overlapping
      h[pick()].data_offsets = [r.int(data.length * 2), r.int(data.length * 2)];
      return withHeader(h, data);
    case 4: // wrong byte length for the shape
      h[pick()].shape = h[pick()].shape.map((d: number) => d + 1 + r.int(3));
      return withHeader(h, data);
    case 5: // negative, fractional or huge dims
      h[pick()].shape = [[-1, 1.5, 2 ** 53, 1e300, '3', null][r.int(6)], 4];
      return withHeader(h, data);
    case 6: // unknown dtype
      h[pick()].dtype = ['F4', 'Q8', '', 'u8', 'F8_E4M3FNUZ', 42][r.int(6)];
      return withHeader(h, data);
    case 7: { // duplicate keys
      const name = pick();
      const text = JSON.stringify(h);
      return withHeader(`${text.slice(0, -1)},${JSON.stringify(name)}:${JSON.stringify(h[name])}}`, data);
    }
    case 8: { // invalid UTF-8 inside a name
      const text = Buffer.from(JSON.stringify(h));
      const at = text.indexOf('"model') + 2;
      text[at] = [0xff, 0xc0, 0xed, 0x80][r.int(4)]!;
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(text.length));
      return Buffer.concat([len, text, data]);
    }
    case 9: // not an object / not JSON
      return withHeader(['[]', 'null', '"x"', '{', '{"a":1}', '{"__metadata__":{"k":1}}', ''][r.int(7)], data);
    case 10: // extra or missing fields
      if (r.int(2)) delete h[pick()].data_offsets;
      else h[pick()].extra = 1;
      return withHeader(h, data);
    case 11: // data section longer or shorter than the header says
      return withHeader(h, r.int(2) ? Buffer.concat([data, Buffer.alloc(1 + r.int(64))]) : data.subarray(0, data.length - 1 - r.int(64)));
    case 12: { // pure noise
      const b = Buffer.alloc(r.int(4096));
      for (let i = 0; i < b.length; i++) b[i] = r.int(256);
      return b;
    }
    default: { // a gap between tensors
      const name = pick();
      const [a, b] = h[name].data_offsets as [number, number];
      h[name].data_offsets = [a + 1, b + 1];
      return withHeader(h, data);
    }
  }
}

describe('fuzzed safetensors files', () => {
  it('3000 mutated files: each parses cleanly or fails with a one-line SafetensorsError', async () => {
    const path = join(work, 'fuzz.safetensors');
    let rejected = 0;
    for (let seed = 1; seed <= 3000; seed++) {
      await writeFile(path, mutate(seed));
      try {
        const r = await SafetensorsReader.open(path);
        for (const name of r.names()) await r.read(name);
        await r.close();
      } catch (e) {
        if (!(e instanceof SafetensorsError)) throw new Error(`seed ${seed}: ${String(e)}`);
        expect(e.message.includes('\n'), `seed ${seed}`).toBe(false);
        expect(e.message.startsWith(path), `seed ${seed}`).toBe(true);
        rejected++;
      }
    }
    // Almost every mutation breaks the file; a few (e.g. a flipped bit inside a name) do not.
    expect(rejected).toBeGreaterThan(2700);
  });

  it('through the CLI: exit code 2 and one "error:" line, never a stack trace', async () => {
    for (let seed = 5001; seed <= 5040; seed++) {
      const model = join(work, `model-${seed}`);
      await mkdir(model);
      await cp(join(MODELS, 'llama-tiny-modelopt', 'config.json'), join(model, 'config.json'));
      await writeFile(join(model, 'model.safetensors'), mutate(seed));
      const r = cli(['convert', model, '-o', join(work, `out-${seed}`)]);
      if (r.code === 0) continue; // a harmless mutation
      expect(r.code, `seed ${seed}: ${r.stderr}`).toBe(2);
      expect(r.stderr, `seed ${seed}`).toMatch(/^error: [^\n]+\n$/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
  });

  it('index.json naming a missing shard, a tensor in two shards, or a tensor that is elsewhere', async () => {
    const src = join(MODELS, 'llama-tiny-ct');
    const index = JSON.parse(await readFile(join(src, 'model.safetensors.index.json'), 'utf8'));
    const name = Object.keys(index.weight_map)[0]!;
    const cases: [string, (ix: any) => void, RegExp][] = [
      ['missing shard', (ix) => (ix.weight_map[name] = 'model-00009-of-00009.safetensors'), /names shard model-00009-of-00009\.safetensors, which does not exist$/],
      ['path escape', (ix) => (ix.weight_map[name] = '../x.safetensors'), /weight_map names "\.\.\/x\.safetensors", which is not a \.safetensors file in this directory$/],
      ['listed in the other shard', (ix) => (ix.weight_map[name] = ix.weight_map[name].includes('00001') ? 'model-00002-of-00002.safetensors' : 'model-00001-of-00002.safetensors'), /not listed for this shard in model\.safetensors\.index\.json \(it says model-0000\d-of-00002\.safetensors\)$/],
      ['a tensor that is nowhere', (ix) => (ix.weight_map['ghost.weight'] = 'model-00001-of-00002.safetensors'), /tensor ghost\.weight: listed in model-00001-of-00002\.safetensors but not there$/],
      ['not an index', (ix) => delete ix.weight_map, /model\.safetensors\.index\.json: weight_map: /],
    ];
    for (const [title, edit, pattern] of cases) {
      const model = join(work, `index-${title.replace(/\W+/g, '-')}`);
      await cp(src, model, { recursive: true });
      const ix = structuredClone(index);
      edit(ix);
      await writeFile(join(model, 'model.safetensors.index.json'), JSON.stringify(ix));
      const r = cli(['convert', model, '-o', join(work, 'never')]);
      expect(r.code, title).toBe(2);
      expect(r.stderr.trimEnd(), title).toMatch(pattern);
      expect(r.stderr.split('\n').filter(Boolean), title).toHaveLength(1);
    }
  });
});
