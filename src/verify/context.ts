// The state one verify run shares between its steps: the two checkpoints, the plan convert
// would make from the source (verify's expectations), the options, and the findings so far.
import type { Checkpoint } from '../checkpoint/model-dir.js';
import type { Manifest } from '../format/manifest.js';
import type { OutputTensor, Plan } from '../plan/plan.js';
import type { ActDtype, Backend, LayoutVersion } from '../transform/marlin.js';
import type { VerifyOptions } from './report.js';

export interface VerifyContext {
  /** The converted directory and checkpoint. */
  dir: string;
  out: Checkpoint;
  /** The NVFP4 source directory and checkpoint. */
  sourceDir: string;
  src: Checkpoint;
  manifest: Manifest;
  /** What convert makes of the source under the converted directory's layout and dtype. */
  plan: Plan;
  /** The plan's output tensors by name. */
  outputs: Map<string, OutputTensor>;
  layout: LayoutVersion;
  dtype: ActDtype;
  backend: Backend;
  /** GEMM row counts. */
  ms: number[];
  tolerance: number;
  opts: VerifyOptions;
  /** Problems that belong to no layer, and warnings, in the order found. */
  errors: string[];
  warnings: string[];
  counts: { tensors: number; gemms: number };
}
