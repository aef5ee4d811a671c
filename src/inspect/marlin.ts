// inspect on an already-converted (Marlin FP4) checkpoint: its layers from the shards'
// __metadata__.marlin_fp4 (or the manifest), and, under v1 with bfloat16, how many block
// scales sit below 2^-6 — the v1 bfloat16 kernel decodes those wrongly (FORMAT.md §4).
import type { Checkpoint } from '../checkpoint/model-dir.js';
import { readTensor } from '../checkpoint/model-dir.js';
import type { Detected } from '../checkpoint/flavour.js';
import { MANIFEST_FILE } from '../format/manifest.js';
import { isReadRecord, readShardMetadata, SHARD_METADATA_KEY, type ReadRecord } from '../format/records.js';
import { moduleTensorNames, type ModuleKind } from '../format/tensors.js';
import type { Problem } from './problem.js';

export interface MarlinLayers {
  /** Where the layer list came from. */
  from: 'shard metadata' | 'manifest' | 'none';
  layers: number;
  /** Block scales v2 set to 0 at conversion (from the manifest). */
  zeroed_scales?: number;
  /** v1 + bfloat16 only: stored block scales below 2^-6, which the v1 bfloat16 kernel decodes wrongly. */
  subnormal_scales?: { count: number; layers: number; from: 'manifest' | 'scan' };
}

/** Processed (S0E5M3) scale bytes 0x01..0x7F encode values below 2^-6 (FORMAT.md §3 step 5). */
export function countSubnormalProcessed(bytes: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < bytes.length; i++) if (bytes[i]! >= 1 && bytes[i]! <= 0x7f) n++;
  return n;
}

export async function inspectMarlin(
  ckpt: Checkpoint,
  det: Extract<Detected, { format: 'marlin-fp4' }>,
  manifest: Record<string, unknown> | undefined,
  scan: boolean,
): Promise<{
  layers: MarlinLayers;
  dense: { n: number; k: number }[];
  moe: { experts: number; hidden: number; intermediate: number; gated: boolean }[];
  ignored: string[];
  problems: Problem[];
}> {
  const problems: Problem[] = [];
  let records: ReadRecord[] = [];
  let from: MarlinLayers['from'] = 'none';
  for (const reader of ckpt.readers.values()) {
    try {
      const meta = readShardMetadata(reader.header.metadata);
      if (!meta) continue;
      records.push(...meta.layers);
      from = 'shard metadata';
    } catch {
      problems.push({ kind: 'metadata', message: `${reader.header.path}: __metadata__.${SHARD_METADATA_KEY} is not valid JSON` });
    }
  }
  const manifestLayers = Array.isArray(manifest?.layers) ? (manifest.layers as unknown[]).filter(isReadRecord) : undefined;
  if (records.length === 0 && manifestLayers) {
    records = manifestLayers;
    from = 'manifest';
  }
  if (records.length === 0) problems.push({ kind: 'metadata', message: `${ckpt.dir}: no converted layers recorded (neither in the shards' __metadata__.${SHARD_METADATA_KEY} nor in ${MANIFEST_FILE})` });

  const layers: MarlinLayers = { from, layers: records.length };
  if (manifestLayers) layers.zeroed_scales = manifestLayers.reduce((a, r) => a + (r.zeroed_scales ?? 0), 0);
  if (det.layout === 'v1' && det.dtype === 'bfloat16') {
    let count = 0;
    let bad = 0;
    if (manifestLayers && !scan) {
      for (const r of manifestLayers) {
        count += r.subnormal_scales ?? 0;
        if ((r.subnormal_scales ?? 0) > 0) bad++;
      }
      layers.subnormal_scales = { count, layers: bad, from: 'manifest' };
    } else {
      // No manifest (or --scan-scales): count them in the stored scales (1/8 of the weights).
      for (const r of records) {
        const name = moduleTensorNames(r.name, r.kind as ModuleKind).scales;
        if (!ckpt.tensors.has(name)) continue;
        const n = countSubnormalProcessed(await readTensor(ckpt, name));
        count += n;
        if (n > 0) bad++;
      }
      layers.subnormal_scales = { count, layers: bad, from: 'scan' };
    }
    if (count > 0) {
      problems.push({
        kind: 'v1-bfloat16-subnormal',
        layout: 'v1',
        message: `${count} block scales in ${bad} layer${bad === 1 ? '' : 's'} are below 2^-6: the v1 bfloat16 kernel decodes them wrongly (reconvert the NVFP4 source with --layout v2)`,
      });
    }
  }

  const dense = records.filter((r) => r.kind === 'linear' && r.n !== undefined && r.k !== undefined).map((r) => ({ n: r.n!, k: r.k! }));
  const moe = records
    .filter((r) => r.kind === 'moe-w13')
    .map((r) => ({ experts: r.experts ?? 0, hidden: r.hidden ?? r.k ?? 0, intermediate: r.intermediate ?? r.n ?? 0, gated: r.gated !== false }));
  const ignored = Array.isArray(manifest?.ignored_modules) ? (manifest.ignored_modules as unknown[]).filter((x): x is string => typeof x === 'string') : [];
  return { layers, dense, moe, ignored, problems };
}
