// What CI sees: --json reports against their published schemas, GitHub Actions annotations and the
// step summary, progress lines without a terminal, inspect's module list, inspect <repo-id> by
// range requests only, and the Hub settings read as huggingface_hub reads them.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { envFlag, hubOffline, hubToken, tokenPath } from '../src/checkpoint/hub-env.js';
import { frontMatter, renderModelCard, type CardInfo } from '../src/convert/model-card.js';
import { jsonSchema, REPORT_SCHEMAS } from '../src/cli/report-schemas.js';
import { generateModel } from '../tools/fixture-generator/generate.js';
import { cliAsync, MODELS, ROOT, mutateModel, tempDir, type CliResult } from './helpers/models.js';
import { repoFromDirOnDisk, startHub, type FakeHub } from './helpers/hub-server.js';

const LLAMA = join(MODELS, 'llama-tiny-modelopt');
const MOE = join(MODELS, 'qwen3-moe-tiny-ct');
let work: string;

function run(args: string[], env: Record<string, string | undefined> = {}): Promise<CliResult> {
  return cliAsync(args, env);
}

beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('--json reports and their JSON Schemas', () => {
  it('schemas/ holds the schemas generated from src/cli/report-schemas.ts (npm run schemas)', () => {
    for (const kind of ['convert', 'verify', 'inspect', 'upload'] as const) {
      const committed = JSON.parse(readFileSync(join(ROOT, 'schemas', `${kind}.schema.json`), 'utf8'));
      expect(committed, kind).toEqual(jsonSchema(kind));
    }
  });

  it('every report validates against its schema, strictly (no field the schema lacks)', async () => {
    const out = join(work, 'schema-out');
    const reports: [keyof typeof REPORT_SCHEMAS, string[]][] = [
      ['convert', ['convert', MOE, '-o', out, '--device', 'cpu', '--json']],
      ['convert', ['convert', LLAMA, '-o', join(work, 'schema-out-2'), '--device', 'cpu', '--verify', '--json']],
      ['verify', ['verify', out, '--m', '1,3', '--json']],
      ['inspect', ['inspect', MOE, '--scan-scales', '--json']],
      ['inspect', ['inspect', out, '--scan-scales', '--json']],
    ];
    for (const [kind, args] of reports) {
      const r = await run(args);
      expect(r.code, args.join(' ')).toBe(0);
      const doc = JSON.parse(r.stdout);
      const parsed = REPORT_SCHEMAS[kind].safeParse(doc);
      expect(parsed.success ? [] : parsed.error.issues.slice(0, 3), args.join(' ')).toEqual([]);
      expect(doc).toMatchObject({ report: kind, schema_version: 1, tool: { name: 'marlin-fp4' } });
    }
  });
});

describe('GitHub Actions', () => {
  const gha = (summary: string) => ({ GITHUB_ACTIONS: 'true', GITHUB_STEP_SUMMARY: summary });

  it('warnings and errors are workflow commands; each command appends its summary', async () => {
    const summary = join(work, 'summary.md');
    const out = join(work, 'gha-out');
    const c = await run(['convert', LLAMA, '-o', out, '--device', 'cpu', '--verify'], gha(summary));
    expect(c.code).toBe(0);
    // A manifest without checksums is a warning of verify's.
    const unsummed = join(work, 'gha-no-sums');
    expect((await run(['convert', LLAMA, '-o', unsummed, '--device', 'cpu', '--no-checksums', '-q'])).code).toBe(0);
    const v = await run(['verify', unsummed, '--m', '2'], gha(summary));
    expect(v.code).toBe(0);
    expect(v.stderr).toBe('::warning::marlin_fp4_manifest.json holds no checksums (converted with --no-checksums): files were not checked for changes\n');
    expect(v.stderr).not.toMatch(/^warning:/m);
    const bad = await run(['convert', join(work, 'missing'), '-o', join(work, 'x')], gha(summary));
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe(`::error::${join(work, 'missing')}: no such directory\n`);
    const md = await readFile(summary, 'utf8');
    expect(md).toContain(`### marlin-fp4 convert: \`${LLAMA}\``);
    expect(md).toContain('| format | modelopt NVFP4 → Marlin FP4 v2, bfloat16 |');
    expect(md.match(/### marlin-fp4 verify: ✅ PASS/g)).toHaveLength(2);
    expect(md).toContain(`### marlin-fp4 convert: ❌ failed (exit code 2)\n\n\`\`\`\n${join(work, 'missing')}: no such directory\n\`\`\``);
  });

  it('messages with line breaks and percent signs are escaped as the runner expects', async () => {
    const { annotation } = await import('../src/cli/ci-output.js');
    expect(annotation('error', '50% done\nnext', 'a: b, c')).toBe('::error title=a%3A b%2C c::50%25 done%0Anext');
  });

  it('outside GitHub Actions nothing is appended and messages stay plain', async () => {
    const summary = join(work, 'untouched.md');
    const r = await run(['convert', join(work, 'missing')], { GITHUB_STEP_SUMMARY: summary });
    expect(r.stderr).toMatch(/^error: /);
    await expect(readFile(summary)).rejects.toThrow();
  });
});

describe('progress without a terminal', () => {
  it('a plain line every MARLIN_FP4_PROGRESS_SECONDS on stderr; none with --json, --quiet or HF_HUB_DISABLE_PROGRESS_BARS', async () => {
    const r = await run(['convert', MOE, '-o', join(work, 'p1'), '--device', 'cpu'], { MARLIN_FP4_PROGRESS_SECONDS: '0.0001' });
    expect(r.code).toBe(0);
    const lines = r.stderr.split('\n').filter(Boolean);
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) expect(l).toMatch(/^converting +\d+% .* \/ .* ETA .*\(\d+\.\d+ s\)$/);
    expect(r.stderr).not.toContain('\r');
    for (const [args, env] of [
      [['--json'], {}],
      [['-q'], {}],
      [[], { HF_HUB_DISABLE_PROGRESS_BARS: '1' }],
    ] as const) {
      const q = await run(['convert', MOE, '-o', join(work, `p-${args.join('')}-${Object.keys(env).length}`), '--device', 'cpu', ...args], { MARLIN_FP4_PROGRESS_SECONDS: '0.0001', ...env });
      expect(q.code).toBe(0);
      expect(q.stderr).toBe('');
    }
  });
});

describe('inspect --json lists every module with its fate', () => {
  it('converted linears and expert stacks, passed-through modules, and refused ones with the reason', async () => {
    const ok = JSON.parse((await run(['inspect', MOE, '--json'])).stdout);
    const byName = new Map(ok.modules.map((m: { name: string }) => [m.name, m]));
    expect(byName.get('model.layers.0.mlp.experts')).toMatchObject({ kind: 'moe-experts', fate: 'converted' });
    expect(byName.get('model.layers.1.self_attn.q_proj')).toMatchObject({ kind: 'linear', fate: 'converted', tensors: 4 });
    expect(byName.get('model.embed_tokens')).toMatchObject({ kind: 'other', fate: 'passed-through', reason: 'not quantized' });
    // Every tensor belongs to exactly one module.
    expect(ok.modules.reduce((a: number, m: { tensors: number }) => a + m.tensors, 0)).toBe(ok.tensors);

    const broken = join(work, 'broken-scale');
    await mutateModel(LLAMA, broken, (name, t) =>
      name === 'model.layers.1.mlp.down_proj.weight_scale_2' ? { ...t, data: Buffer.from(new Float32Array([-1]).buffer) } : t,
    );
    const bad = JSON.parse((await run(['inspect', broken, '--json'])).stdout);
    const down = bad.modules.find((m: { name: string }) => m.name === 'model.layers.1.mlp.down_proj');
    expect(down).toMatchObject({ kind: 'linear', fate: 'refused' });
    expect(down.reason).toMatch(/global scale -1 is not a positive finite number/);
  });
});

describe('inspect <repo-id> reads headers by range requests and downloads nothing else', () => {
  let hub: FakeHub;
  let model: string;
  beforeAll(async () => {
    // 14 MB in two shards, served from disk: big enough that reading it whole would show.
    model = join(work, 'generated');
    await generateModel(model, { preset: 'llama-tiny', flavour: 'modelopt', shards: 2, hiddenSize: 1024, intermediateSize: 2048, layers: 2, vocabSize: 1024, heads: 8, kvHeads: 2, headDim: 128 });
    hub = await startHub(new Map([['acme/moe', repoFromDirOnDisk(model, 'e'.repeat(40))]]));
  });
  afterAll(() => hub?.close());

  it('the same report as a local inspect; shard bytes read are a small part of the shards', async () => {
    const home = join(work, 'range-home');
    const r = await run(['inspect', 'acme/moe', '--json'], { HF_HOME: home, HF_ENDPOINT: hub.url, HF_TOKEN: undefined });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const remote = JSON.parse(r.stdout);
    const local = JSON.parse((await run(['inspect', model, '--json'])).stdout);
    for (const k of ['format', 'quantized', 'conversion', 'modules', 'problems', 'verdict', 'shards', 'tensors']) expect(remote[k], k).toEqual(local[k]);
    const shardGets = hub.requests.filter((q) => q.path.endsWith('.safetensors'));
    expect(shardGets.length).toBeGreaterThan(0);
    expect(shardGets.every((q) => q.range !== undefined)).toBe(true);
    const sent = shardGets.reduce((a, q) => a + q.sent, 0);
    expect(sent).toBeLessThan(remote.total_bytes / 50);
    // downloaded_bytes counts every file body (the JSON files, the ranges), not the 1-byte size probes.
    const bodies = hub.requests.filter((q) => q.path.includes('/resolve/') && q.range !== 'bytes=0-0');
    expect(remote.hub.downloaded_bytes).toBe(bodies.reduce((a, q) => a + q.sent, 0));
    // No shard is in the cache: only the small JSON files were downloaded.
    const snap = join(home, 'hub', 'models--acme--moe', 'snapshots', 'e'.repeat(40));
    expect(readdirSync(snap).sort()).toEqual(['config.json', 'hf_quant_config.json', 'model.safetensors.index.json']);
  });
});

describe('Hub settings as huggingface_hub reads them', () => {
  it('boolean variables: 1/ON/YES/TRUE in any case are true, the rest false', () => {
    for (const v of ['1', 'on', 'ON', 'yes', 'True', 'TRUE']) expect(envFlag('X', { X: v }), v).toBe(true);
    for (const v of ['0', 'off', 'no', 'false', '', '2']) expect(envFlag('X', { X: v }), v).toBe(false);
    expect(hubOffline({ TRANSFORMERS_OFFLINE: '1' })).toBe(true);
    expect(hubOffline({ HF_HUB_OFFLINE: 'false' })).toBe(false);
  });

  it('the token: HF_TOKEN, else HF_TOKEN_PATH, else HF_HOME/token; blank means none', async () => {
    const home = join(work, 'tok-home');
    await mkdir(home);
    await writeFile(join(home, 'token'), 'hf_from_home\r\n');
    await writeFile(join(work, 'tok'), ' hf_from_path \n');
    expect(tokenPath({ HF_HOME: home })).toBe(join(home, 'token'));
    expect(hubToken({ HF_HOME: home })).toEqual({ token: 'hf_from_home', from: join(home, 'token') });
    expect(hubToken({ HF_HOME: home, HF_TOKEN_PATH: join(work, 'tok') })?.token).toBe('hf_from_path');
    expect(hubToken({ HF_HOME: home, HF_TOKEN: 'hf_env' })).toEqual({ token: 'hf_env', from: 'HF_TOKEN' });
    expect(hubToken({ HF_HOME: home, HF_TOKEN: '  ' })?.token).toBe('hf_from_home');
    expect(hubToken({ HF_HOME: join(work, 'nowhere') })).toBeUndefined();
    expect(() => hubToken({ HF_HOME: home, HF_TOKEN_PATH: join(home, 'token'), HF_TOKEN: 'abc' })).toThrow('HF_TOKEN: not a Hugging Face access token');
  });
});

describe('model card', () => {
  const info = (card?: string, licenceFiles: string[] = []): CardInfo => ({
    name: 'out',
    source: { name: 'src', format: 'modelopt', card, licenceFiles },
    layout: 'v2',
    activation_dtype: 'bfloat16',
    converted_layers: 3,
    tool_version: '0.0.0',
  });

  it("reads the source card's front matter and carries the licence", () => {
    expect(frontMatter('---\nlicense: "apache-2.0"\ntags:\n- a\nlicense_link: LICENSE\n---\nbody')).toEqual({ license: 'apache-2.0', license_link: 'LICENSE' });
    expect(frontMatter('no front matter')).toEqual({});
    expect(renderModelCard(info('---\nlicense: other\nlicense_name: nvidia-open-model-license\n---\n'), undefined)).toContain('license: "other"\nlicense_name: "nvidia-open-model-license"\n');
    // No card, a LICENSE file: license other, linked to the file.
    expect(renderModelCard(info(undefined, ['LICENSE']))).toContain('license: "other"\nlicense_link: "LICENSE"\n');
    // No licence anywhere: no field rather than a guess; no base_model for a local source.
    const bare = renderModelCard(info());
    expect(bare).not.toContain('license');
    expect(bare).not.toContain('base_model');
    expect(bare).toContain('Not verified yet');
  });

  it('the output size of a converted fixture includes the card (statSync sanity)', () => {
    expect(statSync(join(ROOT, 'schemas', 'convert.schema.json')).size).toBeGreaterThan(0);
  });
});
