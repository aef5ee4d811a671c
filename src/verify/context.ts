// The state one verify run shares between its steps: the two checkpoints, the plan convert
// would make from the source (verify's expectations), the options, the buffers and GEMM
// engine the steps use, and the findings so far.
import type { Checkpoint } from '../checkpoint/model-dir.js';
import type { BufferPool } from '../convert/buffer-pool.js';
import type { SourceFlavour } from '../convert/write-files.js';
import type { Manifest } from '../format/manifest.js';
import type { OutputTensor, Plan } from '../plan/plan.js';
import type { ActDtype, Backend, LayoutVersion } from '../transform/marlin.js';
import type { CheckName } from './checks.js';
import type { GemmEngine } from './gemm.js';
import type { VerifyOptions } from './report.js';
import type { StageTimes } from './stage-times.js';

export interface VerifyContext {
  /** The converted directory and checkpoint. */
  dir: string;
  out: Checkpoint;
  /** The NVFP4 source directory and checkpoint. */
  sourceDir: string;
  src: Checkpoint;
  /** The source's flavour (NVFP4 or MXFP4), for the config.json convert writes. */
  flavour: SourceFlavour;
  /** Whether the user named the source (--source) rather than taking the manifest's. */
  sourceNamed: boolean;
  manifest: Manifest;
  /** What convert makes of the source under the converted directory's layout and dtype. */
  plan: Plan;
  /** The plan's output tensors by name. */
  outputs: Map<string, OutputTensor>;
  layout: LayoutVersion;
  dtype: ActDtype;
  backend: Backend;
  checks: Set<CheckName>;
  engine: GemmEngine;
  /** GEMM row counts. */
  ms: number[];
  tolerance: number;
  opts: VerifyOptions;
  /** Reused (on the GPU: page-locked) buffers for every piece read. */
  pool: BufferPool;
  times: StageTimes;
  /** Problems that belong to no layer, and warnings, in the order found. */
  errors: string[];
  warnings: string[];
  counts: { tensors: number; gemms: number; bytesRead: number };
}
