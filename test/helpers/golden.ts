// Access to the golden vectors committed under fixtures/golden (a copy of ../shared/golden).
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SafetensorsReader } from '../../src/safetensors/index.js';

export const GOLDEN_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'fixtures', 'golden');

export interface GoldenFile {
  reader: SafetensorsReader;
  cases: Record<string, Record<string, unknown>>;
  bytes(name: string): Promise<Buffer>;
  shape(name: string): number[];
  has(name: string): boolean;
  f32(name: string): Promise<number>;
}

export async function openGolden(file: string): Promise<GoldenFile> {
  const reader = await SafetensorsReader.open(join(GOLDEN_DIR, file));
  const cases = JSON.parse(reader.header.metadata.cases ?? '{}') as GoldenFile['cases'];
  return {
    reader,
    cases,
    bytes: (name) => reader.read(name),
    shape: (name) => reader.entry(name).shape,
    has: (name) => reader.has(name),
    f32: async (name) => (await reader.read(name)).readFloatLE(0),
  };
}

export const DTYPES = [
  ['float16', 'f16'],
  ['bfloat16', 'bf16'],
] as const;

/** The two stacks of a golden MoE case, with loaders for their per-expert inputs. */
export function goldenMoeStacks(moe: GoldenFile, c: string, info: Record<string, unknown>) {
  const E = info.E as number;
  const H = info.hidden as number;
  const I = info.intermediate as number;
  const stacks = [
    { S: 'w13', projs: ['gate_proj', 'up_proj'], N: I, K: H },
    { S: 'w2', projs: ['down_proj'], N: H, K: I },
  ] as const;
  return stacks.map((st) => ({
    ...st,
    E,
    H,
    I,
    /** experts[e][part] bytes of `weight` or `weight_scale`. */
    load: async (what: string): Promise<Buffer[][]> => {
      const out: Buffer[][] = [];
      for (let e = 0; e < E; e++) out.push(await Promise.all(st.projs.map((p) => moe.bytes(`${c}.experts.${e}.${p}.${what}`))));
      return out;
    },
    /** Each expert's global scale (gate's for w13). */
    globals: async (): Promise<number[]> => {
      const out: number[] = [];
      for (let e = 0; e < E; e++) out.push(await moe.f32(`${c}.experts.${e}.${st.projs[0]}.weight_scale_2`));
      return out;
    },
  }));
}

/**
 * All three golden files, opened at import time (vitest collects tests before beforeAll runs,
 * so the case lists must be known then); close() goes in the suite's afterAll.
 */
export async function openAllGolden() {
  const dense: Record<string, GoldenFile> = {
    'dense_small.safetensors': await openGolden('dense_small.safetensors'),
    'dense_large.safetensors': await openGolden('dense_large.safetensors'),
  };
  const moe = await openGolden('moe.safetensors');
  return {
    dense,
    moe,
    close: async () => {
      for (const g of [...Object.values(dense), moe]) await g.reader.close();
    },
  };
}
