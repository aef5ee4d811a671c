// Converts every committed fixture (both flavours, dense and MoE, single file and sharded)
// through the CLI and checks each output tensor against the core transforms and inverses.
import { existsSync } from 'node:fs';
import { cp, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  decodeScales,
  linearShape,
  moePaddedIntermediate,
  processGlobalScale,
  repackWeight,
  unpackWeight,
  type LinearShape,
} from '../src/transform/marlin.js';
import { readHeader } from '../src/safetensors/index.js';
import { expectBytes } from './helpers/bytes.js';
import { cli, MODELS, readModel, tempDir, type TensorData } from './helpers/models.js';

const FIXTURES = ['llama-tiny-modelopt', 'llama-tiny-ct', 'qwen3-moe-tiny-modelopt', 'qwen3-moe-tiny-ct'];
let work: string;

beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const f32 = (t: TensorData) => t.data.readFloatLE(0);

interface SourceLinear {
  prefix: string;
  weight: TensorData;
  scale: TensorData;
  ws2: number;
  input?: number;
}

/** The NVFP4 linears of a source model, with compressed-tensors' reciprocals undone. */
function sourceLinears(src: Map<string, TensorData>): Map<string, SourceLinear> {
  const out = new Map<string, SourceLinear>();
  for (const [name, t] of src) {
    const m = /^(.*)\.(weight|weight_packed)$/.exec(name);
    if (!m || t.dtype !== 'U8') continue;
    const p = m[1]!;
    const ct = m[2] === 'weight_packed';
    const g = src.get(`${p}.${ct ? 'weight_global_scale' : 'weight_scale_2'}`)!;
    const i = src.get(`${p}.${ct ? 'input_global_scale' : 'input_scale'}`);
    out.set(p, {
      prefix: p,
      weight: t,
      scale: src.get(`${p}.weight_scale`)!,
      ws2: ct ? Math.fround(1 / f32(g)) : f32(g),
      input: i && (ct ? Math.fround(1 / f32(i)) : f32(i)),
    });
  }
  return out;
}

describe.each(FIXTURES)('convert %s', (fixture) => {
  let src: Map<string, TensorData & { file: string }>;
  let out: string;
  let got: Map<string, TensorData & { file: string }>;
  let result: ReturnType<typeof cli>;

  beforeAll(async () => {
    src = await readModel(join(MODELS, fixture));
    out = join(work, fixture);
    result = cli(['convert', join(MODELS, fixture), '-o', out, '--json']);
    got = await readModel(out);
  });

  it('succeeds with a JSON report and no warnings', () => {
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const report = JSON.parse(result.stdout);
    expect(report.output).toBe(out);
    expect(report.layout).toBe('v2');
    expect(report.activation_dtype).toBe('bfloat16');
    expect(report.flavour).toBe(fixture.endsWith('-ct') ? 'compressed-tensors' : 'modelopt');
    expect(report.tensors).toBe(got.size);
  });

  it('dense linears: weight and scales equal the core transforms and decode back to the source', async () => {
    const linears = [...sourceLinears(src).values()].filter((l) => !l.prefix.includes('.experts.'));
    expect(linears.length).toBeGreaterThan(0);
    for (const l of linears) {
      const s = linearShape(l.prefix, 'v2', l.weight.shape, l.scale.shape);
      const w = got.get(`${l.prefix}.weight`)!;
      expect(w.dtype).toBe('I32');
      expect(w.shape).toEqual([s.kp / 16, 2 * s.np]);
      expectBytes(w.data, await repackWeight(l.prefix, l.weight.data, s), `${l.prefix}.weight`);
      expectBytes((await unpackWeight(l.prefix, w.data, s)).weight, l.weight.data, `${l.prefix} unpacked`);
      const sc = got.get(`${l.prefix}.weight_scale`)!;
      expect(sc).toMatchObject({ dtype: 'F8_E4M3', shape: [s.kp / 16, s.np] });
      const meta = JSON.parse((await readHeader(join(out, w.file))).metadata.marlin_fp4!);
      const rec = meta.layers.find((r: { name: string }) => r.name === l.prefix);
      expect(rec).toMatchObject({ kind: 'linear', n: s.n, k: s.k, np: s.np, kp: s.kp, layout: 'v2', activation_dtype: 'bfloat16' });
      expectBytes((await decodeScales(l.prefix, sc.data, s, { layout: 'v2', sf: rec.sf })).scales, l.scale.data, `${l.prefix} scales`);
      expectBytes(got.get(`${l.prefix}.weight_scale_2`)!.data, processGlobalScale(l.prefix, l.ws2, { layout: 'v2', dtype: 'bfloat16', sf: rec.sf }), 'global');
      if (l.input !== undefined) expect(f32(got.get(`${l.prefix}.input_scale`)!)).toBe(l.input);
      for (const suffix of ['weight_packed', 'weight_global_scale', 'input_global_scale']) expect(got.has(`${l.prefix}.${suffix}`)).toBe(false);
    }
  });

  it('MoE experts become stacks whose parts decode back to every expert', async () => {
    const experts = [...sourceLinears(src).values()].filter((l) => l.prefix.includes('.experts.'));
    if (!fixture.startsWith('qwen3')) {
      expect(experts).toEqual([]);
      return;
    }
    const layers = new Set(experts.map((l) => l.prefix.replace(/\.experts\..*$/, '.experts')));
    expect(layers.size).toBe(2);
    const [gate, up, down] = fixture.endsWith('-ct') ? ['w1', 'w3', 'w2'] : ['gate_proj', 'up_proj', 'down_proj'];
    for (const Q of layers) {
      const E = experts.filter((l) => l.prefix.startsWith(`${Q}.`) && l.prefix.endsWith(`.${gate}`)).length;
      const g0 = experts.find((l) => l.prefix === `${Q}.0.${gate}`)!;
      const [I, halfH] = g0.weight.shape as [number, number];
      const H = 2 * halfH;
      const ip = moePaddedIntermediate(I, H, 'v2');
      const w13 = got.get(`${Q}.w13_weight`)!;
      const w2 = got.get(`${Q}.w2_weight`)!;
      expect(w13.shape).toEqual([E, H / 16, 2 * 2 * ip]);
      expect(w2.shape).toEqual([E, ip / 16, 2 * H]);
      expect(got.get(`${Q}.w13_weight_scale`)!.shape).toEqual([E, H / 16, 2 * ip]);
      expect(got.get(`${Q}.w2_weight_scale`)!.shape).toEqual([E, ip / 16, H]);
      expect(got.get(`${Q}.w13_weight_scale_2`)!).toMatchObject({ dtype: 'F32', shape: [E] });
      const meta = JSON.parse((await readHeader(join(out, w13.file))).metadata.marlin_fp4!);
      const sf13 = meta.layers.find((r: { name: string }) => r.name === `${Q}.w13`).sf;
      const sf2 = meta.layers.find((r: { name: string }) => r.name === `${Q}.w2`).sf;
      const part13: LinearShape = { n: I, k: H, np: ip, kp: H };
      const part2: LinearShape = { n: H, k: I, np: H, kp: ip };
      const slab = (t: TensorData, e: number) => t.data.subarray((e * t.data.length) / E, ((e + 1) * t.data.length) / E);
      for (let e = 0; e < E; e++) {
        const get = (r: string) => experts.find((l) => l.prefix === `${Q}.${e}.${r}`)!;
        for (const [i, role] of [gate, up].entries()) {
          const where = { totalNp: 2 * ip, colOffset: i * ip };
          expectBytes((await unpackWeight('w13', slab(w13, e), part13, where)).weight, get(role!).weight.data, `${Q} expert ${e} ${role}`);
          const sc = slab(got.get(`${Q}.w13_weight_scale`)!, e);
          expectBytes((await decodeScales('w13', sc, part13, { layout: 'v2', sf: sf13 }, where)).scales, get(role!).scale.data, `${Q} ${e} ${role} scales`);
        }
        expectBytes((await unpackWeight('w2', slab(w2, e), part2)).weight, get(down!).weight.data, `${Q} expert ${e} down`);
        expectBytes((await decodeScales('w2', slab(got.get(`${Q}.w2_weight_scale`)!, e), part2, { layout: 'v2', sf: sf2 })).scales, get(down!).scale.data, 'down scales');
        expect(got.get(`${Q}.w13_weight_scale_2`)!.data.readFloatLE(4 * e)).toBe((get(gate!).ws2 * 2 ** 119) / sf13);
        expect(got.get(`${Q}.w2_weight_scale_2`)!.data.readFloatLE(4 * e)).toBe((get(down!).ws2 * 2 ** 119) / sf2);
        expect(f32(got.get(`${Q}.${e}.${gate}.input_scale`)!)).toBe(get(gate!).input);
      }
    }
  });

  it('copies every other tensor byte for byte, in the shard it came from', () => {
    const consumed = /\.(weight_scale|weight_scale_2|weight_global_scale|input_scale|input_global_scale|weight_packed)$|\.experts\./;
    const copied = [...src].filter(([name, t]) => !consumed.test(name) && !(t.dtype === 'U8' && name.endsWith('.weight')));
    expect(copied.length).toBeGreaterThan(4);
    for (const [name, t] of copied) {
      const o = got.get(name)!;
      expect(o, name).toBeDefined();
      expect(o.dtype).toBe(t.dtype);
      expect(o.shape).toEqual(t.shape);
      expect(o.file).toBe(t.file);
      expectBytes(o.data, t.data, name);
    }
  });

  it('writes config, index, manifest and the model\'s other files', async () => {
    const files = (await readdir(out)).sort();
    const srcFiles = (await readdir(join(MODELS, fixture))).filter((f) => f !== 'hf_quant_config.json').sort();
    expect(files).toEqual([...srcFiles, 'README.md', 'marlin_fp4_manifest.json'].sort());
    // The model card: what the checkpoint is (the card's own tests are in test/publish.test.ts and test/ci.test.ts).
    const card = await readFile(join(out, 'README.md'), 'utf8');
    expect(card).toContain(`# ${fixture}-marlin\n`);
    expect(card).toContain('| layout | Marlin FP4 v2');
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    const srcConfig = JSON.parse(await readFile(join(MODELS, fixture, 'config.json'), 'utf8'));
    expect(config.quantization_config).toMatchObject({ quant_method: 'marlin_fp4', layout: 'v2', activation_dtype: 'bfloat16', group_size: 16 });
    expect(config.quantization_config.original_quantization_config).toEqual(srcConfig.quantization_config);
    expect({ ...config, quantization_config: null }).toEqual({ ...srcConfig, quantization_config: null });
    for (const f of ['generation_config.json', 'tokenizer_config.json']) {
      expect(await readFile(join(out, f), 'utf8')).toBe(await readFile(join(MODELS, fixture, f), 'utf8'));
    }
    if (existsSync(join(MODELS, fixture, 'model.safetensors.index.json'))) {
      const index = JSON.parse(await readFile(join(out, 'model.safetensors.index.json'), 'utf8'));
      expect(Object.keys(index.weight_map).sort()).toEqual([...got.keys()].sort());
      for (const [name, t] of got) expect(index.weight_map[name]).toBe(t.file);
      expect(index.metadata.total_size).toBe([...got.values()].reduce((a, t) => a + t.data.length, 0));
    }
    const manifest = JSON.parse(await readFile(join(out, 'marlin_fp4_manifest.json'), 'utf8'));
    expect(manifest.source.path).toBe(join(MODELS, fixture));
    expect(manifest.layers.length).toBe(JSON.parse(result.stdout).converted_layers);
  });
});

describe('determinism and defaults', () => {
  it('two runs, and 1 thread vs all threads, give identical bytes', async () => {
    const src = join(MODELS, 'qwen3-moe-tiny-modelopt');
    const a = join(work, 'det-a');
    const b = join(work, 'det-b');
    expect(cli(['convert', src, '-o', a, '-q']).code).toBe(0);
    expect(cli(['convert', src, '-o', b, '-q', '--threads', '1']).code).toBe(0);
    const files = (await readdir(a)).sort();
    expect((await readdir(b)).sort()).toEqual(files);
    for (const f of files) expectBytes(await readFile(join(b, f)), await readFile(join(a, f)), f);
  });

  it('writes to <model>-marlin beside the model by default, and refuses to overwrite it without --force', async () => {
    const model = join(work, 'my-model');
    await cp(join(MODELS, 'llama-tiny-modelopt'), model, { recursive: true });
    const first = cli(['convert', model]);
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(new RegExp(`^converted 14 linear layers .*\\nwrote ${model}-marlin: 1 shard, `));
    expect(existsSync(join(`${model}-marlin`, 'model.safetensors'))).toBe(true);
    const again = cli(['convert', model]);
    expect(again.code).toBe(2);
    expect(again.stderr).toBe(`error: ${model}-marlin: already exists (pass --force to replace it)\n`);
    const forced = cli(['convert', model, '--force', '--layout', 'v1', '--dtype', 'float16', '-q']);
    expect(forced.code).toBe(0);
    expect(forced.stdout).toBe('');
    const config = JSON.parse(await readFile(join(`${model}-marlin`, 'config.json'), 'utf8'));
    expect(config.quantization_config).toMatchObject({ layout: 'v1', activation_dtype: 'float16' });
    expect((await readdir(work)).filter((f) => f.includes('tmp'))).toEqual([]);
  });
});
