// What CI pipelines need beyond correct bytes: no output on failure (full disk, signals), an
// input that is never modified, and memory that does not grow with the model.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateModel } from '../tools/fixture-generator/generate.js';
import { BIN, cli, MODELS, tempDir } from './helpers/models.js';

let work: string;
beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function digest(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).sort()) {
    const p = join(dir, f);
    out[f] = `${createHash('sha256').update(await readFile(p)).digest('hex')} ${(await stat(p)).mtimeMs}`;
  }
  return out;
}

const leftovers = async (dir: string) => (await readdir(dir)).filter((f) => f.includes('marlin-fp4-tmp'));

describe('the input is never modified', () => {
  it('checksums and mtimes of every input file are the same after convert', async () => {
    for (const fixture of ['llama-tiny-ct', 'qwen3-moe-tiny-modelopt']) {
      const before = await digest(join(MODELS, fixture));
      expect(cli(['convert', join(MODELS, fixture), '-o', join(work, `ro-${fixture}`), '-q']).code).toBe(0);
      expect(await digest(join(MODELS, fixture))).toEqual(before);
    }
  });
});

describe('a full disk leaves nothing behind', () => {
  it.skipIf(!existsSync('/bin/bash'))('a file-size limit (EFBIG, as ENOSPC would) ends in one line, exit 3, no output', async () => {
    const out = join(work, 'efbig');
    // ulimit -f is in 1024-byte blocks: 64 KiB is less than one output shard.
    const r = spawnSync('/bin/bash', ['-c', `ulimit -f 64; exec "${process.execPath}" "${BIN}" convert "${join(MODELS, 'llama-tiny-modelopt')}" -o "${out}"`], {
      encoding: 'utf8',
      env: { ...process.env, NO_COLOR: '1' },
    });
    expect(r.status).toBe(3);
    expect(r.stderr).toBe(`error: ${out}/model.safetensors: cannot write: file too large for this file system or process limit (EFBIG)\n`);
    expect(existsSync(out)).toBe(false);
    expect(await leftovers(work)).toEqual([]);
  });
});

describe('signals', () => {
  let model: string;
  beforeAll(async () => {
    model = join(work, 'mid');
    // About 160 MB: long enough to be interrupted mid-write on any machine we run on.
    await generateModel(model, { preset: 'llama-tiny', flavour: 'modelopt', shards: 4, hiddenSize: 2048, intermediateSize: 5632, layers: 6, heads: 16, kvHeads: 4, headDim: 128, vocabSize: 1024 });
  }, 120_000);

  for (const [signal, code] of [['SIGTERM', 143], ['SIGINT', 130]] as const) {
    it(`${signal} during a conversion removes the partial output`, async () => {
      const out = join(work, `sig-${signal}`);
      const child = spawn(process.execPath, [BIN, 'convert', model, '-o', out], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
      // Wait until a shard is being written in the staging directory, then interrupt.
      const deadline = Date.now() + 30_000;
      let sent = false;
      while (Date.now() < deadline && child.exitCode === null) {
        const tmp = (await leftovers(work))[0];
        if (tmp && (await readdir(join(work, tmp)).catch(() => [])).some((f) => f.endsWith('.safetensors'))) {
          child.kill(signal);
          sent = true;
          break;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(sent).toBe(true);
      expect(await exited).toBe(code);
      expect(stderr).toMatch(new RegExp(`interrupted \\(${signal}\\): removing the partial output\\n$`));
      expect(existsSync(out)).toBe(false);
      expect(await leftovers(work)).toEqual([]);
    });
  }

  it('memory does not grow with the model: a 160 MB model adds less than its size to the peak RSS of a 0.2 MB one', () => {
    // Fixed costs (Node, the CUDA context where there is a GPU, checksum workers) are the same
    // for both; the rest is pooled buffers sized by the largest tensors in flight (measured:
    // +10 MB on a 2-core CPU machine). bench/memory.mjs shows 186 MB for a 6 GB model.
    const rss = (model: string, out: string) => {
      const r = cli(['convert', model, '-o', join(work, out), '--json']);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as { bytes_in: number; peak_rss_bytes: number };
    };
    const tiny = rss(join(MODELS, 'llama-tiny-modelopt'), 'rss-tiny');
    const mid = rss(model, 'rss-mid');
    expect(mid.bytes_in).toBeGreaterThan(150e6);
    expect(mid.peak_rss_bytes - tiny.peak_rss_bytes).toBeLessThan(mid.bytes_in);
    expect(mid.peak_rss_bytes).toBeLessThan(1e9);
  });
});
