// The non-tensor files of the output: config.json with the Marlin quantization_config, the
// shard index, the model's other files copied unchanged, and the manifest.
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Checkpoint } from '../checkpoint/model-dir.js';
import { INDEX_FILE } from '../checkpoint/model-dir.js';
import type { Flavour } from '../checkpoint/flavour.js';
import { tensorBytes, type Plan } from '../plan/plan.js';
import { buildManifest, MANIFEST_FILE, type Manifest, type ManifestFile } from '../format/manifest.js';
import { marlinQuantConfig } from '../format/quant-config.js';
import type { LayerRecord } from '../format/records.js';

/**
 * hf_quant_config.json makes loaders treat a directory as ModelOpt NVFP4, which the output no
 * longer is; its content is kept inside config.json's original_quantization_config.
 */
const DROPPED = new Set(['config.json', 'hf_quant_config.json', INDEX_FILE, MANIFEST_FILE]);

const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;

export async function writeConfig(ckpt: Checkpoint, plan: Plan, flavour: Flavour, outDir: string): Promise<void> {
  const config = { ...ckpt.config, quantization_config: marlinQuantConfig({ layout: plan.layout, dtype: plan.dtype, source: flavour.kind, original: flavour.original }) };
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

export async function writeManifest(
  ckpt: Checkpoint,
  plan: Plan,
  flavour: Flavour,
  layers: LayerRecord[],
  files: ManifestFile[],
  sourceShards: ManifestFile[],
  outDir: string,
): Promise<Manifest> {
  const manifest = buildManifest({
    source: { path: ckpt.dir, format: flavour.kind, shards: sourceShards },
    layout: plan.layout,
    dtype: plan.dtype,
    layers,
    ignored: plan.ignored,
    files,
  });
  await writeFile(join(outDir, MANIFEST_FILE), json(manifest));
  return manifest;
}
