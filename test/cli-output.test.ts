// What the commands print: --json is exactly one JSON document on stdout; progress lines
// appear only on a terminal and never with --json or --quiet; NO_COLOR turns colour off.
// Terminal cases run under a pseudo-terminal from util-linux `script`, skipped without it.
import { spawn, spawnSync } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, cli, MODELS, tempDir } from './helpers/models.js';
import { repoFromDir, startHub, type FakeHub } from './helpers/hub-server.js';

const MOE = join(MODELS, 'qwen3-moe-tiny-modelopt');
const LLAMA_CT = join(MODELS, 'llama-tiny-ct');
let work: string;

beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const PROGRESS = /\r|\x1b\[/; // carriage returns and escape sequences of a progress line

/** Parses stdout as one JSON document (throws on anything before or after it). */
function oneJson(stdout: string): Record<string, unknown> {
  expect(stdout.trimStart().startsWith('{')).toBe(true);
  return JSON.parse(stdout) as Record<string, unknown>;
}

describe('--json: exactly one JSON document on stdout; no progress off a terminal', () => {
  let out: string;
  beforeAll(() => {
    out = join(work, 'moe-out');
  });

  it('convert', () => {
    const r = cli(['convert', MOE, '-o', out, '--json']);
    expect(r.code).toBe(0);
    expect(oneJson(r.stdout).output).toBe(out);
    expect(r.stderr).toBe('');
  });

  it('convert --verify', () => {
    const r = cli(['convert', MOE, '-o', join(work, 'moe-verified'), '--verify', '--json']);
    expect(r.code).toBe(0);
    expect((oneJson(r.stdout).verify as { passed: boolean }).passed).toBe(true);
    expect(r.stderr).toBe('');
  });

  it('verify', () => {
    const r = cli(['verify', out, '--json', '--m', '3']);
    expect(r.code).toBe(0);
    expect(oneJson(r.stdout).passed).toBe(true);
    expect(r.stderr).toBe('');
  });

  it('inspect', () => {
    const r = cli(['inspect', MOE, '--json']);
    expect(r.code).toBe(0);
    expect(oneJson(r.stdout).format).toBe('nvfp4');
    expect(r.stderr).toBe('');
  });

  it('no progress without --json either, when stderr is not a terminal', () => {
    for (const args of [['convert', MOE, '-o', join(work, 'plain-out')], ['verify', out, '--m', '2'], ['inspect', out]]) {
      const r = cli(args);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.stderr).toBe('');
      expect(r.stdout).not.toMatch(PROGRESS);
    }
  });

  it('nothing on stdout when the input is bad', () => {
    for (const cmd of ['convert', 'inspect']) {
      const r = cli([cmd, join(work, 'missing'), '--json']);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe(`error: ${join(work, 'missing')}: no such directory\n`);
    }
  });
});

const hasScript = spawnSync('script', ['--version'], { encoding: 'utf8' }).status === 0;
const why = hasScript ? '' : ' (skipped: util-linux `script` is not on PATH, no pseudo-terminal to test with)';

describe.skipIf(!hasScript)(`on a terminal${why}`, () => {
  let hub: FakeHub;
  beforeAll(async () => {
    hub = await startHub(new Map([['acme/llama-tiny-ct', repoFromDir(LLAMA_CT, {}, 'f'.repeat(40))]]));
  });
  afterAll(async () => {
    await hub?.close();
  });

  /** Runs the CLI under a pseudo-terminal: stdout and stderr arrive together, with \r\n. */
  function tty(args: string[], env: Record<string, string | undefined> = {}): Promise<{ code: number; text: string }> {
    const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
    const cmd = [process.execPath, BIN, ...args].map(quote).join(' ');
    const base: Record<string, string | undefined> = { ...process.env, HF_HOME: join(work, 'hf'), HF_ENDPOINT: hub.url, COLUMNS: '200' };
    for (const k of ['NO_COLOR', 'FORCE_COLOR', 'HF_TOKEN', 'HF_HUB_CACHE', 'HF_HUB_OFFLINE']) delete base[k];
    return new Promise((ok, fail) => {
      const child = spawn('script', ['-q', '-e', '-c', cmd, '/dev/null'], { env: { ...base, ...env } as NodeJS.ProcessEnv, stdio: ['ignore', 'pipe', 'pipe'] });
      let text = '';
      child.stdout.on('data', (d) => (text += d));
      child.stderr.on('data', (d) => (text += d));
      child.on('error', fail);
      child.on('close', (code) => ok({ code: code ?? -1, text }));
    });
  }

  it('convert and verify show a progress line, and clear it', async () => {
    const c = await tty(['convert', MOE, '-o', join(work, 'tty-out')]);
    expect(c.code).toBe(0);
    expect(c.text).toMatch(/\r\x1b\[2Kconverting +\d+%/);
    expect(c.text).toMatch(/\r\x1b\[2K\r?\n?converted 8 linear layers/);
    const v = await tty(['verify', join(work, 'tty-out'), '--m', '2']);
    expect(v.code).toBe(0);
    expect(v.text).toMatch(/\r\x1b\[2Kverifying +\d+% +\d+\/\d+ +ETA .* (structure|GEMM) model\./);
  });

  it('a Hub download shows its progress', async () => {
    const r = await tty(['convert', 'acme/llama-tiny-ct', '-o', join(work, 'tty-hub')]);
    expect(r.code).toBe(0);
    expect(r.text).toMatch(/\r\x1b\[2Kdownloading +\d+% .*(\.json|\.safetensors)/);
  });

  it('--json and --quiet show none', async () => {
    for (const args of [
      ['convert', MOE, '-o', join(work, 'tty-json'), '--json'],
      ['convert', MOE, '-o', join(work, 'tty-quiet'), '-q'],
      ['verify', join(work, 'tty-json'), '--m', '2', '--json'],
      ['verify', join(work, 'tty-json'), '--m', '2', '-q'],
      ['inspect', 'acme/llama-tiny-ct', '--json'],
      ['convert', 'acme/llama-tiny-ct', '--revision', 'f'.repeat(40), '-o', join(work, 'tty-hub-q'), '-q'],
    ]) {
      const r = await tty(args);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.text, args.join(' ')).not.toMatch(/\x1b\[/);
      if (args.includes('--json')) oneJson(r.text.replace(/\r\n/g, '\n'));
      if (args.includes('-q')) expect(r.text, args.join(' ')).not.toMatch(/downloading|converting|verifying/);
    }
  });

  it('errors are red on a terminal, plain with NO_COLOR', async () => {
    const red = await tty(['inspect', join(work, 'missing')]);
    expect(red.code).toBe(2);
    expect(red.text).toContain('\x1b[31merror:\x1b[0m ');
    const plain = await tty(['inspect', join(work, 'missing')], { NO_COLOR: '1' });
    expect(plain.code).toBe(2);
    expect(plain.text).toBe(`error: ${join(work, 'missing')}: no such directory\r\n`);
  });
});
