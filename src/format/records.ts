// What the output records about each converted module, and where: every shard's safetensors
// __metadata__ carries, under `marlin_fp4`, a JSON string with the layout, the activation dtype
// and the records of the modules whose tensors it holds; the manifest holds all records.
// Plain data only (no timestamps), so outputs are byte-identical across runs.
import type { ActDtype, LayoutVersion } from '../transform/marlin.js';
import type { ModuleKind } from './tensors.js';
import type { Scheme } from './quant-config.js';

export interface LayerRecord {
  name: string;
  kind: ModuleKind;
  layout: string;
  activation_dtype: string;
  n: number;
  k: number;
  np: number;
  kp: number;
  sf: number;
  experts?: number;
  hidden?: number;
  intermediate?: number;
  /**
   * MoE stacks: true for gate+up experts (w13 = gate then up), false for non-gated ones
   * (w13 = up alone, N = Ip: FORMAT.md section 6.2). A loader picks the activation by it.
   */
  gated?: boolean;
  /** Block scales layout v2 set to 0. */
  zeroed_scales: number;
  /** Block scales below 2^-6: decoded wrongly by v1's bfloat16 kernel. */
  subnormal_scales: number;
  /** MXFP4 layers only (absent: NVFP4, so that NVFP4 records stay as they were). */
  scheme?: Scheme;
  /** With scheme: weights per scale along K (32 for MXFP4). */
  group_size?: number;
  /** With scheme: whether the stack carries a bias (`Q_bias`, gpt-oss). */
  bias?: boolean;
  /** gpt-oss w13: gate and up rows interleaved (row 2j gate j, 2j+1 up j), as the checkpoint has them. */
  interleaved?: boolean;
  /** The fused group a dense linear belongs to (its sf and global scale are the group's). */
  fused_group?: string;
  /** Present where block scales were re-encoded onto a shared global scale (FORMAT.md section 8.1). */
  reencoded?: ReencodeRecord;
}

/** Block scales re-encoded onto a fused group's shared global scale (FORMAT.md section 8.1). */
export interface ReencodeRecord {
  /** Non-zero block scales re-encoded. */
  scales: number;
  /** Of those, the ones whose value (scale × global) changed: the E4M3 rounding was inexact. */
  changed: number;
  /** Of those, the ones that became 0. */
  underflowed: number;
  /** Largest relative change of a dequantized weight (1 where a scale became 0). */
  max_relative_change: number;
  /** A dense linear's own global scale, and the group's shared one it is stored with. */
  source_global?: number;
  shared_global?: number;
  /** An MoE w13 stack: the experts whose gate and up global scales differ. */
  experts?: number;
}

/** A fused group as the manifest lists it (FORMAT.md section 8). */
export interface FusedGroupRecord {
  /** The fused module vLLM would hold (`….qkv_proj`, `….gate_up_proj`). */
  name: string;
  /** The parts' prefixes in concatenation order along N. */
  members: string[];
  /** The global scale every part is stored with (the largest of the parts'). */
  shared_global: number;
  sf: number;
  /** Concatenating the parts' tensors along N gives exactly the fused layer's Marlin tensors. */
  concatenable: boolean;
}

/** A record as read back from a file someone may have edited: only name and kind are sure. */
export type ReadRecord = Partial<Omit<LayerRecord, 'name' | 'kind'>> & { name: string; kind: string };

/** The __metadata__ key holding the marlin-fp4 JSON. */
export const SHARD_METADATA_KEY = 'marlin_fp4';
export const FORMAT_VERSION = 1;

/** A shard's safetensors __metadata__ (string values only, as safetensors wants). */
export function shardMetadata(layout: LayoutVersion, dtype: ActDtype, layers: LayerRecord[]): Record<string, string> {
  return {
    format: 'pt',
    [SHARD_METADATA_KEY]: JSON.stringify({ format_version: FORMAT_VERSION, layout, activation_dtype: dtype, layers }),
  };
}

export const isReadRecord = (v: unknown): v is ReadRecord =>
  typeof v === 'object' && v !== null && typeof (v as ReadRecord).name === 'string' && typeof (v as ReadRecord).kind === 'string';

export interface ReadShardMetadata {
  layout?: unknown;
  activation_dtype?: unknown;
  /** The well-formed records (objects with a name and a kind). */
  layers: ReadRecord[];
}

/**
 * The marlin-fp4 part of a shard's __metadata__: undefined where the shard has none;
 * a SyntaxError where it is not valid JSON (the caller names the shard).
 */
export function readShardMetadata(metadata: Record<string, string>): ReadShardMetadata | undefined {
  const raw = metadata[SHARD_METADATA_KEY];
  if (raw === undefined) return undefined;
  const meta = JSON.parse(raw) as { layout?: unknown; activation_dtype?: unknown; layers?: unknown } | null;
  if (typeof meta !== 'object' || meta === null) throw new SyntaxError('not a JSON object');
  const layers = Array.isArray(meta.layers) ? meta.layers.filter(isReadRecord) : [];
  return { layout: meta.layout, activation_dtype: meta.activation_dtype, layers };
}
