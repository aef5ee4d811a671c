// Leftovers step: the invariant checked on the output itself, whatever the source and the
// plan say: no packed FP4 (U8) tensor, and no NVFP4 block scales (F8_E4M3 `…weight_scale`)
// but the processed scales of a converted module. An output holding one would hand a loader
// NVFP4 bytes that it takes for something else.
import { isBlockScale, isPackedFp4 } from '../plan/linears.js';
import type { VerifyContext } from './context.js';

/** Adds one error per leftover tensor of the output to ctx.errors; returns how many. */
export function checkLeftovers(ctx: VerifyContext): number {
  let n = 0;
  for (const [name, ref] of ctx.out.tensors) {
    const dtype = ref.entry.dtype;
    const producer = ctx.outputs.get(name)?.producer.kind;
    if (isPackedFp4(name, dtype)) {
      ctx.errors.push(`${name}: U8 tensor (packed FP4) in the converted checkpoint: NVFP4 weights left unconverted`);
      n++;
    } else if (isBlockScale(name, dtype) && producer !== 'dense-scales' && producer !== 'stack-scales') {
      ctx.errors.push(`${name}: F8_E4M3 block scales outside any converted layer: NVFP4 scales left unconverted`);
      n++;
    }
  }
  return n;
}
