// One rule per value class, applied by convert and checked by verify the same way (issue 15):
// −0 block scales, NaN / infinite / negative input scales, the stored global scale's overflow
// and underflow in every layout × dtype, and conflicting quantization declarations.
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, editJson, f32Scalar, MODELS, mutateModel, tempDir } from './helpers/models.js';

const LLAMA = join(MODELS, 'llama-tiny-modelopt');
const CT = join(MODELS, 'llama-tiny-ct');
let work: string;
beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('−0 block scales', () => {
  it('convert stores them as 0 and verify passes, under both layouts', async () => {
    const model = join(work, 'negzero');
    let first = true;
    await mutateModel(LLAMA, model, (name, t) => {
      if (!first || !name.endsWith('.weight_scale')) return t;
      first = false;
      const data = Buffer.from(t.data);
      data.fill(0x80, 0, 7); // a few −0 scales, first row
      return { ...t, data };
    });
    for (const layout of ['v2', 'v1']) {
      const out = join(work, `negzero-${layout}`);
      const c = cli(['convert', model, '-o', out, '--layout', layout, '--dtype', 'float16', '-q']);
      expect(c.code, c.stderr).toBe(0);
      const v = cli(['verify', out, '-q']);
      expect(v.code, v.stdout + v.stderr).toBe(0);
    }
  });
});

describe('input scales: a finite number >= 0, in convert and verify alike', () => {
  for (const [flavour, src, tensor, value, shown] of [
    ['modelopt', LLAMA, 'input_scale', NaN, 'NaN'],
    ['modelopt', LLAMA, 'input_scale', Infinity, 'Infinity'],
    ['modelopt', LLAMA, 'input_scale', -0.5, '-0.5'],
    ['compressed-tensors', CT, 'input_global_scale', 0, '0 \\(input_scale = 1 / 0 = Infinity\\)'],
  ] as const) {
    it(`${flavour} ${tensor} ${value}: convert exits 2, and verify against that source exits 2 with the same line`, async () => {
      const bad = join(work, `input-${flavour}-${value}`);
      await mutateModel(src, bad, (name, t) => (name.endsWith(`.${tensor}`) ? f32Scalar(value) : t));
      const c = cli(['convert', bad, '-o', `${bad}-out`, '-q']);
      expect(c.code).toBe(2);
      expect(c.stderr).toMatch(new RegExp(`^error: .*: tensor [\\w.]+\\.${tensor}: input scale ${shown} is not a finite number >= 0\\n$`));
      expect(existsSync(`${bad}-out`)).toBe(false);
      const good = join(work, `input-${flavour}-${value}-good`);
      expect(cli(['convert', src, '-o', good, '-q']).code).toBe(0);
      const v = cli(['verify', good, '--source', bad, '-q']);
      expect(v.code).toBe(2);
      expect(v.stderr).toBe(c.stderr);
    });
  }
});

describe('the stored global scale: overflow and underflow are errors in every layout × dtype, for convert and verify', () => {
  // weight_scale_2 -> whether each (layout, dtype) can store it: v1 rounds it to the activation
  // dtype first (float16 underflows below 6e-8), then scales it by
  // 2^(bias-7) (2^7 for float16, 2^119 for bfloat16); v2 stores ws2 * 2^(bias-7) / sf in float32.
  const cases: [number, Record<string, RegExp | null>][] = [
    [1e-9, { 'v1 float16': /underflows float16 to 0/, 'v1 bfloat16': null, 'v2 float16': null, 'v2 bfloat16': null }],
    // A subnormal float32 weight_scale_2 is refused in every layout (the outputs would underflow).
    [1e-44, { 'v1 float16': /is a subnormal float32/, 'v1 bfloat16': /is a subnormal float32/, 'v2 float16': /is a subnormal float32/, 'v2 bfloat16': /is a subnormal float32/ }],
    [1e30, { 'v1 float16': /overflows float16/, 'v1 bfloat16': /overflows bfloat16/, 'v2 float16': null, 'v2 bfloat16': /overflows float32/ }],
  ];
  for (const [ws2, expected] of cases) {
    it(`weight_scale_2 = ${ws2}`, async () => {
      const bad = join(work, `ws2-${ws2}`);
      await mutateModel(LLAMA, bad, (name, t) => (name.endsWith('.weight_scale_2') ? f32Scalar(ws2) : t));
      for (const [combo, error] of Object.entries(expected)) {
        const [layout, dtype] = combo.split(' ') as [string, string];
        const out = join(work, `ws2-${ws2}-${layout}-${dtype}`);
        const c = cli(['convert', bad, '-o', out, '--layout', layout, '--dtype', dtype, '-q']);
        if (error === null) {
          expect(c.code, `${combo}: ${c.stderr}`).toBe(0);
          expect(cli(['verify', out, '-q']).code, combo).toBe(0);
          continue;
        }
        expect(c.code, combo).toBe(2);
        expect(c.stderr, combo).toMatch(error);
        expect(c.stderr, combo).toMatch(/^error: .*model\.safetensors: tensor [\w.]+\.weight_scale_2: /);
        // verify of a good conversion against this source reports the same line.
        const good = `${out}-good`;
        expect(cli(['convert', LLAMA, '-o', good, '--layout', layout, '--dtype', dtype, '-q']).code).toBe(0);
        const v = cli(['verify', good, '--source', bad, '-q']);
        expect(v.code, combo).toBe(2);
        expect(v.stderr, combo).toBe(c.stderr);
      }
    });
  }
});

describe('conflicting quantization declarations', () => {
  it('config.json GPTQ with hf_quant_config.json NVFP4 is an error naming both files', async () => {
    const model = join(work, 'conflict');
    await mutateModel(LLAMA, model, (_, t) => t);
    await editJson(join(model, 'config.json'), (c) => {
      c.quantization_config = { quant_method: 'gptq', bits: 4, group_size: 128 };
    });
    const r = cli(['convert', model, '-o', join(work, 'conflict-out')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `error: ${join(model, 'config.json')} declares quant_method gptq but ${join(model, 'hf_quant_config.json')} declares quant_algo NVFP4: ` +
        'conflicting quantization declarations (remove the one that is wrong)\n',
    );
    const i = cli(['inspect', model, '--json']);
    expect(i.code).toBe(0);
    expect(i.stdout).toMatch(/config\.json declares quant_method gptq but hf_quant_config\.json declares quant_algo NVFP4/);
  });

  it('quant_algo NVFP4 in config.json but MXFP4 in hf_quant_config.json too', async () => {
    const model = join(work, 'conflict-algo');
    await mutateModel(LLAMA, model, (_, t) => t);
    await editJson(join(model, 'hf_quant_config.json'), (c) => {
      (c.quantization as Record<string, unknown>).quant_algo = 'MXFP4';
    });
    const r = cli(['convert', model, '-o', join(work, 'conflict-algo-out')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/config\.json declares quant_algo NVFP4 but .*hf_quant_config\.json declares quant_algo MXFP4/);
  });
});
