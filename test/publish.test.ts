// Publishing: convert <repo> --push-to-hub <new repo> and upload <dir> <repo>, against the local
// fake Hub (test/helpers/hub-server.ts) speaking the upload protocol @huggingface/hub uses
// (preupload, LFS batch and PUTs, NDJSON commit). The published repo is downloaded again with the
// library and compared byte for byte with the local output.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { appendFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliAsync, MODELS, tempDir, type CliResult } from './helpers/models.js';
import { REPORT_SCHEMAS } from '../src/cli/report-schemas.js';
import { repoFromDir, startHub, type FakeHub, type HubFile } from './helpers/hub-server.js';

const FIXTURE = join(MODELS, 'llama-tiny-modelopt');
const SOURCE = 'nvidia-ish/Llama-tiny-FP4';
const SHA = 'b'.repeat(40);
const WRITER = 'hf_writer_token';
const SOURCE_CARD = '---\nlicense: llama3.1\npipeline_tag: text-generation\nlanguage:\n- en\n---\n# Llama tiny FP4\n\nServe with `vllm serve nvidia-ish/Llama-tiny-FP4`.\n';

let work: string;
let hub: FakeHub;
let home: string;

function run(args: string[], env: Record<string, string | undefined> = {}): Promise<CliResult> {
  return cliAsync(args, { HF_HOME: home, HF_ENDPOINT: hub.url, HF_TOKEN: WRITER, HF_HUB_CACHE: undefined, HUGGINGFACE_HUB_CACHE: undefined, HF_HUB_OFFLINE: undefined, XDG_CACHE_HOME: undefined, ...env }, work);
}

/** Every file of a directory (top level), name -> bytes. */
function files(dir: string): Map<string, Buffer> {
  return new Map(readdirSync(dir).sort().map((f) => [f, readFileSync(join(dir, f))]));
}

/** A fresh download of a repo at a revision with @huggingface/hub, into memory. */
async function download(repo: string, revision = 'main', accessToken: string | undefined = WRITER): Promise<Map<string, Buffer>> {
  const lib = await import('@huggingface/hub');
  const out = new Map<string, Buffer>();
  for await (const e of lib.listFiles({ repo, revision, hubUrl: hub.url, accessToken })) {
    if (e.type !== 'file' || e.path === '.gitattributes') continue;
    const blob = await lib.downloadFile({ repo, path: e.path, revision, hubUrl: hub.url, accessToken });
    out.set(e.path, Buffer.from(await blob!.arrayBuffer()));
  }
  return new Map([...out].sort(([a], [b]) => (a < b ? -1 : 1)));
}

function sourceRepo() {
  const repo = repoFromDir(FIXTURE, {}, SHA);
  const config = JSON.parse((repo.files.get('config.json') as Buffer).toString());
  config.auto_map = { AutoConfig: 'configuration_tiny.TinyConfig', AutoModelForCausalLM: 'modeling_tiny.TinyForCausalLM' };
  const extra: Record<string, HubFile> = {
    'config.json': Buffer.from(JSON.stringify(config, null, 2)),
    'README.md': Buffer.from(SOURCE_CARD),
    LICENSE: Buffer.from('LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\n'),
    'configuration_tiny.py': Buffer.from('class TinyConfig: pass\n'),
    'modeling_tiny.py': Buffer.from('from .tiny_utils import helper\nclass TinyForCausalLM: pass\n'),
    'tiny_utils.py': Buffer.from('def helper(): pass\n'),
    'unrelated.py': Buffer.from('# not named by auto_map, not imported\n'),
  };
  for (const [k, v] of Object.entries(extra)) repo.files.set(k, v);
  return repo;
}

beforeAll(async () => {
  work = await tempDir();
  home = join(work, 'hf-home');
  await mkdir(home);
  hub = await startHub(new Map([[SOURCE, sourceRepo()]]), { writeToken: WRITER });
});
afterAll(async () => {
  await hub?.close();
  await rm(work, { recursive: true, force: true });
});

describe('convert <repo> --push-to-hub <new repo>', () => {
  let r: CliResult;
  let out: string;
  let report: Record<string, any>;

  beforeAll(async () => {
    out = join(work, 'pushed');
    r = await run(['convert', SOURCE, '-o', out, '--push-to-hub', 'me/Llama-tiny-marlin', '--device', 'cpu', '--json']);
    report = JSON.parse(r.stdout);
  });

  it('converts, verifies, then uploads in one commit; --json has all three and the provenance', () => {
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(report).toMatchObject({ report: 'convert', schema_version: 1, tool: { name: 'marlin-fp4' } });
    expect(REPORT_SCHEMAS.convert.safeParse(report).error?.issues ?? []).toEqual([]);
    expect(report.verify.passed).toBe(true);
    expect(report.hub).toMatchObject({ repo: SOURCE, revision: 'main', commit: SHA });
    expect(report.upload).toMatchObject({ repo: 'me/Llama-tiny-marlin', branch: 'main', created: true, private: false });
    expect(hub.repos.get('me/Llama-tiny-marlin')!.log).toEqual(['initial commit', expect.stringMatching(/^Marlin FP4 checkpoint \(v2, bfloat16\) converted by marlin-fp4 /)]);
    // Every file the Hub holds was checked against the manifest.
    expect(report.upload.verified_files).toBe(report.upload.files.length);
  });

  it('a fresh download of the new repo equals the local output byte for byte', async () => {
    const local = files(out);
    const remote = await download('me/Llama-tiny-marlin', report.upload.commit);
    expect([...remote.keys()]).toEqual([...local.keys()]);
    for (const [name, bytes] of local) expect(remote.get(name)!.equals(bytes), name).toBe(true);
  });

  it('carries the licence, the source card (verbatim) and the custom code auto_map names, with what it imports', () => {
    const names = readdirSync(out);
    for (const f of ['LICENSE', 'SOURCE_MODEL_CARD.md', 'configuration_tiny.py', 'modeling_tiny.py', 'tiny_utils.py']) expect(names).toContain(f);
    expect(names).not.toContain('unrelated.py');
    expect(readFileSync(join(out, 'SOURCE_MODEL_CARD.md'), 'utf8')).toBe(SOURCE_CARD);
  });

  it('writes a model card: base model, licence, scheme, the verify result, how to serve it', () => {
    const card = readFileSync(join(out, 'README.md'), 'utf8');
    expect(card.startsWith(`---\nbase_model: "${SOURCE}"\nbase_model_relation: quantized\nlicense: "llama3.1"\npipeline_tag: "text-generation"\ntags:\n`)).toBe(true);
    expect(card).toContain('| layout | Marlin FP4 v2');
    expect(card).toContain('| activation dtype | bfloat16 |');
    expect(card).toMatch(/`marlin-fp4 verify` \*\*passed\*\*/);
    expect(card).toContain('pip install marlin-fp4-vllm');
    expect(card).toContain('vllm serve me/Llama-tiny-marlin');
    expect(card).toContain(`at commit \`${SHA}\``);
  });

  it('the card with the verify result is still covered by the manifest (verify re-checks integrity)', async () => {
    const v = await run(['verify', out, '--m', '2', '--layers', '1', '--json']);
    expect(v.code).toBe(0);
    expect(JSON.parse(v.stdout).passed).toBe(true);
  });
});

describe('upload <dir> <repo>', () => {
  let dir: string;

  beforeAll(async () => {
    dir = join(work, 'local-out');
    const c = await run(['convert', FIXTURE, '-o', dir, '--device', 'cpu', '-q']);
    expect(c.code).toBe(0);
  });

  it('resumes an interrupted upload: shards sent before the failure are not sent again', async () => {
    hub.repos.set('me/resume', { files: new Map(), sha: 'c'.repeat(40), failCommit: 503 });
    const first = await run(['upload', dir, 'me/resume', '--json']);
    expect(first.code).toBe(3);
    expect(first.stderr).toMatch(/^error: me\/resume: the Hub at http:\/\/127\.0\.0\.1:\d+ answered HTTP 503/);
    const puts = () => hub.requests.filter((q) => q.method === 'PUT').length;
    const before = puts();
    const again = await run(['upload', dir, 'me/resume', '--json']);
    expect(again.code).toBe(0);
    const rep = JSON.parse(again.stdout);
    expect(rep).toMatchObject({ report: 'upload', created: false, uploaded_bytes: 0 });
    expect(REPORT_SCHEMAS.upload.safeParse(rep).error?.issues ?? []).toEqual([]);
    expect(puts()).toBe(before);
    const remote = await download('me/resume');
    for (const [name, bytes] of files(dir)) expect(remote.get(name)!.equals(bytes), name).toBe(true);
  });

  it('multipart LFS uploads, a branch, a private repo, a commit message', async () => {
    const mp = await startHub(new Map(), { writeToken: WRITER, multipartChunk: 8192 });
    try {
      const r = await run(['upload', dir, 'me/parts', '--private', '--branch', 'v2', '--commit-message', 'first Marlin build', '--json'], { HF_ENDPOINT: mp.url });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ branch: 'v2', private: true, created: true });
      expect(mp.requests.some((q) => /^\/lfs-upload\/[0-9a-f]{64}\/2$/.test(q.path))).toBe(true);
      const repo = mp.repos.get('me/parts')!;
      expect(repo.log).toEqual(['initial commit', 'first Marlin build']);
      expect([...repo.files.keys()]).toEqual(['.gitattributes']); // main untouched
      expect(repo.token).toBe(WRITER); // private: reads need the token
      const lib = await import('@huggingface/hub');
      const shard = await lib.downloadFile({ repo: 'me/parts', path: 'model.safetensors', revision: 'v2', hubUrl: mp.url, accessToken: WRITER });
      expect(Buffer.from(await shard!.arrayBuffer()).equals(readFileSync(join(dir, 'model.safetensors')))).toBe(true);
    } finally {
      await mp.close();
    }
  });

  it('checks the manifest first: a modified directory is refused before any request', async () => {
    const bad = join(work, 'modified');
    await run(['convert', FIXTURE, '-o', bad, '--device', 'cpu', '-q']);
    await appendFile(join(bad, 'tokenizer_config.json'), ' ');
    const n = hub.requests.length;
    const r = await run(['upload', bad, 'me/never']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^error: .*modified\/tokenizer_config\.json: size \d+ differs from the manifest's \d+: not uploading a checkpoint that fails its manifest\n$/);
    expect(hub.requests.length).toBe(n);
  });

  it('needs a token: HF_TOKEN, else HF_TOKEN_PATH, else HF_HOME/token (as huggingface_hub)', async () => {
    const none = await run(['upload', dir, 'me/tokens'], { HF_TOKEN: undefined, HF_HOME: join(work, 'no-home') });
    expect(none.code).toBe(2);
    expect(none.stderr).toBe(`error: me/tokens: uploading needs a Hugging Face token with write access: set HF_TOKEN, or log in with \`hf auth login\` (read from ${join(work, 'no-home', 'token')})\n`);
    await writeFile(join(work, 'token-file'), `${WRITER}\n`);
    const byPath = await run(['upload', dir, 'me/tokens', '-q'], { HF_TOKEN: undefined, HF_TOKEN_PATH: join(work, 'token-file') });
    expect(byPath.code).toBe(0);
    const h = join(work, 'login-home');
    await mkdir(h);
    await writeFile(join(h, 'token'), WRITER);
    const byHome = await run(['upload', dir, 'me/tokens', '-q'], { HF_TOKEN: undefined, HF_HOME: h });
    expect(byHome.code).toBe(0);
    const wrong = await run(['upload', dir, 'me/tokens'], { HF_TOKEN: 'hf_reader' });
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toBe('error: me/tokens: the Hub refused the upload (HTTP 401: Invalid username or password.); the token needs write access to this repo\n');
  });

  it('HF_HUB_OFFLINE: 1/ON/yes/TRUE are on, 0/false/no are off', async () => {
    for (const v of ['1', 'ON', 'yes', 'TRUE']) {
      const r = await run(['upload', dir, 'me/offline'], { HF_HUB_OFFLINE: v });
      expect(r.code, v).toBe(3);
      expect(r.stderr).toBe('error: me/offline: HF_HUB_OFFLINE is set: cannot upload\n');
    }
    for (const v of ['0', 'false', 'no']) expect((await run(['upload', dir, 'me/offline', '-q'], { HF_HUB_OFFLINE: v })).code, v).toBe(0);
  });

  it('says what it did in one line', async () => {
    const r = await run(['upload', dir, 'me/line']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^uploaded ${dir} to ${hub.url}/me/line: \\d+ files, .* \\(commit [0-9a-f]{12}, repo created; .* of LFS data sent; \\d+ files checked on the Hub\\)\\n$`));
    expect(existsSync(join(dir, 'marlin_fp4_manifest.json'))).toBe(true);
    expect((await readFile(join(dir, 'README.md'), 'utf8')).includes('Not verified yet')).toBe(true);
  });
});
