// Structure step, one converted module at a time: its tensors have the plan's names, dtypes
// and shapes; the packed weight unpacked back equals the source weight byte for byte; the
// processed scales decoded back equal the source scales with v2's clamp applied (a scale the
// clamp zeroes must be 0 exactly there); the padding is zero; the global scale is the one the
// source's weight_scale_2 gives; input scales travel unchanged. Block scales re-encoded onto a
// fused group's shared global are checked against the source's own within the bound of the
// E4M3 rounding (reencoded.ts), and against the exact re-encoding.
// MXFP4 (FORMAT.md section 5): the scales decoded back equal the source's E8M0 bytes exactly,
// there is no global scale, and biases (dense, or gpt-oss's per-expert stacks) are the
// source's, cast, padded, permuted.
import { readTensor, type Checkpoint } from '../checkpoint/model-dir.js';
import { readSource } from '../plan/source-bytes.js';
import { globalScaleBytes, inputScaleName, biasName, type TensorSpec } from '../format/tensors.js';
import { decodeScales, processGlobalScale, unpackWeight } from '../transform/marlin.js';
import { reencodeInPlace } from '../transform/reencode.js';
import { checkReencodedScales } from './reencoded.js';
import { decodeMxfp4Scales } from '../transform/mxfp4.js';
import { permuteBias, toBf16 } from '../transform/bias.js';
import { readLinearTensor } from '../plan/linears.js';
import { DTYPE_SIZE } from '../safetensors/index.js';
import { clampedScales } from './gemm.js';
import { asInputError } from '../plan/linears.js';
import { diffBytes, hex, slab } from './bytes.js';
import type { VerifyContext } from './context.js';
import type { LayerReport } from './report.js';
import type { Unit } from './units.js';

/** What the GEMM step needs of a module that passed far enough to be multiplied. */
export interface Loaded {
  /**
   * Per expert, per part: source weight and block scales, the part's own global scale, and the
   * scales as the output should hold them (re-encoded onto the stored global; the same buffer where not).
   */
  src: { weight: Buffer; scale: Buffer; ownWs2: number; stored: Buffer; reencoded: boolean }[][];
  weight: Buffer;
  scales: Buffer;
  /** NVFP4's stored global scales; absent for MXFP4. */
  global?: Buffer;
}

function expectTensor(ckpt: Checkpoint, want: TensorSpec, errors: string[]): boolean {
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

/** Checks one module into rep.errors; returns what the GEMMs need, or undefined when they cannot run. */
export async function checkStructure(ctx: VerifyContext, u: Unit, rep: LayerReport): Promise<Loaded | undefined> {
  const { src: s, out, layout, dtype, backend } = ctx;
  const errs = rep.errors;
  const shape = u.shape;
  const sf = u.scales.sf;
  Object.assign(rep, { n: shape.n, k: shape.k, np: shape.np, kp: shape.kp });
  rep.sf = sf;

  const src: Loaded['src'] = [];
  for (const [e, parts] of u.experts.entries()) {
    src.push(
      await Promise.all(
        parts.map(async (lin, p) => {
          // The source bytes the module was converted from, in section 1's layout (3-D and
          // K-major sources sliced and transposed by the same reader convert uses).
          const [weight, scale] = await Promise.all([readSource(s, lin, 'weight'), readSource(s, lin, 'scale')]);
          const r = u.reencodings[e]?.[p];
          const stored = r ? Buffer.from(scale) : scale;
          if (r) reencodeInPlace(stored, r);
          return { weight, scale, ownWs2: r?.own ?? u.ws2[e] ?? NaN, stored, reencoded: !!r };
        }),
      ),
    );
  }
  if (u.group) rep.fused_group = u.group;
  const mxfp4 = ctx.plan.scheme === 'mxfp4';

  // Tensors: names, dtypes, shapes as the plan has them.
  const E = u.experts.length;
  const P = u.parts.length;
  const okW = expectTensor(out, u.tensors.weight, errs);
  const okS = expectTensor(out, u.tensors.scales, errs);
  const okG = u.tensors.global !== undefined && expectTensor(out, u.tensors.global, errs);
  ctx.counts.tensors += u.tensors.global ? 3 : 2;
  // What can be read is checked even when another tensor is wrong; the GEMMs need all three.
  const [wAll, sAll, gAll] = await Promise.all([
    okW ? readTensor(out, u.tensors.weight.name) : undefined,
    okS ? readTensor(out, u.tensors.scales.name) : undefined,
    okG ? readTensor(out, u.tensors.global!.name) : undefined,
  ]);

  // Contents, expert by expert and part by part.
  const gsize = globalScaleBytes(ctx);
  for (let e = 0; e < E; e++) {
    const who = (p: number) => (u.kind === 'linear' ? '' : `expert ${e} ${u.parts[p]}: `);
    for (let p = 0; p < P; p++) {
      const part = src[e]![p]!;
      const { weight, scale } = part;
      const where = { totalNp: shape.np * P, colOffset: p * shape.np };
      if (wAll) {
        const unpacked = await unpackWeight(u.tensors.weight.name, slab(wAll, e, E), shape, where, backend);
        const dw = diffBytes(unpacked.weight, weight);
        if (dw.count > 0) {
          const rb = shape.k / 2;
          const at = `[${Math.floor(dw.first / rb)}, k ${2 * (dw.first % rb)}..${2 * (dw.first % rb) + 1}]`;
          errs.push(`${who(p)}weight: ${dw.count} bytes differ from the source, first at ${at} (${hex(unpacked.weight[dw.first])} vs ${hex(weight[dw.first])})`);
        }
        if (unpacked.paddingNonzero > 0) errs.push(`${who(p)}weight: ${unpacked.paddingNonzero} non-zero 8-byte blocks in the padding`);
      }
      if (!sAll) continue;
      if (mxfp4) {
        // A byte permutation: every source byte comes back, padding is 0x00.
        const decoded = await decodeMxfp4Scales(u.tensors.scales.name, slab(sAll, e, E), shape, where, backend);
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
      const decoded = await decodeScales(u.tensors.scales.name, slab(sAll, e, E), shape, { layout, sf }, where, backend);
      if (part.reencoded) {
        // Against the source's own scales and global, within the bound of the E4M3 rounding.
        const b = checkReencodedScales(decoded.scales, scale, part.ownWs2, u.ws2[e]!, layout, sf);
        rep.reencoded_max_relative_change = Math.max(rep.reencoded_max_relative_change ?? 0, b.maxRelativeChange);
        if (b.outside > 0) {
          const g = shape.k / 16;
          errs.push(
            `${who(p)}weight_scale: ${b.outside} block scales outside the re-encoding bound max(2^-4·x, 2^-10) of the source's ` +
              `(x = scale · ${part.ownWs2} / ${u.ws2[e]}), first at [${Math.floor(b.first / g)}, ${b.first % g}] ` +
              `(decodes to ${hex(decoded.scales[b.first])}, source ${hex(scale[b.first])})`,
          );
        }
      }
      // Exactly the bytes convert's rule gives (the re-encoded source where it applies).
      const want = clampedScales(part.stored, layout, sf);
      rep.zeroed_scales += want.lost;
      const ds = diffBytes(decoded.scales, want.scales);
      if (ds.count > 0) {
        const g = shape.k / 16;
        errs.push(
          `${who(p)}weight_scale: ${ds.count} block scales differ from the source${want.lost ? ` (after v2's clamp, which zeroes ${want.lost})` : ''}, ` +
            `first at [${Math.floor(ds.first / g)}, ${ds.first % g}] (decodes to ${hex(decoded.scales[ds.first])}, ` +
            `${part.reencoded ? `re-encoded source ${hex(part.stored[ds.first])}` : `source ${hex(scale[ds.first])}`})`,
        );
      }
      if (decoded.paddingNonzero > 0) errs.push(`${who(p)}weight_scale: ${decoded.paddingNonzero} non-zero bytes in the padding`);
    }
    // One global per expert (a fused group's, or w13's, shared one: the largest of its parts').
    if (mxfp4) continue;
    // The same rule as convert's: a stored value that overflows or rounds to 0 is the
    // source's error (one line naming its tensor, exit code 2), not a failed layer.
    let wantG: Buffer;
    try {
      wantG = processGlobalScale(u.experts[e]![0]!.global!, u.ws2[e]!, { layout, dtype, sf });
    } catch (err) {
      asInputError(s, err);
    }
    const gotG = gAll?.subarray(gsize * e, gsize * (e + 1));
    if (gotG && !Buffer.from(gotG).equals(wantG)) {
      errs.push(`${u.kind === 'linear' ? '' : `expert ${e}: `}weight_scale_2: stored ${gotG.toString('hex')}, expected ${wantG.toString('hex')} from weight_scale_2 ${u.ws2[e]}`);
    }
  }
  // Input scales travel unchanged (ModelOpt's value; compressed-tensors' reciprocal undone).
  for (const parts of u.experts) {
    for (const lin of parts) {
      const spec = ctx.outputs.get(inputScaleName(lin.prefix));
      if (spec?.producer.kind !== 'input-scale' || !expectTensor(out, spec, errs)) continue;
      const got = (await readTensor(out, spec.name)).readFloatLE(0);
      if (got !== spec.producer.value) errs.push(`${spec.name}: ${got}, expected ${spec.producer.value}`);
    }
  }
  if (u.dense?.source.bias && !out.tensors.has(biasName(u.dense.source.prefix))) errs.push(`${biasName(u.dense.source.prefix)}: missing`);
  if (mxfp4) await checkMxfp4Biases(ctx, u, errs);
  return wAll && sAll && (gAll || mxfp4) ? { src, weight: wAll, scales: sAll, global: gAll } : undefined;
}

/** The bias the plan expects (a dense bias, or a stack's `Q_bias`) holds the source's, cast to bfloat16, padded and permuted. */
async function checkMxfp4Biases(ctx: VerifyContext, u: Unit, errs: string[]): Promise<void> {
  const source = u.dense?.source.bias ?? u.stack?.bias;
  if (!source) return;
  const spec = [...ctx.outputs.values()].find((t) => (t.producer.kind === 'bias' && t.producer.linear === u.dense) || (t.producer.kind === 'stack-bias' && t.producer.stack === u.stack));
  if (!spec || !expectTensor(ctx.out, spec, errs)) return;
  ctx.counts.tensors++;
  const srcEntry = ctx.src.tensors.get(source)!.entry;
  const raw = await readTensor(ctx.src, source);
  const got = await readTensor(ctx.out, spec.name);
  const E = u.experts.length;
  const width = spec.shape[spec.shape.length - 1]!;
  const n = u.shape.n * u.parts.length;
  const size = DTYPE_SIZE[spec.dtype];
  const want = Buffer.alloc(got.length);
  for (let e = 0; e < E; e++) permuteBias(toBf16(slab(raw, e, E), srcEntry.dtype), n, width, size, want, e * width);
  const d = diffBytes(got, want);
  if (d.count > 0) errs.push(`${spec.name}: ${d.count} bytes differ from the source bias cast to bfloat16, padded and permuted, first at byte ${d.first}`);
}
