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
