// --device: the same bytes from the GPU and the CPU; a clear exit-3 error where no GPU is usable.
import { existsSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addon } from '../src/transform/addon.js';
import { expectBytes } from './helpers/bytes.js';
import { cli, MODELS, tempDir } from './helpers/models.js';

const cuda = addon().cudaStatus();
let work: string;
beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe.skipIf(cuda.available)(`--device cuda without a GPU (runs only where CUDA is not usable; here: ${cuda.available ? 'usable' : cuda.reason})`, () => {
  it('exits 3 with the reason and writes nothing', () => {
    const out = join(work, 'none');
    const r = cli(['convert', join(MODELS, 'llama-tiny-modelopt'), '-o', out, '--device', 'cuda']);
    expect(r.code).toBe(3);
    expect(r.stderr).toBe(`error: --device cuda: no usable CUDA device (${cuda.reason})\n`);
    expect(existsSync(out)).toBe(false);
  });

  it('--device auto falls back to the CPU', () => {
    const r = cli(['convert', join(MODELS, 'llama-tiny-modelopt'), '-o', join(work, 'auto'), '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).device).toBe('cpu');
  });
});

describe.skipIf(!cuda.available)(cuda.available ? `convert on the GPU (${cuda.name})` : `convert on the GPU (skipped: no usable CUDA device: ${cuda.reason})`, () => {
  for (const fixture of ['llama-tiny-modelopt', 'llama-tiny-ct', 'qwen3-moe-tiny-modelopt', 'qwen3-moe-tiny-ct']) {
    for (const layout of ['v1', 'v2']) {
      for (const dtype of ['float16', 'bfloat16']) {
        it(`${fixture} ${layout} ${dtype}: --device cuda writes the same bytes as --device cpu`, async () => {
          const a = join(work, `${fixture}-${layout}-${dtype}-gpu`);
          const b = join(work, `${fixture}-${layout}-${dtype}-cpu`);
          const g = cli(['convert', join(MODELS, fixture), '-o', a, '--device', 'cuda', '--layout', layout, '--dtype', dtype, '--json']);
          expect(g.stderr).toBe('');
          expect(JSON.parse(g.stdout).device).toBe('cuda');
          expect(cli(['convert', join(MODELS, fixture), '-o', b, '--device', 'cpu', '--layout', layout, '--dtype', dtype, '-q']).code).toBe(0);
          const files = (await readdir(b)).sort();
          expect((await readdir(a)).sort()).toEqual(files);
          for (const f of files) expectBytes(await readFile(join(a, f)), await readFile(join(b, f)), f);
        });
      }
    }
  }
});
