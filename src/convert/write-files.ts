// The non-tensor files of the output: config.json with the Marlin quantization_config, the
// shard index, the model's other files copied unchanged, and the manifest.
import { createWriteStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { fileError } from '../errors.js';
import { openRegularFile } from '../safetensors/io.js';
import { dirname, join } from 'node:path';
import type { Checkpoint } from '../checkpoint/model-dir.js';
import { INDEX_FILE } from '../checkpoint/model-dir.js';
import type { Convertible } from '../checkpoint/flavour.js';
import { tensorBytes, type Plan } from '../plan/plan.js';
import { buildManifest, MANIFEST_FILE, type HubProvenance, type Manifest, type ManifestFile } from '../format/manifest.js';
import { marlinQuantConfig } from '../format/quant-config.js';
import type { LayerRecord } from '../format/records.js';
import { fusedGroupRecord } from '../plan/records.js';
import { CARD_FILE, SOURCE_CARD_FILE } from './model-card.js';

/**
 * hf_quant_config.json makes loaders treat a directory as ModelOpt NVFP4, which the output no
 * longer is; its content is kept inside config.json's original_quantization_config. README.md
 * becomes our model card, the source's kept as SOURCE_MODEL_CARD.md (model-card.ts).
 */
const DROPPED = new Set(['config.json', 'hf_quant_config.json', INDEX_FILE, MANIFEST_FILE, CARD_FILE, SOURCE_CARD_FILE]);

const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;

/** The source flavour's kind and original quantization config (NVFP4 or MXFP4). */
export type SourceFlavour = Pick<Convertible['flavour'], 'kind' | 'original'> & { algo?: string; layers?: Record<string, Record<string, unknown>> };

/** The output's config.json: the source's, with the Marlin quantization_config (verify compares with it). */
export function convertedConfig(ckpt: Checkpoint, plan: Plan, flavour: SourceFlavour): Record<string, unknown> {
  return {
    ...ckpt.config,
    quantization_config: marlinQuantConfig({
      layout: plan.layout,
      dtype: plan.dtype,
      scheme: plan.scheme,
      source: flavour.kind,
      algo: flavour.algo,
      layers: flavour.layers,
      original: flavour.original,
      fusedGroups: plan.groups.map((g) => g.members.map((m) => m.source.prefix)),
    }),
  };
}

export async function writeConfig(ckpt: Checkpoint, plan: Plan, flavour: SourceFlavour, outDir: string): Promise<void> {
  await writeFile(join(outDir, 'config.json'), json(convertedConfig(ckpt, plan, flavour)));
}

/** The model's other files that convert copies unchanged (relative paths). */
export function copiedFiles(ckpt: Checkpoint): string[] {
  return ckpt.otherFiles.filter((rel) => !DROPPED.has(rel));
}

/**
 * Copies the model's other files. Each is read through a descriptor opened without blocking
 * and without following a link (its real path, checked to lie inside the model when the
 * directory was listed) and verified to be a regular file, so what is copied is what was
 * checked. Errors name the file in the final directory `finalDir`, not the staging one.
 */
export async function copyOtherFiles(ckpt: Checkpoint, outDir: string, finalDir: string): Promise<string[]> {
  const copied: string[] = [];
  for (const rel of copiedFiles(ckpt)) {
    const { handle } = await openRegularFile(join(ckpt.dir, rel), { realPath: ckpt.realPaths.get(rel), noFollow: true });
    try {
      await mkdir(dirname(join(outDir, rel)), { recursive: true });
      await pipeline(handle.createReadStream({ autoClose: false }), createWriteStream(join(outDir, rel), { flags: 'wx' }));
    } catch (e) {
      throw fileError(join(finalDir, rel), 'write', e, 'output');
    } finally {
      await handle.close();
    }
    copied.push(rel);
  }
  return copied;
}

/** Whether convert writes model.safetensors.index.json for this source and plan. */
export function writesIndex(ckpt: Checkpoint, plan: Plan): boolean {
  return ckpt.sharded || plan.shards.length > 1;
}

/** The output's shard index (verify compares with it). */
export function convertedIndex(plan: Plan): { metadata: { total_size: number }; weight_map: Record<string, string> } {
  const weightMap: Record<string, string> = {};
  let total = 0;
  const entries = plan.shards.flatMap((s) => s.tensors.map((t) => [t.name, s.file, tensorBytes(t)] as const));
  entries.sort((a, b) => (a[0] < b[0] ? -1 : 1));
  for (const [name, file, bytes] of entries) {
    weightMap[name] = file;
    total += bytes;
  }
  return { metadata: { total_size: total }, weight_map: weightMap };
}

export async function writeIndex(plan: Plan, outDir: string): Promise<void> {
  await writeFile(join(outDir, INDEX_FILE), json(convertedIndex(plan)));
}

export async function writeManifest(
  ckpt: Checkpoint,
  plan: Plan,
  flavour: SourceFlavour,
  layers: LayerRecord[],
  files: ManifestFile[],
  sourceShards: ManifestFile[],
  outDir: string,
  hub?: HubProvenance,
): Promise<Manifest> {
  const manifest = buildManifest({
    source: { path: ckpt.dir, format: flavour.kind, ...(hub ? { hub } : {}), shards: sourceShards },
    layout: plan.layout,
    dtype: plan.dtype,
    layers,
    fusedGroups: plan.groups.map(fusedGroupRecord),
    ignored: plan.ignored,
    files,
  });
  await writeFile(join(outDir, MANIFEST_FILE), json(manifest));
  return manifest;
}
