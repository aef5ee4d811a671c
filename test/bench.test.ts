// `marlin-fp4 bench`: argument errors exit 2; without a usable GPU it says so and exits 3 (the
// case on machines without one); on a GPU a small run prints one JSON document whose numbers
// are consistent with each other. The kernel's speed goals live in bench/notes/gemm.md, not here.
import { describe, expect, it } from 'vitest';
import { addon } from '../src/transform/addon.js';
import { benchFigures, parseShapes } from '../src/cli/bench-command.js';
import { cli } from './helpers/models.js';

const status = addon().cudaStatus();
const gpu = status.available;

describe('bench arguments', () => {
  it('parses N x K lists and rejects the rest with exit 2', () => {
    expect(parseShapes('28672x8192, 64X32')).toEqual([
      [28672, 8192],
      [64, 32],
    ]);
    for (const bad of ['28672', '64x30', '0x64', 'axb']) {
      const r = cli(['bench', '--shapes', bad]);
      expect(r.code, bad).toBe(2);
      expect(r.stderr).toMatch(/--shapes/);
    }
    expect(cli(['bench', '--m', '0']).code).toBe(2);
  });

  it('derives TFLOP/s, weight GB/s, % of copy and the speed-up from the times', () => {
    const f = benchFigures({ n: 1000, k: 2000, m: 10, np: 1024, kp: 2048, oursUs: 2, cublasUs: 5, dequantUs: null, weightBytes: 4e6, plan: '' }, 4000);
    expect(f.tflops).toBeCloseTo(20, 10); // 2·10·1000·2000 flop in 2 us
    expect(f.weightGBs).toBeCloseTo(2000, 6);
    expect(f.pctCopy).toBeCloseTo(50, 6);
    expect(f.speedup).toBeCloseTo(2.5, 10);
    expect(benchFigures({ n: 1, k: 16, m: 1, np: 64, kp: 16, oursUs: 1, cublasUs: null, dequantUs: null, weightBytes: 1, plan: '' }, 1).speedup).toBeNull();
  });
});

describe.skipIf(gpu)(`bench without a GPU (${gpu ? 'skipped: a GPU is present' : status.reason ?? 'no GPU'})`, () => {
  it('says so on one line and exits 3', () => {
    const r = cli(['bench', '--shapes', '64x64', '--m', '1']);
    expect(r.code).toBe(3);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/bench needs a CUDA GPU/);
  });
});

describe.skipIf(!gpu)(`bench on the GPU (${gpu ? status.name ?? 'CUDA device' : `skipped: ${status.reason ?? 'no GPU'}`})`, () => {
  it('--json: one document, a row per shape and M, consistent numbers', () => {
    const r = cli(['bench', '--shapes', '256x512,200x128', '--m', '1,17', '--iters', '5', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as { copy_gbs: number; rows: { n: number; m: number; ours_us: number; weight_gbs: number; weight_bytes: number }[] };
    expect(doc.copy_gbs).toBeGreaterThan(0);
    expect(doc.rows.map((x) => `${x.n}/${x.m}`)).toEqual(['256/1', '256/17', '200/1', '200/17']);
    for (const row of doc.rows) {
      expect(row.ours_us).toBeGreaterThan(0);
      expect(row.weight_gbs).toBeCloseTo(row.weight_bytes / (row.ours_us * 1e3), 6);
    }
  });
});
