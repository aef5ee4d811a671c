// One converted module, streamed expert by expert (a dense linear is one expert): its slab of
// the converted weight and scales and its source parts are read into pooled buffers once, the
// next expert's read overlapping this one's checks, and both the structure and the GEMM
// checks run on them. Memory per module in flight: two experts' bytes, whatever the stack.
import { readTensor, readTensorInto } from '../checkpoint/model-dir.js';
import { reencodeInPlace } from '../transform/reencode.js';
import { sampleIndices } from './select.js';
import { checkExpertGemms } from './gemm-checks.js';
import type { VerifyContext } from './context.js';
import type { LayerReport } from './report.js';
import { checkExpertStructure, checkGlobals, checkSmallTensors, expectTensor, type ExpertData } from './structure.js';
import type { Unit } from './units.js';
import type { LinearSource } from '../plan/linears.js';
import { readSourceInto, sourceBytes } from '../plan/source-bytes.js';

/** Reads part e of a tensor stacked over `count` experts into a pooled buffer. */
async function readSlab(ctx: VerifyContext, ckpt: 'out' | 'src', name: string, e: number, count: number): Promise<Buffer> {
  const c = ckpt === 'out' ? ctx.out : ctx.src;
  const entry = c.tensors.get(name)!.entry;
  const size = (entry.end - entry.begin) / count;
  const b = ctx.pool.take(size);
  await readTensorInto(c, name, e * size, b);
  ctx.counts.bytesRead += size;
  return b;
}

/**
 * A source linear's weight or scale in section 1's layout, in a pooled buffer: the whole
 * tensor, its expert's slice of a shared one (gpt-oss), or its rows of a 3-D expert tensor
 * (sliced, and transposed when K-major, by the reader convert uses).
 */
async function readSource(ctx: VerifyContext, lin: LinearSource, which: 'weight' | 'scale'): Promise<Buffer> {
  if (lin.slice) return readSlab(ctx, 'src', lin[which], lin.slice.index, lin.slice.count);
  if (!lin.view) return readSlab(ctx, 'src', lin[which], 0, 1);
  const b = ctx.pool.take(sourceBytes(lin, which));
  await readSourceInto(ctx.src, lin, which, b);
  ctx.counts.bytesRead += b.length;
  return b;
}

async function load(ctx: VerifyContext, u: Unit, e: number, ok: { weight: boolean; scales: boolean }): Promise<ExpertData> {
  const E = u.experts.length;
  return ctx.times.time('read', async () => {
    const [weight, scales, src] = await Promise.all([
      ok.weight ? readSlab(ctx, 'out', u.tensors.weight.name, e, E) : undefined,
      ok.scales ? readSlab(ctx, 'out', u.tensors.scales.name, e, E) : undefined,
      Promise.all(
        u.experts[e]!.map(async (lin, p) => {
          const [weight, scale] = await Promise.all([readSource(ctx, lin, 'weight'), readSource(ctx, lin, 'scale')]);
          // Where a fused group's shared global differs from this part's own, the output holds
          // its scales re-encoded (a copy: the pooled buffer keeps the source's own).
          const r = u.reencodings[e]?.[p];
          const stored = r ? Buffer.from(scale) : scale;
          if (r) reencodeInPlace(stored, r);
          return { weight, scale, ownWs2: r?.own ?? u.ws2[e] ?? NaN, stored, reencoded: !!r };
        }),
      ),
    ]);
    return { e, weight, scales, src };
  });
}

/**
 * Hands an expert's buffers back to the pool, each once: the GEMM step gives some back as soon
 * as nothing reads them any more (so that the lanes hold only what they still need: on the GPU
 * the pool is page-locked, resident memory), and the final release skips those.
 */
class ExpertBuffers {
  private readonly given = new Set<Buffer>();
  constructor(
    private readonly ctx: VerifyContext,
    readonly d: ExpertData,
  ) {}

  giveBack(buffers: (Buffer | undefined)[]): void {
    for (const b of buffers) {
      if (!b || this.given.has(b)) continue;
      this.given.add(b);
      this.ctx.pool.give(b);
    }
  }

  /** The converted tensor's slabs (read by the structure step and the Marlin GEMM). */
  output(): void {
    this.giveBack([this.d.weight, this.d.scales]);
  }

  /** The source's weights and block scales (read by the structure step and the reference GEMMs). */
  source(): void {
    this.giveBack(this.d.src.flatMap((s) => [s.weight, s.scale]));
  }

  all(): void {
    this.output();
    this.source();
  }
}

function release(ctx: VerifyContext, d: ExpertData): void {
  new ExpertBuffers(ctx, d).all();
}

/** Checks module u into rep: structure (when asked) for every expert, GEMMs for the sampled ones when gemm is true. */
export async function checkUnit(ctx: VerifyContext, u: Unit, rep: LayerReport, gemm: boolean): Promise<void> {
  const structure = ctx.checks.has('structure');
  const { out } = ctx;
  const errs = rep.errors;
  if (u.group) rep.fused_group = u.group;
  // Tensors: names, dtypes, shapes as the plan has them; what can be read is checked even
  // when another tensor is wrong, the GEMMs need all three.
  // MXFP4 modules have no global scale.
  const ok = {
    weight: expectTensor(out, u.tensors.weight, errs),
    scales: expectTensor(out, u.tensors.scales, errs),
    global: u.tensors.global !== undefined && expectTensor(out, u.tensors.global, errs),
  };
  ctx.counts.tensors += u.tensors.global ? 3 : 2;
  const global = ok.global ? await readTensor(out, u.tensors.global!.name) : undefined;
  if (structure && global) checkGlobals(ctx, u, rep, global);
  if (structure) await ctx.times.time('structure', checkSmallTensors(ctx, u, rep));

  const E = u.experts.length;
  const wanted = ctx.opts.experts ?? 4;
  const sample = new Set(gemm ? (wanted === 'all' ? [...Array(E).keys()] : sampleIndices(E, wanted)) : []);
  const canGemm = ok.weight && ok.scales && (!!global || u.tensors.global === undefined);
  if (gemm) rep.gemm = [];
  const todo = [...Array(E).keys()].filter((e) => structure || sample.has(e));
  let next = todo.length ? load(ctx, u, todo[0]!, ok) : undefined;
  for (let i = 0; i < todo.length; i++) {
    const d = await next!;
    const buffers = new ExpertBuffers(ctx, d);
    next = i + 1 < todo.length ? load(ctx, u, todo[i + 1]!, ok) : undefined;
    try {
      if (structure) await ctx.times.time('structure', checkExpertStructure(ctx, u, rep, d));
      if (sample.has(d.e) && canGemm) {
        await ctx.times.time('gemm', checkExpertGemms(ctx, u, rep, d, global, { afterMarlin: () => buffers.output(), afterReferences: () => buffers.source() }));
      }
    } catch (e) {
      // Let the prefetched read finish before its buffers are dropped with the error.
      await next?.then((n) => release(ctx, n)).catch(() => {});
      throw e;
    } finally {
      buffers.all();
    }
  }
}
