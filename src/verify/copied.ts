// Copied-tensors step: every source tensor the plan copies must be in the output unchanged
// (same dtype, shape and bytes).
import { readTensor } from '../checkpoint/model-dir.js';
import { diffBytes } from './bytes.js';
import type { VerifyContext } from './context.js';

/** Checks the plan's copies into ctx.errors (in the source's tensor order); returns how many were checked. */
export async function checkCopied(ctx: VerifyContext): Promise<number> {
  const { src, out, errors } = ctx;
  let n = 0;
  for (const ref of src.tensors.values()) {
    if (ctx.outputs.get(ref.name)?.producer.kind !== 'copy') continue;
    n++;
    const o = out.tensors.get(ref.name);
    if (!o) {
      errors.push(`${ref.name}: copied tensor missing from the converted checkpoint`);
      continue;
    }
    if (o.entry.dtype !== ref.entry.dtype || o.entry.shape.join(',') !== ref.entry.shape.join(',')) {
      errors.push(`${ref.name}: copied tensor is ${o.entry.dtype} [${o.entry.shape.join(', ')}], the source's ${ref.entry.dtype} [${ref.entry.shape.join(', ')}]`);
      continue;
    }
    const [a, b] = await Promise.all([readTensor(out, ref.name), readTensor(src, ref.name)]);
    const d = diffBytes(a, b);
    if (d.count > 0) errors.push(`${ref.name}: copied tensor differs from the source in ${d.count} bytes (first at byte ${d.first})`);
  }
  return n;
}
