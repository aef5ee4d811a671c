// marlin_fp4_manifest.json: sha256 of every output file and source shard, and the check that
// finds a file changed after conversion.
import { createHash } from 'node:crypto';
import { readFile, rm, writeFile, cp } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkManifest, readManifest } from '../src/integrity/manifest-check.js';
import { cli, MODELS, tempDir } from './helpers/models.js';

let work: string;
let out: string;
const SRC = join(MODELS, 'qwen3-moe-tiny-modelopt');
const sha = async (p: string) => createHash('sha256').update(await readFile(p)).digest('hex');

beforeAll(async () => {
  work = await tempDir();
  out = join(work, 'out');
  expect(cli(['convert', SRC, '-o', out, '-q']).code).toBe(0);
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('manifest checksums', () => {
  it('list every output file and source shard with its size and sha256', async () => {
    const m = await readManifest(out);
    expect(m.files.map((f) => f.name)).toEqual([
      'README.md',
      'config.json',
      'generation_config.json',
      'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors',
      'model.safetensors.index.json',
      'tokenizer_config.json',
    ]);
    for (const f of m.files) expect(f.sha256, f.name).toBe(await sha(join(out, f.name)));
    expect(m.source.shards.map((s) => s.name)).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    for (const s of m.source.shards) expect(s.sha256, s.name).toBe(await sha(join(SRC, s.name)));
  });

  it('are left out with --no-checksums (sizes stay)', async () => {
    const o = join(work, 'nosum');
    expect(cli(['convert', SRC, '-o', o, '-q', '--no-checksums']).code).toBe(0);
    const m = await readManifest(o);
    expect(m.files.every((f) => f.sha256 === undefined && f.bytes > 0)).toBe(true);
    expect((await checkManifest(o)).hasChecksums).toBe(false);
  });

  it('check clean on an untouched output', async () => {
    const c = await checkManifest(out);
    expect(c.problems).toEqual([]);
    expect(c.checked).toBe(7);
  });

  it('find a flipped byte, a missing file and an unlisted shard', async () => {
    const t = join(work, 'tampered');
    await cp(out, t, { recursive: true });
    const shard = join(t, 'model-00002-of-00002.safetensors');
    const b = await readFile(shard);
    b[b.length - 10]! ^= 0x10;
    await writeFile(shard, b);
    await rm(join(t, 'tokenizer_config.json'));
    await writeFile(join(t, 'extra.safetensors'), 'x');
    const c = await checkManifest(t);
    expect(c.problems).toEqual([
      { file: 'tokenizer_config.json', reason: 'listed in the manifest but missing' },
      { file: 'model-00002-of-00002.safetensors', reason: expect.stringMatching(/^sha256 [0-9a-f]{64} differs from the manifest's [0-9a-f]{64} \(modified after conversion\)$/) },
      { file: 'extra.safetensors', reason: 'not listed in the manifest' },
    ]);
  });
});
