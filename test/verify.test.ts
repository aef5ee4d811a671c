// `marlin-fp4 verify`: passes on every converted fixture (both layouts, both flavours, dense and
// MoE, CPU and — where one is usable — GPU), and fails, naming the layer, on deliberately
// corrupted outputs: a flipped nibble, swapped scale bytes, a wrong global scale, v1 data
// declared as v2, a corrupted MoE expert. Exit codes 1 / 2 / 3 as documented.
import { spawnSync } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addon } from '../src/transform/addon.js';
import { verifyCheckpoint } from '../src/verify/verify.js';
import type { VerifyReport } from '../src/verify/report.js';
import { sampleIndices, selectLayers } from '../src/verify/select.js';
import { BIN, cli, editJson, MODELS, mutateModel, readAll, tempDir, writeTensors, type TensorData } from './helpers/models.js';

const FIXTURES = ['llama-tiny-modelopt', 'llama-tiny-ct', 'qwen3-moe-tiny-modelopt', 'qwen3-moe-tiny-ct'];
const status = addon().cudaStatus();
const gpu = status.available;
let work: string;

beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

function convert(fixture: string, out: string, ...args: string[]): void {
  const r = cli(['convert', join(MODELS, fixture), '-o', out, '-q', ...args]);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
}

function verifyJson(...args: string[]): { code: number; report: VerifyReport; stderr: string } {
  const r = cli(['verify', ...args, '--json']);
  return { code: r.code, report: JSON.parse(r.stdout) as VerifyReport, stderr: r.stderr };
}

/** Copies a converted directory and applies one edit to one tensor. */
async function corrupt(src: string, dst: string, tensor: string, edit: (t: TensorData) => void): Promise<void> {
  let hit = false;
  await mutateModel(src, dst, (name, t) => {
    if (name !== tensor) return t;
    hit = true;
    const data = Buffer.from(t.data);
    const copy = { ...t, data };
    edit(copy);
    return copy;
  });
  expect(hit, tensor).toBe(true);
}

const layer = (r: VerifyReport, name: string) => r.layers.find((l) => l.name === name)!;

describe.each(FIXTURES)('verify passes on %s', (fixture) => {
  it.each([
    ['v2 bfloat16', []],
    ['v1 float16', ['--layout', 'v1', '--dtype', 'float16']],
  ] as const)('converted as %s', async (_, args) => {
    const out = join(work, `${fixture}-${args.length ? 'v1' : 'v2'}`);
    convert(fixture, out, ...args);
    const { code, report, stderr } = verifyJson(out, '--m', '1,16,33');
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(report.passed).toBe(true);
    expect(report.errors).toEqual([]);
    expect(report.failed_layers).toEqual([]);
    expect(report.source).toBe(join(MODELS, fixture));
    expect(report.layout).toBe(args.length ? 'v1' : 'v2');
    expect(report.device).toBe(gpu ? 'cuda' : 'cpu');
    const manifest = JSON.parse(await readFile(join(out, 'marlin_fp4_manifest.json'), 'utf8'));
    expect(report.layers.map((l) => l.name).sort()).toEqual(manifest.layers.map((l: { name: string }) => l.name).sort());
    expect(report.layers_gemm).toBe(report.layers.length);
    expect(report.copied_checked).toBeGreaterThan(4);
    for (const l of report.layers) {
      expect(l.errors).toEqual([]);
      expect(l.worst!.map((w) => w.m)).toEqual([1, 16, 33]);
      for (const g of l.gemm!) expect(g.rel_err).toBeLessThan(report.tolerance);
      if (l.kind !== 'linear') {
        // Three experts, all checked (fewer than the default sample of 4); w13 has gate and up.
        expect(new Set(l.gemm!.map((g) => g.expert))).toEqual(new Set([0, 1, 2]));
        expect(l.gemm!.length).toBe(3 * 3 * (l.kind === 'moe-w13' ? 2 : 1));
      }
    }
  });
});

describe('verify fails on corrupted outputs, naming the layer', () => {
  let good: string;
  const Q = 'model.layers.1.self_attn.q_proj';
  beforeAll(() => {
    good = join(work, 'good');
    convert('llama-tiny-modelopt', good);
  });

  it('a flipped nibble in one packed weight', async () => {
    const bad = join(work, 'nibble');
    await corrupt(good, bad, `${Q}.weight`, (t) => {
      t.data[1000]! ^= 0x40;
    });
    const { code, report, stderr } = verifyJson(bad);
    expect(code).toBe(1);
    expect(stderr).toBe(`error: verification failed: 1 layer (${Q})\n`);
    expect(report.failed_layers).toEqual([Q]);
    expect(layer(report, Q).errors.join('\n')).toMatch(/^weight: 1 bytes differ from the source, first at \[\d+, k \d+\.\.\d+\]/);
  });

  it('swapped bytes in one processed scale tensor (structure and GEMM)', async () => {
    const bad = join(work, 'scales');
    const name = 'model.layers.0.mlp.down_proj';
    await corrupt(good, bad, `${name}.weight_scale`, (t) => {
      // Swap bytes 0 and 1 of every 8-byte run: a local transposition.
      for (let i = 0; i + 1 < t.data.length; i += 8) {
        const a = t.data[i]!;
        t.data[i] = t.data[i + 1]!;
        t.data[i + 1] = a;
      }
    });
    const { code, report } = verifyJson(bad);
    expect(code).toBe(1);
    expect(report.failed_layers).toEqual([name]);
    const l = layer(report, name);
    expect(l.errors.join('\n')).toMatch(/^weight_scale: \d+ block scales differ from the source/);
    expect(l.gemm!.some((g) => !g.pass)).toBe(true);
  });

  it('a wrong global scale (GEMM off by the same factor)', async () => {
    const bad = join(work, 'global');
    await corrupt(good, bad, `${Q}.weight_scale_2`, (t) => t.data.writeFloatLE(t.data.readFloatLE(0) * 1.5, 0));
    const { code, report } = verifyJson(bad);
    expect(code).toBe(1);
    expect(report.failed_layers).toEqual([Q]);
    const l = layer(report, Q);
    expect(l.errors.join('\n')).toMatch(/^weight_scale_2: stored [0-9a-f]{8}, expected [0-9a-f]{8}/);
    for (const g of l.gemm!) expect(g.rel_err).toBeCloseTo(0.5, 2);
    // The human summary names it too.
    const human = cli(['verify', bad]);
    expect(human.code).toBe(1);
    expect(human.stdout).toMatch(new RegExp(`^${Q.replace(/\./g, '\\.')} .* FAIL$`, 'm'));
    expect(human.stdout).toMatch(new RegExp(`${Q.replace(/\./g, '\\.')}: GEMM at M = 1: column \\d+: error 5\\.00e-1 > 0\\.0001`));
    expect(human.stdout).toMatch(/\nFAIL: /);
  });

  it('v1 data declared as v2 (config, manifest and shard metadata all rewritten)', async () => {
    const v1 = join(work, 'v1');
    convert('llama-tiny-modelopt', v1, '--layout', 'v1');
    const bad = join(work, 'v1-as-v2');
    await mutateModel(v1, bad, (_, t) => t);
    await editJson(join(bad, 'config.json'), (c) => {
      (c.quantization_config as Record<string, unknown>).layout = 'v2';
    });
    await editJson(join(bad, 'marlin_fp4_manifest.json'), (m) => {
      m.layout = 'v2';
      for (const r of m.layers as Record<string, unknown>[]) r.layout = 'v2';
    });
    const tensors = await readAll(join(bad, 'model.safetensors'));
    const { readHeader } = await import('../src/safetensors/index.js');
    const header = await readHeader(join(bad, 'model.safetensors'));
    const marlin = JSON.parse(header.metadata.marlin_fp4!);
    marlin.layout = 'v2';
    for (const r of marlin.layers) r.layout = 'v2';
    await rm(join(bad, 'model.safetensors'));
    await writeTensors(join(bad, 'model.safetensors'), [...tensors], { ...header.metadata, marlin_fp4: JSON.stringify(marlin) });
    const { code, report } = verifyJson(bad);
    expect(code).toBe(1);
    expect(report.layout).toBe('v2');
    expect(report.failed_layers.length).toBe(report.layers.length);
    const l = layer(report, Q);
    expect(l.errors).toContain(`${Q}.weight_scale_2: dtype BF16, expected F32`);
    expect(l.errors.join('\n')).toMatch(/^weight_scale: \d+ block scales differ from the source/m);
    expect(l.errors).toContain('shard metadata says sf = 1, expected 8');
  });

  it('a nibble flipped in one MoE expert names the expert and part', async () => {
    const out = join(work, 'moe');
    convert('qwen3-moe-tiny-modelopt', out);
    const bad = join(work, 'moe-bad');
    const S = 'model.layers.1.mlp.experts.w13';
    await corrupt(out, bad, `${S}_weight`, (t) => {
      // Expert 2, last row, second half of the columns (the up projection).
      const per = t.data.length / 3;
      t.data[2 * per + per - 4]! ^= 0x08;
    });
    const { code, report } = verifyJson(bad, '--experts', '1');
    expect(code).toBe(1);
    expect(report.failed_layers).toEqual([S]);
    expect(layer(report, S).errors.join('\n')).toMatch(/^expert 2 up: weight: 1 bytes differ/);
    // --experts 1 runs GEMMs on expert 0 only.
    expect(new Set(layer(report, S).gemm!.map((g) => g.expert))).toEqual(new Set([0]));
  });
});

describe('verify options and errors', () => {
  let out: string;
  beforeAll(() => {
    out = join(work, 'opts');
    convert('llama-tiny-ct', out);
  });

  it('defaults to the current directory and to the manifest\'s source; --source overrides', () => {
    const r = spawnSync(process.execPath, [BIN, 'verify', '--json', '--m', '2'], { cwd: out, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout) as VerifyReport;
    expect(report.converted).toBe(out);
    expect(report.source).toBe(join(MODELS, 'llama-tiny-ct'));
    // The ModelOpt fixture holds the same codes and scales: every layer verifies against it,
    // but convert writes another config.json and other shard files from it.
    const modelopt = verifyJson(out, '--source', join(MODELS, 'llama-tiny-modelopt'), '--m', '1');
    expect(modelopt.code).toBe(1);
    expect(modelopt.report.failed_layers).toEqual([]);
    expect(modelopt.report.errors).toContain('config.json: quantization_config.source_format is "compressed-tensors-nvfp4", convert writes "modelopt-nvfp4"');
    expect(modelopt.report.warnings[0]).toMatch(/^source .* is not the checkpoint that was converted \(.*\): verifying against it as given$/);
    // A different model does not.
    const other = verifyJson(out, '--source', join(MODELS, 'qwen3-moe-tiny-ct'), '--m', '1');
    expect(other.code).toBe(1);
  });

  it('--layers N samples N layers evenly; a regex selects by name; structure is checked for all', () => {
    const n = verifyJson(out, '--layers', '3', '--m', '1');
    expect(n.code).toBe(0);
    expect(n.report.layers_gemm).toBe(3);
    const withGemm = n.report.layers.filter((l) => l.gemm).map((l) => l.name);
    expect(withGemm).toEqual([n.report.layers[0]!.name, n.report.layers[7]!.name, n.report.layers[13]!.name]);
    expect(n.report.layers.length).toBe(14);
    const re = verifyJson(out, '--layers', 'mlp\\.(gate|up)_proj$', '--m', '1');
    expect(re.report.layers.filter((l) => l.gemm).map((l) => l.name)).toEqual([
      'model.layers.0.mlp.gate_proj',
      'model.layers.0.mlp.up_proj',
      'model.layers.1.mlp.gate_proj',
      'model.layers.1.mlp.up_proj',
    ]);
    expect(sampleIndices(10, 4)).toEqual([0, 3, 6, 9]);
    expect(sampleIndices(3, 8)).toEqual([0, 1, 2]);
    expect([...selectLayers(['a', 'b', 'c'], '1')]).toEqual(['a']);
  });

  it('prints a human summary table and PASS', () => {
    const r = cli(['verify', out, '--layers', '2', '--m', '1,4']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^layer +kind +N x K +structure +rel M=1 +rel M=4 +max abs +result$/m);
    expect(r.stdout).toContain('structure: 14 of 14 converted layers byte-exact against the source');
    expect(r.stdout).toMatch(/\nPASS: .*opts \(\d/);
  });

  it('bad input exits 2, --device cuda without a GPU exits 3', async () => {
    const notConverted = cli(['verify', join(MODELS, 'llama-tiny-modelopt')]);
    expect(notConverted.code).toBe(2);
    expect(notConverted.stderr).toMatch(/marlin_fp4_manifest\.json: missing/);
    expect(cli(['verify', out, '--layers', '(']).code).toBe(2);
    expect(cli(['verify', out, '--layers', 'nothing-matches']).stderr).toMatch(/matches none of the 14 converted layers/);
    expect(cli(['verify', out, '--m', '0']).code).toBe(2);
    expect(cli(['verify', out, '--source', join(work, 'missing')]).code).toBe(2);
    const cuda = cli(['verify', out, '--device', 'cuda', '--m', '1']);
    expect(cuda.code).toBe(gpu ? 0 : 3);
    if (!gpu) expect(cuda.stderr).toMatch(/^error: --device cuda: no usable CUDA device/);
  });

  it.skipIf(!gpu)(`GPU and CPU verify agree (${gpu ? status.name : `skipped: ${status.reason}`})`, async () => {
    const [a, b] = await Promise.all([
      verifyCheckpoint({ dir: out, device: 'cpu', m: [1, 8] }),
      verifyCheckpoint({ dir: out, device: 'cuda', m: [1, 8] }),
    ]);
    expect(a.passed && b.passed).toBe(true);
    expect(b.reference_engine).toMatch(/^(cublas|cuda-kernel) \(/);
    for (const l of b.layers) for (const w of l.worst!) expect(w.rel_err).toBeLessThan(1e-5);
  });

  it('verifyCheckpoint is callable directly (for convert --verify)', async () => {
    const r = await verifyCheckpoint({ dir: out, device: 'cpu', m: [3], layers: '1' });
    expect(r.passed).toBe(true);
    expect(r.layers_gemm).toBe(1);
    expect(r.m).toEqual([3]);
  });
});
