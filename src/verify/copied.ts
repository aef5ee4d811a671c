// Copied-tensors step: every source tensor the plan copies must be in the output unchanged
// (same dtype, shape and bytes), compared in pieces of bounded size (stream-compare.ts), so a
// copied tensor of any size verifies in the same memory.
import { forEachLimited } from '../convert/write-shard.js';
import type { VerifyContext } from './context.js';
import { compareTensors } from './stream-compare.js';

/** Checks the plan's copies into ctx.errors (in the source's tensor order); returns how many were checked. */
export async function checkCopied(ctx: VerifyContext, lanes: number): Promise<number> {
  const { src, out } = ctx;
  const copies = [...src.tensors.values()].filter((ref) => ctx.outputs.get(ref.name)?.producer.kind === 'copy');
  const found: (string | undefined)[] = copies.map(() => undefined);
  await forEachLimited([...copies.keys()], lanes, async (i) => {
    const ref = copies[i]!;
    const o = out.tensors.get(ref.name);
    if (!o) {
      found[i] = `${ref.name}: copied tensor missing from the converted checkpoint`;
      return;
    }
    if (o.entry.dtype !== ref.entry.dtype || o.entry.shape.join(',') !== ref.entry.shape.join(',')) {
      found[i] = `${ref.name}: copied tensor is ${o.entry.dtype} [${o.entry.shape.join(', ')}], the source's ${ref.entry.dtype} [${ref.entry.shape.join(', ')}]`;
      return;
    }
    const d = await compareTensors(out, src, ref.name, ctx.pool, (n) => (ctx.counts.bytesRead += n));
    if (d.count > 0) found[i] = `${ref.name}: copied tensor differs from the source in ${d.count} bytes (first at byte ${d.first})`;
  });
  for (const f of found) if (f) ctx.errors.push(f);
  return copies.length;
}
