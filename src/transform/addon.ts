// Loads the compiled Node-API addon. The path is the same from src/ (tests) and dist/.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativePart {
  data: Uint8Array;
  n: number;
  np?: number;
}

export interface NativeAddon {
  repackWeightStack(experts: NativePart[][], opts: { k: number; kp?: number; out?: Uint8Array }): Promise<Buffer>;
  processScalesStack(
    experts: NativePart[][],
    opts: { k: number; kp?: number; layout: string; dtype: string; sf?: number; out?: Uint8Array },
  ): Promise<{ scales: Buffer; sf: number; zeroed: number }>;
  unpackWeight(
    data: Uint8Array,
    opts: { n: number; np?: number; k: number; kp?: number; rowWords?: number; wordOffset?: number },
  ): Promise<{ weight: Buffer; paddingNonzero: number }>;
  decodeScales(
    data: Uint8Array,
    opts: { n: number; np?: number; k: number; kp?: number; layout: string; sf?: number; totalNp?: number; colOffset?: number },
  ): Promise<{ scales: Buffer; paddingNonzero: number }>;
  scanScales(data: Uint8Array): { maxByte: number; maxValue: number; badIndex: number; badByte: number; histogram: Float64Array };
  scaleFactor(maxByte: number, opts: { layout: string; dtype: string }): number;
  processGlobalScale(ws2: number, opts: { layout: string; dtype: string; sf?: number }): Buffer;
  padShapeV2(n: number, k: number): { np: number; kp: number };
  setThreads(n: number): number;
  backends: string;
}

const here = dirname(fileURLToPath(import.meta.url));
export const ADDON_PATH = join(here, '..', '..', 'native', 'build', 'Release', 'marlin_fp4.node');

let cached: NativeAddon | undefined;

export function addon(): NativeAddon {
  if (cached) return cached;
  if (!existsSync(ADDON_PATH)) {
    throw new Error(`native addon not built (${ADDON_PATH} is missing): run \`npm install\` or \`npm run build:native\``);
  }
  cached = createRequire(import.meta.url)(ADDON_PATH) as NativeAddon;
  const threads = Number(process.env.MARLIN_FP4_THREADS ?? 0);
  if (Number.isInteger(threads) && threads > 0) cached.setThreads(threads);
  return cached;
}
