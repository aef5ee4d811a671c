// Structure step, one converted module at a time and one expert at a time: the tensors the
// plan names with their dtypes and shapes; the packed weight unpacked and the scales decoded
// back, byte for byte against the source (scales that v2 zeroes must be 0 exactly there);
// padding zero; the global scale recomputed; input scales and the v2 bias as convert writes
// them. Block scales re-encoded onto a fused group's shared global are checked against the
// source's own within the bound of the E4M3 rounding (reencoded.ts), and against the exact
// re-encoding. MXFP4 (FORMAT.md section 5): the scales decoded back equal the source's E8M0
// bytes exactly, there is no global scale, and biases (dense, or gpt-oss's per-expert stacks)
// are the source's, cast, padded, permuted.
import { readTensor, type Checkpoint } from '../checkpoint/model-dir.js';
import { globalScaleBytes, inputScaleName, biasName, type TensorSpec } from '../format/tensors.js';
import { DTYPE_SIZE } from '../safetensors/index.js';
import { permuteBias, toBf16 } from '../transform/bias.js';
import { decodeMxfp4Scales } from '../transform/mxfp4.js';
import { decodeCompare, decodeScales, processGlobalScale, unpackCompare } from '../transform/marlin.js';
import { asInputError } from '../plan/linears.js';
import { checkReencodedScales } from './reencoded.js';
import { diffBytes, hex } from './bytes.js';
import type { VerifyContext } from './context.js';
import type { LayerReport } from './report.js';
import type { Unit } from './units.js';

/** One expert of a module as read (a dense linear is expert 0 of 1). */
export interface ExpertData {
  e: number;
  /** Its slab of the converted weight and scales (absent when that tensor is malformed). */
  weight?: Buffer;
  scales?: Buffer;
  /**
   * Per part: source weight and block scales, the part's own global scale, and the scales as the
   * output should hold them (re-encoded onto the stored global; the same buffer where not). lost:
   * how many of those v2's clamp sets to 0, once the structure step has counted them.
   */
  src: { weight: Buffer; scale: Buffer; ownWs2: number; stored: Buffer; reencoded: boolean; lost?: number }[];
}

export function expectTensor(ckpt: Checkpoint, want: TensorSpec, errors: string[]): boolean {
  const { name, dtype, shape } = want;
  const ref = ckpt.tensors.get(name);
  if (!ref) {
    errors.push(`${name}: missing from the converted checkpoint`);
    return false;
  }
  let ok = true;
  if (ref.entry.dtype !== dtype) {
    errors.push(`${name}: dtype ${ref.entry.dtype}, expected ${dtype}`);
    ok = false;
  }
  if (ref.entry.shape.join(',') !== shape.join(',')) {
    errors.push(`${name}: shape [${ref.entry.shape.join(', ')}], expected [${shape.join(', ')}]`);
    ok = false;
  }
  return ok;
}

/** Checks expert d.e's weight and scales, part by part, into rep.errors. */
export async function checkExpertStructure(ctx: VerifyContext, u: Unit, rep: LayerReport, d: ExpertData): Promise<void> {
  const { layout, backend } = ctx;
  const errs = rep.errors;
  const shape = u.shape;
  const sf = u.scales.sf;
  const P = u.parts.length;
  const who = (p: number) => (u.kind === 'linear' ? '' : `expert ${d.e} ${u.parts[p]}: `);
  for (let p = 0; p < P; p++) {
    const part = d.src[p]!;
    const { weight, scale } = part;
    const where = { totalNp: shape.np * P, colOffset: p * shape.np };
    if (d.weight) {
      // Unpacked and compared where it runs (on the GPU only the counts come back).
      const dw = await unpackCompare(u.tensors.weight.name, d.weight, weight, shape, where, backend);
      if (dw.count > 0) {
        const rb = shape.k / 2;
        const at = `[${Math.floor(dw.first / rb)}, k ${2 * (dw.first % rb)}..${2 * (dw.first % rb) + 1}]`;
        errs.push(`${who(p)}weight: ${dw.count} bytes differ from the source, first at ${at} (${hex(dw.got)} vs ${hex(weight[dw.first])})`);
      }
      if (dw.paddingNonzero > 0) errs.push(`${who(p)}weight: ${dw.paddingNonzero} non-zero 8-byte blocks in the padding`);
    }
    if (!d.scales) continue;
    if (ctx.plan.scheme === 'mxfp4') {
      // A byte permutation: every source byte comes back, padding is 0x00.
      const decoded = await decodeMxfp4Scales(u.tensors.scales.name, d.scales, shape, where, backend);
      const ds = diffBytes(decoded.scales, scale);
      if (ds.count > 0) {
        const g = shape.k / 32;
        errs.push(
          `${who(p)}weight_scale: ${ds.count} E8M0 scales differ from the source, first at [${Math.floor(ds.first / g)}, ${ds.first % g}] ` +
            `(${hex(decoded.scales[ds.first])} vs ${hex(scale[ds.first])})`,
        );
      }
      if (decoded.paddingNonzero > 0) errs.push(`${who(p)}weight_scale: ${decoded.paddingNonzero} non-zero bytes in the padding`);
      continue;
    }
    if (part.reencoded) {
      // Against the source's own scales and global, within the bound of the E4M3 rounding.
      const decoded = await decodeScales(u.tensors.scales.name, d.scales, shape, { layout, sf }, where, backend);
      const b = checkReencodedScales(decoded.scales, scale, part.ownWs2, u.ws2[d.e]!, layout, sf);
      rep.reencoded_max_relative_change = Math.max(rep.reencoded_max_relative_change ?? 0, b.maxRelativeChange);
      if (b.outside > 0) {
        const g = shape.k / 16;
        errs.push(
          `${who(p)}weight_scale: ${b.outside} block scales outside the re-encoding bound max(2^-4·x, 2^-10) of the source's ` +
            `(x = scale · ${part.ownWs2} / ${u.ws2[d.e]}), first at [${Math.floor(b.first / g)}, ${b.first % g}] ` +
            `(decodes to ${hex(decoded.scales[b.first])}, source ${hex(scale[b.first])})`,
        );
      }
    }
    // Exactly the bytes convert's rule gives (the re-encoded source where it applies, v2's
    // clamp applied), compared where the decoding runs: only the counts come back.
    const decoded = await decodeCompare(u.tensors.scales.name, d.scales, part.stored, shape, { layout, sf }, where, backend);
    part.lost = decoded.lost;
    rep.zeroed_scales += decoded.lost;
    if (decoded.count > 0) {
      const g = shape.k / 16;
      errs.push(
        `${who(p)}weight_scale: ${decoded.count} block scales differ from the source${decoded.lost ? ` (after v2's clamp, which zeroes ${decoded.lost})` : ''}, ` +
          `first at [${Math.floor(decoded.first / g)}, ${decoded.first % g}] (decodes to ${hex(decoded.got)}, ` +
          `${part.reencoded ? `re-encoded source ${hex(part.stored[decoded.first])}` : `source ${hex(scale[decoded.first])}`})`,
      );
    }
    if (decoded.paddingNonzero > 0) errs.push(`${who(p)}weight_scale: ${decoded.paddingNonzero} non-zero bytes in the padding`);
  }
}

/**
 * One global per expert (a fused group's, or w13's, shared one: the largest of its parts'),
 * recomputed. The same rule as convert's: a stored value that overflows or rounds to 0 is the
 * source's error (one line naming its tensor, exit code 2), not a failed layer.
 */
export function checkGlobals(ctx: VerifyContext, u: Unit, rep: LayerReport, global: Buffer): void {
  const gsize = globalScaleBytes(ctx);
  for (let e = 0; e < u.experts.length; e++) {
    let want: Buffer;
    try {
      want = processGlobalScale(u.experts[e]![0]!.global!, u.ws2[e]!, { layout: ctx.layout, dtype: ctx.dtype, sf: u.scales.sf });
    } catch (err) {
      asInputError(ctx.src, err);
    }
    const got = global.subarray(gsize * e, gsize * (e + 1));
    if (!got.equals(want)) {
      rep.errors.push(`${u.kind === 'linear' ? '' : `expert ${e}: `}weight_scale_2: stored ${got.toString('hex')}, expected ${want.toString('hex')} from weight_scale_2 ${u.ws2[e]}`);
    }
  }
}

/** Input scales travel unchanged (ModelOpt's value; compressed-tensors' reciprocal undone); a v2 bias padded and permuted. */
export async function checkSmallTensors(ctx: VerifyContext, u: Unit, rep: LayerReport): Promise<void> {
  const { out, src } = ctx;
  const errs = rep.errors;
  for (const parts of u.experts) {
    for (const lin of parts) {
      const spec = ctx.outputs.get(inputScaleName(lin.prefix));
      if (spec?.producer.kind !== 'input-scale' || !expectTensor(out, spec, errs)) continue;
      ctx.counts.tensors++;
      const got = (await readTensor(out, spec.name)).readFloatLE(0);
      if (got !== spec.producer.value) errs.push(`${spec.name}: ${got}, expected ${spec.producer.value}`);
    }
  }
  await checkBias(ctx, u, errs);
}

/**
 * The bias the plan expects (a dense bias, or gpt-oss's per-expert `Q_bias`) holds the
 * source's, padded and permuted as convert writes it: in its own dtype (NVFP4) or cast to
 * bfloat16 (MXFP4; a stack's always).
 */
async function checkBias(ctx: VerifyContext, u: Unit, errs: string[]): Promise<void> {
  const source = u.dense?.source.bias ?? u.stack?.bias;
  if (!source) return;
  const spec = [...ctx.outputs.values()].find((t) => (t.producer.kind === 'bias' && t.producer.linear === u.dense) || (t.producer.kind === 'stack-bias' && t.producer.stack === u.stack));
  if (!spec || !expectTensor(ctx.out, spec, errs)) return;
  ctx.counts.tensors++;
  const srcDtype = ctx.src.tensors.get(source)!.entry.dtype;
  const raw = await readTensor(ctx.src, source);
  const got = await readTensor(ctx.out, spec.name);
  const E = u.dense ? 1 : u.experts.length;
  const width = spec.shape[spec.shape.length - 1]!;
  const n = u.shape.n * (u.dense ? 1 : u.parts.length);
  const size = DTYPE_SIZE[spec.dtype];
  const want = Buffer.alloc(got.length);
  const per = raw.length / E;
  for (let e = 0; e < E; e++) {
    const slab = raw.subarray(e * per, (e + 1) * per);
    permuteBias(spec.dtype === srcDtype ? slab : toBf16(slab, srcDtype), n, width, size, want, e * width);
  }
  const d = diffBytes(got, want);
  if (d.count > 0) errs.push(`${spec.name}: ${d.count} bytes differ from the source's ${source} as convert pads and permutes it, first at byte ${d.first}`);
}
