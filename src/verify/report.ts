// What `marlin-fp4 verify` is asked (VerifyOptions) and what it answers (VerifyReport): the
// shapes the CLI prints and `--json` emits. Types only.
import type { LayerRecord } from '../format/records.js';
import type { CheckName } from './checks.js';
import type { ActDtype, Backend, DeviceChoice, LayoutVersion } from '../transform/marlin.js';

export interface VerifyOptions {
  /** The converted directory (default: the current directory). */
  dir?: string;
  /** The NVFP4 source (default: the path the manifest records). */
  source?: string;
  /** GEMM row counts (default 1, 16, 128). */
  m?: number[];
  /** Bound on the per-column error of the GEMM check (default: the GEMM engine's, 1e-4 for the float32 engines). */
  tolerance?: number;
  /** Which checks run (default all): integrity, structure, gemm. */
  checks?: string | readonly string[];
  /** Which layers get GEMMs: 'all', a count N (a deterministic, evenly spread sample), or a regex on the layer name. */
  layers?: string;
  /** MoE experts per stack that get GEMMs: a count (evenly spread sample) or 'all' (default 4). */
  experts?: number | 'all';
  /** Where the GEMMs and inverse transforms run (default auto). */
  device?: DeviceChoice;
  threads?: number;
  /** Skip the byte comparison of copied (unquantized) tensors. */
  skipCopied?: boolean;
  /** Whether `source` was named by the user (--source): a source other than the manifest's is then a warning, not an error. */
  sourceNamed?: boolean;
  onProgress?(p: { done: number; total: number; layer: string; stage: 'structure' | 'gemm' }): void;
}

export interface GemmCheck {
  m: number;
  expert?: number;
  /** gate / up / down for MoE stacks. */
  part?: string;
  /** The largest per-column error (see gemm.ts columnErrors): what is judged against the tolerance. */
  rel_err: number;
  /** The output column (of this part) where rel_err was found. */
  worst_column?: number;
  max_abs_err: number;
  /** The whole-matrix relative Frobenius error (information). */
  frobenius_rel_err?: number;
  /** Only where v2 zeroed scales or scales were re-encoded: the error against the source's exact weights (information). */
  rel_err_vs_exact?: number;
  pass: boolean;
  error?: string;
}

/** A converted module as convert recorded it (name, kind, shapes, sf), with verify's findings. */
export interface LayerReport extends Pick<LayerRecord, 'name' | 'kind' | 'n' | 'k' | 'np' | 'kp' | 'sf' | 'experts'> {
  /** Structural problems (empty when the layer is byte-exact). */
  errors: string[];
  /** Block scales v2 set to 0 (expected differences, data lost by the format). */
  zeroed_scales: number;
  /** The fused group a dense linear belongs to. */
  fused_group?: string;
  /**
   * Where block scales were re-encoded onto a shared global (FORMAT.md section 8.1): the largest
   * relative change of a dequantized weight found against the source (within the bound, or an error).
   */
  reencoded_max_relative_change?: number;
  /** Absent when the layer was not selected for GEMMs. */
  gemm?: GemmCheck[];
  /** Worst relative error per M over the layer's GEMMs. */
  worst?: { m: number; rel_err: number; max_abs_err: number }[];
  pass: boolean;
}

/** The source verified against, with the checksums of its shards (computed by this run). */
export interface SourceReport {
  path: string;
  /** Named with --source (else the manifest's path). */
  named: boolean;
  /** The path the manifest records. */
  recorded_path: string | null;
  /** Whether the shards are the ones the manifest records (null: it records none). */
  matches_manifest: boolean | null;
  shards: { name: string; bytes: number; sha256: string }[];
}

export interface VerifyReport {
  converted: string;
  source: string;
  /** Present when the integrity check ran. */
  source_files?: SourceReport;
  checks: CheckName[];
  layout: LayoutVersion;
  activation_dtype: ActDtype;
  device: Backend;
  /** What the reference GEMM multiplies with: cpu, cublas (…), cuda-kernel (…). */
  reference_engine: string;
  m: number[];
  tolerance: number;
  layers_checked: number;
  layers_gemm: number;
  tensors_checked: number;
  copied_checked: number;
  gemms: number;
  layers: LayerReport[];
  /** Problems that belong to no layer (missing layers, copied tensors, metadata). */
  errors: string[];
  warnings: string[];
  failed_layers: string[];
  passed: boolean;
  seconds: number;
  /** Seconds per stage, summed over the lanes that run side by side (see stage-times.ts). */
  stages: Record<string, number>;
  /** Bytes of tensors and files read by the checks (hashing not counted). */
  bytes_read: number;
  peak_rss_bytes: number;
}
