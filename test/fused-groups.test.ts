// Fused parts with different global scales (generator option splitGlobals: q/k/v, dense
// gate/up, every expert's gate/up): convert re-encodes them onto the largest global and warns
// per layer with the counts (stderr and --json), records the groups (config.json, manifest,
// shard metadata); --strict refuses; verify passes, and fails a re-encoded scale moved
// outside the bound. The GPU writes the same bytes (skipped here without one).
import { existsSync } from 'node:fs';
import { open, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateModel } from '../tools/fixture-generator/generate.js';
import type { LayerRecord } from '../src/format/records.js';
import { readHeader } from '../src/safetensors/index.js';
import { addon } from '../src/transform/addon.js';
import { expectBytes } from './helpers/bytes.js';
import { cli, tempDir } from './helpers/models.js';

const cuda = addon().cudaStatus();
let work: string;
const src: Record<string, string> = {};
const FIXTURES = {
  llama: { preset: 'llama-tiny', flavour: 'modelopt' },
  moe: { preset: 'qwen3-moe-tiny', flavour: 'modelopt', shards: 2 },
  'llama-ct': { preset: 'llama-tiny', flavour: 'compressed-tensors' },
} as const;

beforeAll(async () => {
  work = await tempDir();
  for (const [name, o] of Object.entries(FIXTURES)) {
    src[name] = join(work, `${name}-split`);
    await generateModel(src[name]!, { ...o, splitGlobals: true, seed: 3 });
  }
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** A layer of convert's --json report: the record format/records.ts defines. */
type Layer = LayerRecord;

const WARNING =
  /^(\S+): (?:global scale [\d.e-]+ differs from its fused group's \((\S+): [\d.e-]+, the largest\)|gate and up global scales differ in (\d+) experts? \(each stored with the larger\)): (\d+) block scales re-encoded onto the shared global, (?:none changed value|(\d+) changed value(?: \((\d+) became 0\))?, largest relative change of a dequantized weight ([\d.]+)%) \(--strict refuses\)$/;

describe('convert re-encodes fused parts whose global scales differ', () => {
  for (const name of Object.keys(FIXTURES)) {
    it(`${name}: one warning per re-encoded layer, on stderr and in --json, with the counts`, async () => {
      const out = join(work, `${name}-out`);
      const r = cli(['convert', src[name]!, '-o', out, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const report = JSON.parse(r.stdout) as { warnings: string[]; layers: Layer[] };
      const reencoded = report.layers.filter((l) => l.reencoded);
      // Every fused group has one part with the largest global; the others are re-encoded.
      const dense = report.layers.filter((l) => l.kind === 'linear' && l.fused_group);
      const groups = new Set(dense.map((l) => l.fused_group));
      const stacks = report.layers.filter((l) => l.kind === 'moe-w13');
      expect(groups.size).toBeGreaterThan(0);
      expect(reencoded.filter((l) => l.kind === 'linear').length).toBeGreaterThanOrEqual(groups.size);
      expect(reencoded.filter((l) => l.kind === 'moe-w13')).toHaveLength(stacks.length);
      const lines = report.warnings.filter((w) => WARNING.test(w));
      expect(lines).toHaveLength(reencoded.length);
      const stderr = r.stderr.trim().split('\n');
      for (const w of lines) expect(stderr).toContain(`warning: ${w}`);
      for (const l of reencoded) {
        const w = lines.find((x) => x.startsWith(`${l.name}: `))!;
        const m = WARNING.exec(w)!;
        const re = l.reencoded!;
        expect(Number(m[4])).toBe(re.scales);
        expect(re.scales).toBeGreaterThan(0);
        expect(re.changed).toBeGreaterThan(0); // the ratios are not powers of two
        expect(Number(m[5])).toBe(re.changed);
        expect(Number(m[6] ?? 0)).toBe(re.underflowed);
        expect(Number(m[7])).toBeCloseTo(100 * re.max_relative_change, 1);
        // At most half an E4M3 step (2^-4 relative) unless a scale fell to 0.
        if (re.underflowed === 0) expect(re.max_relative_change).toBeLessThanOrEqual(2 ** -4);
        else expect(re.max_relative_change).toBe(1);
        if (l.kind === 'linear') {
          expect(m[2]).toBe(l.fused_group);
          expect(re.source_global).toBeLessThan(re.shared_global!);
        } else {
          expect(Number(m[3])).toBe(re.experts);
          expect(re.experts).toBeGreaterThan(0);
        }
      }
      // Recorded: config.json, the manifest and each shard's metadata.
      const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
      const manifest = JSON.parse(await readFile(join(out, 'marlin_fp4_manifest.json'), 'utf8'));
      const fused: string[][] = config.quantization_config.fused_groups;
      expect(fused.length).toBe(groups.size);
      for (const g of fused) {
        const leaves = g.map((p) => p.slice(p.lastIndexOf('.') + 1));
        expect([['q_proj', 'k_proj', 'v_proj'], ['gate_proj', 'up_proj']]).toContainEqual(leaves);
      }
      expect(manifest.fused_groups.map((g: { members: string[] }) => g.members)).toEqual(fused);
      for (const g of manifest.fused_groups as { name: string; members: string[]; sf: number; shared_global: number; concatenable: boolean }[]) {
        expect(g.concatenable).toBe(true);
        for (const m of g.members) expect(report.layers.find((l) => l.name === m)).toMatchObject({ fused_group: g.name, sf: g.sf });
      }
      const recorded: Layer[] = [];
      for (const f of (await readdir(out)).filter((f) => f.endsWith('.safetensors'))) {
        recorded.push(...JSON.parse((await readHeader(join(out, f))).metadata.marlin_fp4!).layers);
      }
      expect(recorded.sort((a, b) => (a.name < b.name ? -1 : 1))).toEqual([...report.layers].sort((a, b) => (a.name < b.name ? -1 : 1)));
    });
  }

  for (const name of ['llama', 'moe']) {
    it(`${name}: --strict refuses it (exit 2, one line, no output)`, () => {
      const out = join(work, `${name}-strict`);
      const r = cli(['convert', src[name]!, '-o', out, '--strict']);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^error: .*: tensor \S+\.weight_scale_2: .*different global scales .*--strict refuses to re-encode their block scales onto one global\n$/);
      expect(existsSync(out)).toBe(false);
    });
  }
});

describe('verify checks re-encoded scales against the source within the bound', () => {
  for (const [name, args] of [
    ['llama', []],
    ['llama', ['--layout', 'v1', '--dtype', 'float16']],
    ['llama', ['--dtype', 'float16']],
    ['moe', []],
    ['llama-ct', []],
  ] as const) {
    it(`${name} ${args.join(' ') || 'v2 bfloat16'}: PASS, every re-encoded layer within 2^-4 or underflowed`, () => {
      const out = join(work, `${name}-verify-${args.join('-')}`);
      expect(cli(['convert', src[name]!, '-o', out, '-q', ...args]).code).toBe(0);
      const r = cli(['verify', out, '--json', '--layers', 'all']);
      const rep = JSON.parse(r.stdout);
      expect(rep.errors).toEqual([]);
      expect(rep.failed_layers).toEqual([]);
      expect(r.code).toBe(0);
      const checked = rep.layers.filter((l: { reencoded_max_relative_change?: number }) => l.reencoded_max_relative_change !== undefined);
      expect(checked.length).toBeGreaterThan(0);
    });
  }

  it('a re-encoded scale moved outside the bound fails, naming the layer and the block', async () => {
    const out = join(work, 'llama-tampered');
    const conv = cli(['convert', src.llama!, '-o', out, '--json', '--no-checksums']);
    expect(conv.code).toBe(0);
    const layer = (JSON.parse(conv.stdout).layers as Layer[]).find((l) => l.kind === 'linear' && l.reencoded)!;
    const file = join(out, 'model.safetensors');
    const h = await readHeader(file);
    const t = h.tensors.get(`${layer.name}.weight_scale`)!;
    const f = await open(file, 'r+');
    try {
      const data = Buffer.alloc(t.end - t.begin);
      await f.read(data, 0, data.length, h.dataStart + t.begin);
      // A stored byte is bits 14..7 of a half: +8 is one more exponent, twice the scale.
      const i = data.findIndex((b) => b > 0 && b < 0xe8); // stays a finite half
      data[i]! += 8;
      await f.write(data, i, 1, h.dataStart + t.begin + i);
    } finally {
      await f.close();
    }
    const r = cli(['verify', out, '--json', '--layers', layer.name]);
    expect(r.code).toBe(1);
    const rep = JSON.parse(r.stdout);
    expect(rep.failed_layers).toEqual([layer.name]);
    const errs: string[] = rep.layers.find((l: { name: string }) => l.name === layer.name).errors;
    expect(errs.some((e) => /^weight_scale: 1 block scales outside the re-encoding bound max\(2\^-4·x, 2\^-10\) of the source's/.test(e))).toBe(true);
    expect(errs.some((e) => /^weight_scale: 1 block scales differ from the source/.test(e))).toBe(true);
  });
});

describe.skipIf(!cuda.available)(
  cuda.available ? `re-encoding on the GPU (${cuda.name})` : `re-encoding on the GPU (skipped: no usable CUDA device: ${cuda.reason})`,
  () => {
    for (const name of Object.keys(FIXTURES)) {
      for (const args of [[], ['--dtype', 'float16'], ['--layout', 'v1']]) {
        it(`${name} ${args.join(' ') || 'v2 bfloat16'}: --device cuda writes the same bytes as --device cpu, and verifies on the GPU`, async () => {
          const a = join(work, `${name}-gpu-${args.join('-')}`);
          const b = join(work, `${name}-cpu-${args.join('-')}`);
          const g = cli(['convert', src[name]!, '-o', a, '--device', 'cuda', '--json', ...args]);
          expect(g.code, g.stderr).toBe(0);
          expect(JSON.parse(g.stdout).device).toBe('cuda');
          expect(cli(['convert', src[name]!, '-o', b, '--device', 'cpu', '-q', ...args]).code).toBe(0);
          const files = (await readdir(b)).sort();
          expect((await readdir(a)).sort()).toEqual(files);
          for (const f of files) expectBytes(await readFile(join(a, f)), await readFile(join(b, f)), f);
          const v = cli(['verify', a, '--device', 'cuda', '-q']);
          expect(v.code, v.stdout + v.stderr).toBe(0);
        });
      }
    }
  },
);
