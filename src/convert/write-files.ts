// The non-tensor files of the output: config.json with the Marlin quantization_config, the
// shard index, the model's other files copied unchanged, and the manifest.
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Checkpoint } from '../checkpoint/model-dir.js';
import { INDEX_FILE } from '../checkpoint/model-dir.js';
import type { Flavour } from '../checkpoint/flavour.js';
import { tensorBytes, type Plan } from '../plan/plan.js';
import { VERSION } from '../version.js';
import type { LayerRecord } from './metadata.js';

export const MANIFEST_FILE = 'marlin_fp4_manifest.json';

/**
 * hf_quant_config.json makes loaders treat a directory as ModelOpt NVFP4, which the output no
 * longer is; its content is kept inside config.json's original_quantization_config.
 */
const DROPPED = new Set(['config.json', 'hf_quant_config.json', INDEX_FILE, MANIFEST_FILE]);

const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;

export function marlinQuantConfig(plan: Plan, flavour: Flavour): Record<string, unknown> {
  return {
    quant_method: 'marlin_fp4',
    layout: plan.layout,
    activation_dtype: plan.dtype,
    group_size: 16,
    source_format: flavour.kind === 'modelopt' ? 'modelopt-nvfp4' : 'compressed-tensors-nvfp4',
    original_quantization_config: flavour.original,
  };
}

export async function writeConfig(ckpt: Checkpoint, plan: Plan, flavour: Flavour, outDir: string): Promise<void> {
  const config = { ...ckpt.config, quantization_config: marlinQuantConfig(plan, flavour) };
  await writeFile(join(outDir, 'config.json'), json(config));
}

export async function copyOtherFiles(ckpt: Checkpoint, outDir: string): Promise<string[]> {
  const copied: string[] = [];
  for (const rel of ckpt.otherFiles) {
    if (DROPPED.has(rel)) continue;
    await mkdir(dirname(join(outDir, rel)), { recursive: true });
    await copyFile(join(ckpt.dir, rel), join(outDir, rel));
    copied.push(rel);
  }
  return copied;
}

export async function writeIndex(plan: Plan, outDir: string): Promise<void> {
  const weightMap: Record<string, string> = {};
  let total = 0;
  const entries = plan.shards.flatMap((s) => s.tensors.map((t) => [t.name, s.file, tensorBytes(t)] as const));
  entries.sort((a, b) => (a[0] < b[0] ? -1 : 1));
  for (const [name, file, bytes] of entries) {
    weightMap[name] = file;
    total += bytes;
  }
  await writeFile(join(outDir, INDEX_FILE), json({ metadata: { total_size: total }, weight_map: weightMap }));
}

export interface ManifestFile {
  name: string;
  bytes: number;
  /** Absent when convert ran with --no-checksums. */
  sha256?: string;
}

export interface Manifest {
  format_version: 1;
  tool: { name: 'marlin-fp4'; version: string };
  source: { path: string; format: string; shards: ManifestFile[] };
  layout: string;
  activation_dtype: string;
  layers: LayerRecord[];
  ignored_modules: string[];
  /** Every file of the output but this manifest. */
  files: ManifestFile[];
}

export async function writeManifest(
  ckpt: Checkpoint,
  plan: Plan,
  flavour: Flavour,
  layers: LayerRecord[],
  files: ManifestFile[],
  sourceShards: ManifestFile[],
  outDir: string,
): Promise<Manifest> {
  const byName = (a: ManifestFile, b: ManifestFile) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  const manifest: Manifest = {
    format_version: 1,
    tool: { name: 'marlin-fp4', version: VERSION },
    source: { path: ckpt.dir, format: flavour.kind, shards: [...sourceShards].sort(byName) },
    layout: plan.layout,
    activation_dtype: plan.dtype,
    layers,
    ignored_modules: plan.ignored,
    files: [...files].sort(byName),
  };
  await writeFile(join(outDir, MANIFEST_FILE), json(manifest));
  return manifest;
}
