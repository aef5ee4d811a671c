// verify checks the manifest's checksums first: a file changed after conversion, or a source
// that is not the one converted, fails verification and is named.
import { cp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, MODELS, tempDir } from './helpers/models.js';

let work: string;
let out: string;
const SRC = join(MODELS, 'llama-tiny-modelopt');

beforeAll(async () => {
  work = await tempDir();
  out = join(work, 'out');
  expect(cli(['convert', SRC, '-o', out, '-q']).code).toBe(0);
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const verify = (dir: string, ...args: string[]) => cli(['verify', dir, '--json', '--layers', '2', '--m', '1', '--device', 'cpu', ...args]);

describe('convert --verify', () => {
  it('converts, then verifies, in one command and one JSON report', () => {
    const r = cli(['convert', join(MODELS, 'qwen3-moe-tiny-ct'), '-o', join(work, 'cv'), '--verify', '--json', '--device', 'cpu']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.output).toBe(join(work, 'cv'));
    expect(report.verify.passed).toBe(true);
    expect(report.verify.layers_checked).toBe(report.converted_layers);
  });
});

describe('verify and the manifest', () => {
  it('passes on an untouched output', () => {
    const r = verify(out);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).errors).toEqual([]);
  });

  it('fails on a file changed after conversion, naming it', async () => {
    const t = join(work, 'tampered');
    await cp(out, t, { recursive: true });
    await writeFile(join(t, 'tokenizer_config.json'), (await readFile(join(t, 'tokenizer_config.json'), 'utf8')).replace('}', ', "x": 1}'));
    const r = verify(t);
    expect(r.code).toBe(1);
    const report = JSON.parse(r.stdout);
    expect(report.passed).toBe(false);
    expect(report.errors).toContainEqual(expect.stringMatching(/^integrity: tokenizer_config\.json: size \d+ differs from the manifest's \d+$/));
  });

  it('warns when the source is not the checkpoint that was converted, and the structure check finds the difference', async () => {
    const s = join(work, 'other-source');
    await cp(SRC, s, { recursive: true });
    const shard = join(s, 'model.safetensors');
    const b = await readFile(shard);
    b[b.length - 1]! ^= 1; // a byte of a copied tensor (last in the file)
    await writeFile(shard, b);
    const r = verify(out, '--source', s);
    expect(r.code).toBe(1);
    const report = JSON.parse(r.stdout);
    expect(report.warnings).toContainEqual(
      `source ${s} is not the checkpoint that was converted (model.safetensors has another sha256): verifying against it as given`,
    );
    // … and the structural check finds the byte that differs.
    expect(report.errors).toEqual(['model.norm.weight: copied tensor differs from the source in 1 bytes (first at byte 255)']);
  });
});
