// The plan of whatever scheme a checkpoint is: NVFP4 (plan.ts) or MXFP4 (mxfp4.ts). convert
// and verify call this; inspect asks each planner itself.
import type { Checkpoint } from '../checkpoint/model-dir.js';
import type { Convertible } from '../checkpoint/flavour.js';
import { planConversion, type Plan, type PlanOptions } from './plan.js';
import { planMxfp4 } from './mxfp4.js';

export async function planSource(ckpt: Checkpoint, source: Convertible, opts: PlanOptions): Promise<Plan> {
  return source.scheme === 'mxfp4' ? planMxfp4(ckpt, source.flavour, opts) : planConversion(ckpt, source.flavour, opts);
}
