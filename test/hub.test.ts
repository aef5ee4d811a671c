// Hub repo ids as model arguments (convert, inspect, verify --source), against a local HTTP
// stand-in for the Hub (test/helpers/hub-server.ts) reached through HF_ENDPOINT: no real
// network. Files land in the standard cache layout under HF_HOME.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { looksLikeRepoId, neededFile } from '../src/checkpoint/resolve-model.js';
import { cliAsync, MODELS, tempDir, type CliResult } from './helpers/models.js';
import { repoFromDir, startHub, type FakeHub } from './helpers/hub-server.js';

const FIXTURE = join(MODELS, 'llama-tiny-ct');
const SHA = '0123456789abcdef0123456789abcdef01234567';
const REPO = 'acme/llama-tiny-ct';

let work: string;
let hub: FakeHub;
let home: string;
let cwd: string;

/** The CLI in a child process, asynchronously (the fake Hub answers from this process). */
function run(args: string[], env: Record<string, string | undefined> = {}, dir = cwd): Promise<CliResult> {
  return cliAsync(args, { HF_HOME: home, HF_ENDPOINT: hub.url, HF_TOKEN: undefined, HF_HUB_CACHE: undefined, HUGGINGFACE_HUB_CACHE: undefined, HF_HUB_OFFLINE: undefined, XDG_CACHE_HOME: undefined, ...env }, dir);
}

/** Every file of a directory tree, relative path -> bytes. */
function tree(dir: string, prefix = ''): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const d of readdirSync(join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${d.name}` : d.name;
    if (d.isDirectory()) for (const [k, v] of tree(dir, rel)) out.set(k, v);
    else out.set(rel, readFileSync(join(dir, rel)));
  }
  return out;
}

/** A local port nothing listens on. */
async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((ok) => srv.listen(0, '127.0.0.1', ok));
  const port = (srv.address() as AddressInfo).port;
  await new Promise((ok) => srv.close(ok));
  return port;
}

const snapshot = () => join(home, 'hub', 'models--acme--llama-tiny-ct', 'snapshots', SHA);

beforeAll(async () => {
  work = await tempDir();
  home = join(work, 'hf-home');
  cwd = join(work, 'cwd');
  await mkdir(cwd);
  const repos = new Map([
    [
      REPO,
      // Files a conversion does not need must not be downloaded: a README, a subfolder, and a
      // consolidated copy of the weights that the index does not name.
      repoFromDir(FIXTURE, { 'README.md': Buffer.from('# tiny\n'), 'original/params.json': Buffer.from('{}'), 'consolidated.safetensors': Buffer.alloc(4096, 7) }, SHA),
    ],
    ['acme/private', { ...repoFromDir(FIXTURE, {}, SHA), token: 'hf_secret' }],
    ['acme/flaky', { ...repoFromDir(FIXTURE, {}, SHA), breakFile: 'model-00002-of-00002.safetensors' }],
    ['acme/down', { ...repoFromDir(FIXTURE, {}, SHA), status: 503 }],
    ['acme/stalls', { ...repoFromDir(FIXTURE, {}, SHA), stallFile: 'model-00002-of-00002.safetensors' }],
  ]);
  hub = await startHub(repos);
});
afterAll(async () => {
  await hub?.close();
  await rm(work, { recursive: true, force: true });
});

describe('repo ids', () => {
  it('look like org/name', () => {
    for (const ok of ['nvidia/Llama-3.1-8B-Instruct-FP4', 'RedHatAI/Qwen3-30B-A3B-NVFP4', 'a/b', 'org_1/model.v2']) expect(looksLikeRepoId(ok)).toBe(true);
    for (const bad of ['model', './a/b', '/abs/path', 'a/b/c', '../x', 'a/..', 'a//b', 'a/b/', '-a/b', 'a/b.', 'a/b--c']) expect(looksLikeRepoId(bad)).toBe(false);
  });

  it('download only what a conversion needs', () => {
    for (const f of ['config.json', 'hf_quant_config.json', 'model.safetensors', 'model-00001-of-00002.safetensors', 'model.safetensors.index.json', 'tokenizer.json', 'tokenizer_config.json', 'tokenizer.model', 'special_tokens_map.json', 'generation_config.json', 'chat_template.jinja']) {
      expect(neededFile(f)).toBe(true);
    }
    for (const f of ['README.md', '.gitattributes', 'original/consolidated.00.pth', 'pytorch_model.bin', 'figures/a.png']) expect(neededFile(f)).toBe(false);
  });
});

describe('convert <org/name>', () => {
  let local: string;
  let first: CliResult;

  beforeAll(async () => {
    local = join(work, 'local-out');
    const r = await run(['convert', FIXTURE, '-o', local]);
    expect(r.code).toBe(0);
    hub.requests.length = 0;
    first = await run(['convert', REPO]);
  });

  it('downloads into the HF cache and writes ./<name>-marlin, silently when stderr is not a TTY', () => {
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(first.stdout).toContain(`wrote ${join(cwd, 'llama-tiny-ct-marlin')}:`);
    expect(readFileSync(join(home, 'hub', 'models--acme--llama-tiny-ct', 'refs', 'main'), 'utf8')).toBe(SHA);
    // The README is carried over (kept as SOURCE_MODEL_CARD.md beside our card).
    expect([...tree(snapshot()).keys()].sort()).toEqual([...readdirSync(FIXTURE), 'README.md'].sort());
  });

  it('fetches only the files it needs, through the endpoints the library documents', () => {
    const got = hub.requests.filter((q) => q.method === 'GET' && q.path.includes('/resolve/') && q.range === undefined).map((q) => q.path.split('/').pop()).sort();
    expect(got).toEqual([...readdirSync(FIXTURE), 'README.md'].sort());
    expect(hub.requests.some((q) => /original|consolidated/.test(q.path))).toBe(false);
    expect(hub.requests.some((q) => q.path === `/api/models/${REPO}/revision/main`)).toBe(true);
    expect(hub.requests.some((q) => q.path === `/api/models/${REPO}/tree/${SHA}`)).toBe(true);
  });

  it('gives the same bytes as converting the local directory; the Hub source is recorded and its shards checked', () => {
    const a = tree(local);
    const b = tree(join(cwd, 'llama-tiny-ct-marlin'));
    // The repo's README becomes SOURCE_MODEL_CARD.md; the model cards differ (base_model).
    expect([...b.keys()].sort()).toEqual([...a.keys(), 'SOURCE_MODEL_CARD.md'].sort());
    expect(b.get('SOURCE_MODEL_CARD.md')!.toString()).toBe('# tiny\n');
    expect(b.get('README.md')!.toString()).toContain(`base_model: "${REPO}"\nbase_model_relation: quantized\n`);
    expect(a.get('README.md')!.toString()).not.toContain('base_model');
    for (const [name, bytes] of a) {
      if (name === 'marlin_fp4_manifest.json' || name === 'README.md') continue;
      expect(b.get(name)!.equals(bytes), name).toBe(true);
    }
    // The manifest differs in the source (the cached snapshot, the Hub provenance) and the cards.
    const ma = JSON.parse(a.get('marlin_fp4_manifest.json')!.toString());
    const mb = JSON.parse(b.get('marlin_fp4_manifest.json')!.toString());
    expect(mb.source.path).toBe(snapshot());
    expect(mb.source.hub).toEqual({ repo: REPO, revision: 'main', commit: SHA, shards_checked_against_hub: 2 });
    expect(ma.source.hub).toBeUndefined();
    for (const m of [ma, mb]) {
      delete m.source.path;
      delete m.source.hub;
      m.files = m.files.filter((f: { name: string }) => f.name !== 'README.md' && f.name !== 'SOURCE_MODEL_CARD.md');
    }
    expect(mb).toEqual(ma);
  });

  it('refuses a cached shard whose sha256 differs from the one the Hub publishes (exit 3, no output)', async () => {
    const shard = join(snapshot(), 'model-00002-of-00002.safetensors');
    const { realpathSync, writeFileSync } = await import('node:fs');
    const blob = realpathSync(shard);
    const good = readFileSync(blob);
    const bad = Buffer.from(good);
    bad[bad.length - 1] ^= 0xff;
    writeFileSync(blob, bad);
    try {
      const r = await run(['convert', REPO, '-o', join(work, 'damaged')], { HF_HUB_OFFLINE: '1' });
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(/^error: .*model-00002-of-00002\.safetensors: sha256 [0-9a-f]{64} differs from the [0-9a-f]{64} the Hub publishes for acme\/llama-tiny-ct@0123456789ab: the cached download is damaged; delete it from the Hugging Face cache and run again\n$/);
      expect(existsSync(join(work, 'damaged'))).toBe(false);
    } finally {
      writeFileSync(blob, good);
    }
  });

  it('uses the cache the second time (no file is fetched again)', async () => {
    hub.requests.length = 0;
    const r = await run(['convert', REPO, '-o', join(work, 'again'), '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).output).toBe(join(work, 'again'));
    expect(hub.requests.filter((q) => q.path.includes('/resolve/'))).toEqual([]);
  });

  it('HF_HUB_OFFLINE=1 works from the cache without any request', async () => {
    hub.requests.length = 0;
    const r = await run(['convert', REPO, '-o', join(work, 'offline'), '-q'], { HF_HUB_OFFLINE: '1', HF_ENDPOINT: 'http://127.0.0.1:9' });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(hub.requests).toEqual([]);
    const missing = await run(['convert', 'acme/never-downloaded'], { HF_HUB_OFFLINE: '1' });
    expect(missing.code).toBe(3);
    expect(missing.stderr).toMatch(/^error: acme\/never-downloaded: HF_HUB_OFFLINE is set and this revision is not in the Hugging Face cache/);
  });

  it('--revision takes a commit; an unknown revision is exit 2', async () => {
    const r = await run(['convert', REPO, '--revision', SHA, '-o', join(work, 'by-sha'), '-q']);
    expect(r.code).toBe(0);
    const bad = await run(['convert', REPO, '--revision', 'v9', '-o', join(work, 'bad-rev')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe(`error: ${REPO}@v9: not found on the Hub (HTTP 404: Invalid rev id: v9)\n`);
    expect(existsSync(join(work, 'bad-rev'))).toBe(false);
  });

  it('HF_HUB_CACHE moves the cache', async () => {
    const cache = join(work, 'other-cache');
    const r = await run(['convert', REPO, '-o', join(work, 'other-cache-out'), '-q'], { HF_HUB_CACHE: cache });
    expect(r.code).toBe(0);
    expect(existsSync(join(cache, 'models--acme--llama-tiny-ct', 'snapshots', SHA, 'config.json'))).toBe(true);
  });
});

describe('inspect and verify --source with a repo id', () => {
  it('inspect --json prints exactly one JSON document (the library logs nothing on stdout)', async () => {
    const r = await run(['inspect', REPO, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const rep = JSON.parse(r.stdout);
    expect(rep.model).toBe(REPO);
    expect(rep.path).toBe(snapshot());
    expect(rep.hub).toMatchObject({ repo: REPO, revision: 'main', commit: SHA });
    expect(rep.flavour).toBe('compressed-tensors');
  });

  it('verify --source <org/name>', async () => {
    const out = join(work, 'local-out');
    const r = await run(['verify', out, '--source', REPO, '--json', '--m', '2']);
    const rep = JSON.parse(r.stdout);
    expect(rep.source).toBe(snapshot());
    // The manifest records the local fixture as the source: its shards' checksums still match
    // the snapshot's, and every layer and tensor verifies. But the repo also has a README,
    // which convert keeps as SOURCE_MODEL_CARD.md: an output converted from the local
    // directory lacks it, and verify (complete: every file convert writes) says so.
    expect(rep.source_files.matches_manifest).toBe(true);
    expect(rep.failed_layers).toEqual([]);
    expect(rep.errors).toEqual(['SOURCE_MODEL_CARD.md: missing (convert writes it for this source)']);
    expect(r.code).toBe(1);
    // The output converted from the repo itself verifies against it.
    const fromHub = await run(['verify', join(cwd, 'llama-tiny-ct-marlin'), '--source', REPO, '--json', '--m', '2']);
    expect(fromHub.stderr).toBe('');
    expect(JSON.parse(fromHub.stdout).passed).toBe(true);
  });
});

describe('errors: one line; exit 2 for a bad or unknown repo, 3 for the network', () => {
  it('a repo that does not exist', async () => {
    const r = await run(['convert', 'acme/nope']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe('error: acme/nope: not found on the Hub (HTTP 404: Repository not found)\n');
  });

  it('a private repo without HF_TOKEN (401), and with it', async () => {
    const r = await run(['inspect', 'acme/private']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('error: acme/private: not found on the Hub, or private (HTTP 401: Invalid username or password.); for a private repo set HF_TOKEN\n');
    const ok = await run(['inspect', 'acme/private', '--json'], { HF_TOKEN: 'hf_secret' });
    expect(ok.code).toBe(0);
    expect(hub.requests.filter((q) => q.path.startsWith('/acme/private/resolve/')).every((q) => q.auth === 'Bearer hf_secret')).toBe(true);
    const badToken = await run(['inspect', 'acme/private'], { HF_TOKEN: 'not-a-token' });
    expect(badToken.code).toBe(2);
    expect(badToken.stderr).toBe('error: HF_TOKEN: not a Hugging Face access token (they start with hf_)\n');
  });

  it('a local path wins over a repo id; --revision with a local path is a usage error', async () => {
    const r = await run(['inspect', 'llama-tiny-ct', '--revision', 'main', '--json'], {}, MODELS);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('error: --revision main: applies to a Hugging Face Hub repo id (org/name), but llama-tiny-ct is a local path\n');
    const v = await run(['verify', join(work, 'local-out'), '--revision', 'main']);
    expect(v.code).toBe(2);
    expect(v.stderr).toBe('error: --revision main: applies to a Hub repo id given as --source\n');
    // "models/llama-tiny-ct" exists under fixtures/: it is read from disk, the Hub is not asked.
    hub.requests.length = 0;
    const local = await run(['inspect', 'models/llama-tiny-ct', '--json'], {}, join(MODELS, '..'));
    expect(local.code).toBe(0);
    expect(hub.requests).toEqual([]);
  });

  it('the Hub unreachable', async () => {
    const closed = await closedPort();
    const r = await run(['convert', REPO, '-o', join(work, 'unreachable')], { HF_ENDPOINT: `http://127.0.0.1:${closed}`, HF_HOME: join(work, 'empty-home') });
    expect(r.code).toBe(3);
    expect(r.stderr).toBe(`error: ${REPO}: cannot download from http://127.0.0.1:${closed}: connection refused (ECONNREFUSED)\n`);
    expect(existsSync(join(work, 'unreachable'))).toBe(false);
  });

  it('the Hub failing (HTTP 503)', async () => {
    const r = await run(['convert', 'acme/down']);
    expect(r.code).toBe(3);
    expect(r.stderr).toBe(`error: acme/down: the Hub at ${hub.url} answered HTTP 503: status 503; try again later\n`);
  });

  it('a connection that breaks mid-file: exit 3, nothing half-written is used later', async () => {
    const r = await run(['convert', 'acme/flaky', '-o', join(work, 'flaky')]);
    expect(r.code).toBe(3);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^error: acme\/flaky: cannot download from http:\/\/127\.0\.0\.1:\d+: connection broken \(UND_ERR_SOCKET\)\n$/);
    expect(existsSync(join(work, 'flaky'))).toBe(false);
    // The broken shard is not in the snapshot: a retry downloads it again and succeeds.
    hub.repos.get('acme/flaky')!.breakFile = undefined;
    const again = await run(['convert', 'acme/flaky', '-o', join(work, 'flaky'), '-q']);
    expect(again.code).toBe(0);
    expect((await readFile(join(work, 'flaky', 'model-00002-of-00002.safetensors'))).length).toBeGreaterThan(0);
  });
});

describe('Hub timeouts (MARLIN_FP4_HUB_TIMEOUT), bounded: each test fails past 20 s', () => {
  it('a Hub that accepts the connection and never answers: exit 3 after the timeout, one line', async () => {
    const sockets: import('node:net').Socket[] = [];
    const silent = createServer((s) => void sockets.push(s));
    await new Promise<void>((ok) => silent.listen(0, '127.0.0.1', ok));
    const url = `http://127.0.0.1:${(silent.address() as AddressInfo).port}`;
    try {
      const t0 = Date.now();
      const r = await run(['convert', 'acme/silent', '-o', join(work, 'silent-out')], { HF_ENDPOINT: url, MARLIN_FP4_HUB_TIMEOUT: '1' });
      expect(r.code).toBe(3);
      expect(r.stderr).toBe(`error: acme/silent: the Hub at ${url} stopped answering (no answer within 1 s); MARLIN_FP4_HUB_TIMEOUT=<seconds> sets the limit\n`);
      expect(Date.now() - t0).toBeLessThan(15_000);
    } finally {
      sockets.forEach((s) => s.destroy());
      await new Promise((ok) => silent.close(ok));
    }
  }, 20_000);

  it('a download that stops mid-file: exit 3 after the idle timeout, one line, no output', async () => {
    const r = await run(['convert', 'acme/stalls', '-o', join(work, 'stall-out')], { MARLIN_FP4_HUB_TIMEOUT: '1' });
    expect(r.code).toBe(3);
    expect(r.stderr).toBe(`error: acme/stalls: the Hub at ${hub.url} stopped answering (no data for 1 s); MARLIN_FP4_HUB_TIMEOUT=<seconds> sets the limit\n`);
    expect(existsSync(join(work, 'stall-out'))).toBe(false);
  }, 20_000);

  it('a MARLIN_FP4_HUB_TIMEOUT that is not a number of seconds is a usage error', async () => {
    const r = await run(['inspect', REPO], { MARLIN_FP4_HUB_TIMEOUT: 'soon' });
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('error: MARLIN_FP4_HUB_TIMEOUT=soon: must be a whole number from 1 to 86400\n');
  }, 20_000);
});
