// Hostile and unlucky paths (issue 15): input vs output compared by device and inode, links
// that leave the model, FIFOs (every hang test is bounded: a child process with a timeout),
// concurrent runs on one output, and temporary directories left by killed runs.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { cp, mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stageOutput, sweepStale } from '../src/convert/output-dir.js';
import { InputError } from '../src/errors.js';
import { BIN, cli, MODELS, tempDir, type CliResult } from './helpers/models.js';

const LLAMA = join(MODELS, 'llama-tiny-modelopt');
const MOE = join(MODELS, 'qwen3-moe-tiny-modelopt');
let work: string;
beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** The CLI with a hard time limit: a run that blocks is killed and shows as code -1. */
function bounded(args: string[], seconds = 20): CliResult {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' }, timeout: seconds * 1000, killSignal: 'SIGKILL' });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Runs the CLI asynchronously (for several at once). */
function start(args: string[]): Promise<CliResult> {
  return new Promise((ok, fail) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', fail);
    const kill = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('close', (code) => {
      clearTimeout(kill);
      ok({ code: code ?? -1, stdout, stderr });
    });
  });
}

const quantMethod = (dir: string) => (JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { quantization_config: { quant_method: string } }).quantization_config.quant_method;
const leftovers = async (dir: string) => (await readdir(dir)).filter((f) => f.includes('marlin-fp4-tmp'));

async function copyModel(name: string, from = LLAMA): Promise<string> {
  const dir = join(work, name);
  await cp(from, dir, { recursive: true });
  return dir;
}

describe('input and output are compared by identity, not by path strings', () => {
  it('an output that is the input through a linked alias is refused, and the input is kept', async () => {
    await mkdir(join(work, 'real'));
    const model = await copyModel('real/model');
    await symlink(join(work, 'real'), join(work, 'alias'));
    const r = cli(['convert', join(work, 'alias', 'model'), '-o', model, '--force']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^error: .*: the output directory must not be the input directory, inside it, or contain it \(.*\)\n$/);
    expect(quantMethod(model)).toBe('modelopt');
  });

  it('an input inside the old output (reached through a link) is refused with --force; nothing is deleted', async () => {
    await mkdir(join(work, 'old'));
    await copyModel('old/src');
    await symlink(join(work, 'old', 'src'), join(work, 'srclink'));
    const r = cli(['convert', join(work, 'srclink'), '-o', join(work, 'old'), '--force']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/must not be the input directory, inside it, or contain it/);
    expect(quantMethod(join(work, 'old', 'src'))).toBe('modelopt');
  });

  it('an output inside the input through a link to the input is refused', async () => {
    const model = await copyModel('in3');
    await symlink(model, join(work, 'in3-alias'));
    const r = cli(['convert', model, '-o', join(work, 'in3-alias', 'out')]);
    expect(r.code).toBe(2);
    expect(existsSync(join(model, 'out'))).toBe(false);
  });
});

describe('only regular files inside the model are read', () => {
  it('a side file linking outside the model is not copied (a warning says so); a link inside is', async () => {
    const model = await copyModel('side');
    await writeFile(join(work, 'secret.txt'), 'not the model\n');
    await symlink(join(work, 'secret.txt'), join(model, 'tokenizer.json'));
    await symlink('generation_config.json', join(model, 'chat_template.json'));
    const out = join(work, 'side-out');
    const r = cli(['convert', model, '-o', out, '-q']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe(`warning: ${join(model, 'tokenizer.json')}: not copied: a link to ${join(work, 'secret.txt')}, outside the model directory\n`);
    expect(existsSync(join(out, 'tokenizer.json'))).toBe(false);
    expect(await readFile(join(out, 'chat_template.json'), 'utf8')).toBe(await readFile(join(model, 'generation_config.json'), 'utf8'));
  });

  it('a shard or config.json linking outside the model is an error naming the file', async () => {
    for (const file of ['model.safetensors', 'config.json']) {
      const model = await copyModel(`out-link-${file}`);
      await cp(join(model, file), join(work, `elsewhere-${file}`));
      await rm(join(model, file));
      await symlink(join(work, `elsewhere-${file}`), join(model, file));
      const r = cli(['convert', model, '-o', join(work, `out-link-${file}-out`)]);
      expect(r.code).toBe(2);
      expect(r.stderr).toBe(
        `error: ${join(model, file)}: a link to ${join(work, `elsewhere-${file}`)}, outside the model directory; the model's files must be regular files inside its directory\n`,
      );
    }
  });

  it('a Hugging Face cache snapshot (links into the repo folder\'s blobs/) converts as a local path', async () => {
    const repo = join(work, 'hub', 'models--acme--tiny');
    const snap = join(repo, 'snapshots', 'c'.repeat(40));
    await mkdir(join(repo, 'blobs'), { recursive: true });
    await mkdir(snap, { recursive: true });
    for (const f of await readdir(LLAMA)) {
      await cp(join(LLAMA, f), join(repo, 'blobs', `blob-${f}`));
      await symlink(join('..', '..', 'blobs', `blob-${f}`), join(snap, f));
    }
    const r = cli(['convert', snap, '-o', join(work, 'snap-out'), '-q']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
  });

  describe('FIFOs never block (each run is killed after 20 s: a hang fails the test)', () => {
    const cases: [string, (model: string) => Promise<void>, number, RegExp][] = [
      ['config.json is a FIFO', async (m) => fifo(join(m, 'config.json')), 2, /config\.json: not a regular file \(a FIFO\)/],
      ['a shard links to a FIFO inside the model', async (m) => {
        await fifo(join(m, 'weights.fifo'));
        await rm(join(m, 'model.safetensors'));
        await symlink('weights.fifo', join(m, 'model.safetensors'));
      }, 2, /model\.safetensors: a link to a FIFO/],
      ['a side file is a FIFO', async (m) => fifo(join(m, 'tokenizer_config.json')), 0, /tokenizer_config\.json: not copied: not a regular file \(a FIFO\)/],
      ['a side file links to a FIFO outside', async (m) => {
        await fifo(join(work, `fifo-${Date.now()}`));
        const target = (await readdir(work)).find((f) => f.startsWith('fifo-'))!;
        await rm(join(m, 'tokenizer_config.json'));
        await symlink(join(work, target), join(m, 'tokenizer_config.json'));
      }, 0, /tokenizer_config\.json: not copied: a link to .*, outside the model directory/],
    ];
    for (const [name, setup, code, message] of cases) {
      it(name, async () => {
        const model = await copyModel(`fifo-${name.replace(/\W+/g, '-')}`);
        await setup(model);
        const t0 = Date.now();
        const r = bounded(['convert', model, '-o', `${model}-out`, '-q']);
        expect(r.code, `${r.stderr} after ${Date.now() - t0} ms`).toBe(code);
        expect(r.stderr).toMatch(message);
      });
    }
  });
});

async function fifo(path: string): Promise<void> {
  await rm(path, { force: true });
  const r = spawnSync('mkfifo', [path]);
  if (r.status !== 0) throw new Error(`mkfifo ${path} failed`);
}

describe('concurrent runs on one output', () => {
  it('without --force, a commit never replaces an output that appeared meanwhile', async () => {
    const out = join(work, 'race');
    const a = await stageOutput(out, [LLAMA], { force: false });
    const b = await stageOutput(out, [LLAMA], { force: false });
    await writeFile(join(a.tmp, 'who'), 'a');
    await writeFile(join(b.tmp, 'who'), 'b');
    await a.commit();
    await expect(b.commit()).rejects.toThrow(InputError);
    await expect(b.commit()).rejects.toThrow(/already exists \(created while this run was converting; nothing was replaced\)/);
    await b.discard();
    expect(await readFile(join(out, 'who'), 'utf8')).toBe('a');
    expect(await leftovers(work)).toEqual([]);
  });

  it('two CLI runs to one -o without --force: one writes it, the other exits 2', async () => {
    const out = join(work, 'race-cli');
    const [v2, v1] = await Promise.all([start(['convert', LLAMA, '-o', out, '--layout', 'v2', '-q']), start(['convert', LLAMA, '-o', out, '--layout', 'v1', '-q'])]);
    expect([v2.code, v1.code].sort()).toEqual([0, 2]);
    const loser = v2.code === 2 ? v2 : v1;
    expect(loser.stderr).toMatch(/already exists/);
    const layout = (JSON.parse(await readFile(join(out, 'config.json'), 'utf8')) as { quantization_config: { layout: string } }).quantization_config.layout;
    expect(layout).toBe(v2.code === 0 ? 'v2' : 'v1');
  });

  it('--force commits racing each other all succeed and strand nothing (50 rounds of 4)', async () => {
    const out = join(work, 'force-race');
    for (let round = 0; round < 50; round++) {
      const staged = await Promise.all([0, 1, 2, 3].map(() => stageOutput(out, [LLAMA], { force: true })));
      await Promise.all(staged.map(async (s, i) => writeFile(join(s.tmp, 'who'), String(i))));
      await Promise.all(staged.map((s) => s.commit()));
      expect(['0', '1', '2', '3']).toContain(await readFile(join(out, 'who'), 'utf8'));
      expect(await leftovers(work)).toEqual([]);
    }
  });

  it('eight parallel CLI --force runs all exit 0 and leave one output, no *.old', async () => {
    const out = join(work, 'force-cli');
    const runs = await Promise.all(Array.from({ length: 8 }, () => start(['convert', MOE, '-o', out, '--force', '-q'])));
    expect(runs.map((r) => r.code), runs.map((r) => r.stderr).join('')).toEqual(Array(8).fill(0));
    expect(quantMethod(out)).toBe('marlin_fp4');
    expect(await leftovers(work)).toEqual([]);
  });
});

describe('temporary directories of dead runs', () => {
  const host = createHash('sha256').update(hostname()).digest('hex').slice(0, 8);
  const deadPid = () => spawnSync(process.execPath, ['-e', '']).pid!;

  it('are removed by the next run with a line saying so; a live run\'s are left alone', async () => {
    const parent = join(work, 'stale');
    await mkdir(parent);
    const pid = deadPid();
    const dead = `.out.marlin-fp4-tmp-${host}-${pid}-0badc0de`;
    const mine = `.out.marlin-fp4-tmp-${host}-${process.pid}-00c0ffee`;
    for (const d of [dead, mine]) {
      await mkdir(join(parent, d));
      await writeFile(join(parent, d, 'model.safetensors'), Buffer.alloc(1024));
    }
    const r = cli(['convert', LLAMA, '-o', join(parent, 'out'), '-q']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe(`warning: ${join(parent, dead)}: removed, left behind by run ${pid}, which is no longer running\n`);
    expect((await readdir(parent)).sort()).toEqual([mine, 'out']);
  });

  it('a previous output a dead --force run had moved aside is put back when the output is missing', async () => {
    const parent = join(work, 'stale-old');
    await mkdir(parent);
    const pid = deadPid();
    const aside = `.out.marlin-fp4-tmp-${host}-${pid}-12345678.old`;
    await mkdir(join(parent, aside));
    await writeFile(join(parent, aside, 'config.json'), '{}');
    const lines = await sweepStale(parent);
    expect(lines).toEqual([`${join(parent, 'out')}: put back the previous output that run ${pid} (no longer running) had moved aside to ${aside}`]);
    expect(await readdir(parent)).toEqual(['out']);
  });
});
