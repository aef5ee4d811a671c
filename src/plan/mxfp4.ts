// The conversion plan of an MXFP4 checkpoint (FORMAT.md section 5): which tensors are MXFP4
// linears or expert stacks, their (padded) shapes, and every output tensor. gpt-oss experts
// (`…_blocks` / `…_scales` / `…_bias`, all experts of a layer in one tensor, gate/up rows
// interleaved) become `Q.w13_*` / `Q.w2_*` stacks padded as vLLM's MXFP4 Marlin MoE pads them
// (5.2); compressed-tensors `weight_packed` + U8 `weight_scale` linears become dense modules,
// or gate-first stacks for `….experts.{e}.{gate,up,down}_proj` (5.3). Everything else is
// copied. Every check that needs no weight byte runs here, before anything is written.
import { InputError } from '../errors.js';
import type { Checkpoint } from '../checkpoint/model-dir.js';
import { isIgnored, type Mxfp4Flavour } from '../checkpoint/flavour.js';
import { stackName, stackPartShape, stackSizes, type StackSizes } from '../format/moe.js';
import { biasTensor, moduleTensors, stackBiasTensor, type OutputLayout } from '../format/tensors.js';
import { addon } from '../transform/addon.js';
import { moePaddedIntermediate, type ActDtype, type LayoutVersion, type LinearShape } from '../transform/marlin.js';
import { gptOssPaddedSizes, MXFP4_GROUP } from '../transform/mxfp4.js';
import { problemCollector, ROLE, where, type LinearSource } from './linears.js';
import { ShardPlacement, type DenseLinear, type MoeStack, type Plan } from './plan.js';
import { ScaleScans } from './scale-scans.js';

/** What a plan of an MXFP4 checkpoint records of the scale factor: MXFP4 has none (and no scale scans). */
const NO_SF = Object.freeze({ sf: 1, lost: 0, subnormal: 0 });

const fmt = (shape: readonly number[]) => `[${shape.join(', ')}]`;
const FLOAT_DTYPES = ['BF16', 'F16', 'F32'];

/** A gpt-oss expert layer: `Q.gate_up_proj_*` and `Q.down_proj_*`, every expert in one tensor. */
export interface GptOssGroup {
  prefix: string;
  experts: number;
  hidden: number;
  intermediate: number;
  /** Tensor names of each projection: blocks, scales, bias (bias optional). */
  gateUp: { blocks: string; scales: string; bias?: string };
  down: { blocks: string; scales: string; bias?: string };
}

/** compressed-tensors experts: per expert gate, up and down linears. */
export interface Mxfp4ExpertGroup {
  prefix: string;
  experts: { gate: LinearSource; up: LinearSource; down: LinearSource }[];
}

export interface FoundMxfp4 {
  dense: LinearSource[];
  gptOss: GptOssGroup[];
  groups: Mxfp4ExpertGroup[];
}

const EXPERT = /^(.+\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)$/;
const GPT_OSS = /^(.+)\.(gate_up_proj|down_proj)_blocks$/;

/**
 * The MXFP4 linears and expert layers of a checkpoint. A malformed piece is an InputError;
 * with `problems` given (inspect), its message is collected instead and the piece left out.
 */
export function findMxfp4(ckpt: Checkpoint, flavour: Mxfp4Flavour, problems?: string[]): FoundMxfp4 {
  const t = ckpt.tensors;
  const attempt = problemCollector(problems);
  const found: FoundMxfp4 = { dense: [], gptOss: [], groups: [] };
  const placed = new Set<string>();

  // gpt-oss experts.
  const layers = new Map<string, Partial<Record<'gate_up_proj' | 'down_proj', string>>>();
  for (const name of [...t.keys()].sort()) {
    const m = GPT_OSS.exec(name);
    if (!m) continue;
    const slot = layers.get(m[1]!) ?? {};
    slot[m[2] as 'gate_up_proj' | 'down_proj'] = name;
    layers.set(m[1]!, slot);
  }
  for (const [prefix, slot] of layers) {
    attempt(() => {
      if (isIgnored(flavour, prefix)) throw new InputError(`${where(ckpt, (slot.gate_up_proj ?? slot.down_proj)!)}: packed MXFP4 experts on the quantization config's ignore list cannot be copied unconverted`);
      const parts = (['gate_up_proj', 'down_proj'] as const).map((which) => {
        const blocks = slot[which] ?? `${prefix}.${which}_blocks`;
        const near = slot.gate_up_proj ?? slot.down_proj;
        const b = t.get(blocks);
        if (!b) throw new InputError(`${where(ckpt, blocks, near)}: missing (the ${which} blocks of ${prefix})`);
        const bs = b.entry.shape;
        if (b.entry.dtype !== 'U8' || bs.length !== 4 || bs[3] !== 16) throw new InputError(`${where(ckpt, blocks)}: ${b.entry.dtype} ${fmt(bs)} is not U8 [E, N, K/32, 16]`);
        const scales = `${prefix}.${which}_scales`;
        const s = t.get(scales);
        if (!s) throw new InputError(`${where(ckpt, scales, blocks)}: missing (the E8M0 scales of ${blocks})`);
        if (s.entry.dtype !== 'U8') throw new InputError(`${where(ckpt, scales)}: dtype ${s.entry.dtype} is not U8 (E8M0 bytes)`);
        if (fmt(s.entry.shape) !== fmt(bs.slice(0, 3))) throw new InputError(`${where(ckpt, scales)}: shape ${fmt(s.entry.shape)} is not [E, N, K/32] = ${fmt(bs.slice(0, 3))}`);
        const bias = `${prefix}.${which}_bias`;
        const be = t.get(bias)?.entry;
        if (be && (fmt(be.shape) !== fmt(bs.slice(0, 2)) || !FLOAT_DTYPES.includes(be.dtype))) {
          throw new InputError(`${where(ckpt, bias)}: ${be.dtype} ${fmt(be.shape)} is not a float [E, N] = ${fmt(bs.slice(0, 2))}`);
        }
        return { blocks, scales, bias: be ? bias : undefined, e: bs[0]!, n: bs[1]!, k: 32 * bs[2]! };
      });
      const [gu, dn] = parts as [(typeof parts)[0], (typeof parts)[0]];
      const hidden = gu.k;
      const intermediate = dn.k;
      if (gu.e !== dn.e || gu.n !== 2 * intermediate || dn.n !== hidden) {
        throw new InputError(
          `${where(ckpt, dn.blocks)}: ${prefix}: gate_up_proj is [E, N, K] = [${gu.e}, ${gu.n}, ${gu.k}] and down_proj [${dn.e}, ${dn.n}, ${dn.k}]; ` +
            `expected [E, 2I, H] and [E, H, I]`,
        );
      }
      for (const p of parts) [p.blocks, p.scales, p.bias].forEach((n) => n && placed.add(n));
      found.gptOss.push({
        prefix,
        experts: gu.e,
        hidden,
        intermediate,
        gateUp: { blocks: gu.blocks, scales: gu.scales, bias: gu.bias },
        down: { blocks: dn.blocks, scales: dn.scales, bias: dn.bias },
      });
    });
  }

  // compressed-tensors linears: P.weight_packed + P.weight_scale.
  const slots = new Map<string, Map<number, Partial<Record<'gate' | 'up' | 'down', LinearSource>>>>();
  for (const name of [...t.keys()].sort()) {
    if (!name.endsWith('.weight_packed')) continue;
    const p = name.slice(0, -'.weight_packed'.length);
    attempt(() => {
      const w = t.get(name)!.entry;
      if (w.dtype !== 'U8' || w.shape.length !== 2) throw new InputError(`${where(ckpt, name)}: ${w.dtype} ${fmt(w.shape)} is not U8 [N, K/2] (packed FP4)`);
      if (isIgnored(flavour, p)) throw new InputError(`${where(ckpt, name)}: packed MXFP4 weight on the quantization config's ignore list cannot be copied unconverted`);
      const scale = `${p}.weight_scale`;
      const s = t.get(scale)?.entry;
      if (!s) throw new InputError(`${where(ckpt, scale, name)}: missing (the E8M0 scales of ${p})`);
      if (s.dtype === 'F8_E4M3') {
        throw new InputError(
          `${where(ckpt, scale)}: F8_E4M3 MXFP4 scales are an older compressed-tensors encoding (exponent - 2 stored as an E4M3 value); ` +
            `re-export with a current compressed-tensors (U8 E8M0 scales)`,
        );
      }
      if (s.dtype !== 'U8') throw new InputError(`${where(ckpt, scale)}: dtype ${s.dtype} is not U8 (E8M0 bytes)`);
      const [n, halfK] = w.shape as [number, number];
      if (fmt(s.shape) !== fmt([n, (2 * halfK) / MXFP4_GROUP])) {
        throw new InputError(`${where(ckpt, scale)}: shape ${fmt(s.shape)} is not [N, K/32] = [${n}, ${(2 * halfK) / MXFP4_GROUP}]`);
      }
      if (t.has(`${p}.weight_zero_point`)) throw new InputError(`${where(ckpt, `${p}.weight_zero_point`)}: asymmetric MXFP4 (a weight zero point) has no Marlin kernel`);
      const lin: LinearSource = { prefix: p, weight: name, scale, globalReciprocal: false, inputReciprocal: false, members: [name, scale], n, k: 2 * halfK };
      if (t.has(`${p}.bias`)) {
        lin.bias = `${p}.bias`;
        lin.members.push(lin.bias);
      }
      lin.members.forEach((m) => placed.add(m));
      const m = EXPERT.exec(p);
      if (!m) {
        found.dense.push(lin);
        return;
      }
      const experts = slots.get(m[1]!) ?? new Map();
      slots.set(m[1]!, experts);
      const slot = experts.get(Number(m[2])) ?? {};
      experts.set(Number(m[2]), slot);
      const role = ROLE[m[3]!]!;
      if (slot[role]) throw new InputError(`${where(ckpt, name)}: expert ${m[2]} of ${m[1]} has two ${role} projections`);
      slot[role] = lin;
    });
  }
  for (const [prefix, experts] of [...slots].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    attempt(() => {
      const count = Math.max(...experts.keys()) + 1;
      const list: Mxfp4ExpertGroup['experts'] = [];
      for (let e = 0; e < count; e++) {
        const s = experts.get(e);
        if (!s?.gate || !s.up || !s.down) throw new InputError(`${ckpt.dir}: ${prefix}: expert ${e} has no quantized ${!s?.gate ? 'gate' : !s.up ? 'up' : 'down'} projection (experts must be numbered 0..${count - 1}, each with gate, up and down)`);
        for (const lin of [s.gate, s.up, s.down]) if (lin.bias) throw new InputError(`${where(ckpt, lin.bias)}: per-expert biases of compressed-tensors experts are not supported`);
        list.push({ gate: s.gate, up: s.up, down: s.down });
      }
      found.groups.push({ prefix, experts: list });
    });
  }

  // A U8 tensor left over is packed data this plan cannot place: an error, never a copy.
  for (const [name, ref] of t) {
    if (placed.has(name) || ref.entry.dtype !== 'U8') continue;
    if (/(_blocks|_scales|\.weight_packed|\.weight_scale)$/.test(name)) {
      attempt(() => {
        throw new InputError(`${where(ckpt, name)}: MXFP4 tensor ${fmt(ref.entry.shape)} that belongs to no complete linear or expert layer`);
      });
    }
  }
  return found;
}

/** MXFP4 output is layout v2 and bfloat16: the only MXFP4 Marlin kernel (FORMAT.md 5.1 step 3). */
export function checkMxfp4Options(ckpt: Checkpoint, layout: LayoutVersion, dtype: ActDtype): void {
  if (layout !== 'v2') throw new InputError(`${ckpt.dir}: --layout ${layout}: MXFP4 has one Marlin layout (v1 is NVFP4's older scale processing); use --layout v2`);
  if (dtype !== 'bfloat16') {
    throw new InputError(`${ckpt.dir}: --dtype ${dtype}: no Marlin kernel exists for MXFP4 weights with ${dtype} activations (vLLM decodes E8M0 scales for bfloat16 only); use --dtype bfloat16`);
  }
}

/** A compressed-tensors MXFP4 linear's shape: K a multiple of 32, padded as NVFP4's v2 pads (FORMAT.md section 4). */
export function mxfp4DenseShape(ckpt: Checkpoint, lin: LinearSource): LinearShape {
  const [n, halfK] = ckpt.tensors.get(lin.weight)!.entry.shape as [number, number];
  const k = 2 * halfK;
  if (n === 0 || k === 0) throw new InputError(`${where(ckpt, lin.weight)}: weight is empty [${n}, ${halfK}]`);
  if (k % MXFP4_GROUP !== 0) throw new InputError(`${where(ckpt, lin.weight)}: K = ${k} is not a multiple of 32 (the MXFP4 group size)`);
  const { np, kp } = addon().padShapeV2(n, k);
  if (lin.bias) {
    const b = ckpt.tensors.get(lin.bias)!.entry;
    if (b.shape.length !== 1 || b.shape[0] !== n) throw new InputError(`${where(ckpt, lin.bias)}: bias shape ${fmt(b.shape)} is not [${n}]`);
    if (!FLOAT_DTYPES.includes(b.dtype)) throw new InputError(`${where(ckpt, lin.bias)}: bias dtype ${b.dtype} is not a float type`);
  }
  return { n, k, np, kp };
}

/** The sizes of a gpt-oss layer and its two stacks' part shapes (FORMAT.md 5.2's padding). */
export function gptOssShapes(g: Pick<GptOssGroup, 'hidden' | 'intermediate'>): { sizes: StackSizes; w13: LinearShape; w2: LinearShape } {
  const { hp, ip } = gptOssPaddedSizes(g.hidden, g.intermediate);
  return {
    sizes: { hidden: g.hidden, intermediate: g.intermediate, ip },
    w13: { n: 2 * g.intermediate, k: g.hidden, np: 2 * ip, kp: hp },
    w2: { n: g.hidden, k: g.intermediate, np: hp, kp: ip },
  };
}

function gptOssStacks(g: GptOssGroup): MoeStack[] {
  const { sizes, w13, w2 } = gptOssShapes(g);
  const src = (label: string, t: { blocks: string; scales: string; bias?: string }, e: number, part: LinearShape): LinearSource => ({
    prefix: `${g.prefix}.${label}[${e}]`,
    n: part.n,
    k: part.k,
    weight: t.blocks,
    scale: t.scales,
    globalReciprocal: false,
    inputReciprocal: false,
    members: [t.blocks, t.scales],
    slice: { index: e, count: g.experts },
  });
  const experts = [...Array(g.experts).keys()];
  return [
    { which: 'w13', kind: 'moe-w13', part: w13, parts: ['gate_up'], t: g.gateUp, label: 'gate_up_proj', interleaved: true },
    { which: 'w2', kind: 'moe-w2', part: w2, parts: ['down'], t: g.down, label: 'down_proj', interleaved: undefined },
  ].map(
    (s): MoeStack => ({
      prefix: g.prefix,
      sources: experts.map((e) => [src(s.label, s.t, e, s.part)]),
      which: s.which as MoeStack['which'],
      kind: s.kind as MoeStack['kind'],
      sizes,
      part: s.part,
      parts: s.parts,
      ws2: [],
      reencodings: [],
      scales: NO_SF,
      bias: s.t.bias,
      interleaved: s.interleaved,
    }),
  );
}

/** compressed-tensors MXFP4 experts: gate-first stacks padded as FORMAT.md section 6 pads NVFP4 ones. */
function expertStacks(ckpt: Checkpoint, g: Mxfp4ExpertGroup): MoeStack[] {
  const first = g.experts[0]!;
  const [intermediate, halfH] = ckpt.tensors.get(first.gate.weight)!.entry.shape as [number, number];
  const hidden = 2 * halfH;
  for (const ex of g.experts) {
    for (const [lin, n, k] of [[ex.gate, intermediate, hidden], [ex.up, intermediate, hidden], [ex.down, hidden, intermediate]] as const) {
      const ws = ckpt.tensors.get(lin.weight)!.entry.shape;
      if (fmt(ws) !== fmt([n, k / 2])) throw new InputError(`${where(ckpt, lin.weight)}: shape ${fmt(ws)} differs from the stack's [${n}, ${k / 2}] (hidden ${hidden}, intermediate ${intermediate})`);
    }
  }
  if (hidden % 64 !== 0) throw new InputError(`${where(ckpt, first.down.weight)}: hidden size ${hidden} is not a multiple of 64`);
  if (intermediate % MXFP4_GROUP !== 0) throw new InputError(`${where(ckpt, first.gate.weight)}: intermediate size ${intermediate} is not a multiple of 32`);
  const sizes = stackSizes(hidden, intermediate, 'v2');
  // The padded intermediate is also w2's K: it must hold whole groups of 32.
  if (moePaddedIntermediate(intermediate, hidden, 'v2') % MXFP4_GROUP !== 0) throw new Error('internal: padded intermediate is not a multiple of 32');
  return [
    { which: 'w13' as const, kind: 'moe-w13' as const, parts: ['gate', 'up'] as const },
    { which: 'w2' as const, kind: 'moe-w2' as const, parts: ['down'] as const },
  ].map((s) => ({
    prefix: g.prefix,
    sources: g.experts.map((ex) => s.parts.map((r) => ex[r])),
    which: s.which,
    kind: s.kind,
    sizes,
    part: stackPartShape(s.which, sizes),
    parts: [...s.parts],
    ws2: [],
    reencodings: [],
    scales: NO_SF,
  }));
}

export interface Mxfp4PlanOptions {
  layout: LayoutVersion;
  dtype: ActDtype;
}

/** The plan of an MXFP4 checkpoint: every output tensor, its shard and how its bytes are made. */
export function planMxfp4(ckpt: Checkpoint, flavour: Mxfp4Flavour, { layout, dtype }: Mxfp4PlanOptions): Plan {
  checkMxfp4Options(ckpt, layout, dtype);
  const found = findMxfp4(ckpt, flavour);
  if (found.dense.length === 0 && found.gptOss.length === 0 && found.groups.length === 0) {
    throw new InputError(`${ckpt.dir}: no MXFP4-quantized linear found (its config says ${flavour.kind} MXFP4)`);
  }
  const dense: DenseLinear[] = found.dense.map((lin) => ({ source: lin, shape: mxfp4DenseShape(ckpt, lin), ws2: NaN, sourceWs2: NaN, scales: NO_SF }));
  const stacks: MoeStack[] = [...found.gptOss.flatMap(gptOssStacks), ...found.groups.flatMap((g) => expertStacks(ckpt, g))];

  const out: OutputLayout = { layout, dtype, scheme: 'mxfp4' };
  const place = new ShardPlacement(ckpt);
  const { consumed } = place;
  const put = place.put;
  for (const d of dense) {
    const { prefix, weight } = d.source;
    d.source.members.forEach((m) => consumed.add(m));
    const t = moduleTensors(prefix, 'linear', { part: d.shape, parts: 1 }, out);
    put(weight, t.weight, { kind: 'dense-weight', linear: d });
    put(weight, t.scales, { kind: 'dense-scales', linear: d });
    if (d.source.bias) put(weight, biasTensor(prefix, 'BF16', d.shape), { kind: 'bias', linear: d });
  }
  for (const s of stacks) {
    const name = stackName(s.prefix, s.which);
    const anchor = s.sources[0]![0]!.weight;
    const t = moduleTensors(name, s.kind, { part: s.part, parts: s.parts.length, experts: s.sources.length }, out);
    put(anchor, t.weight, { kind: 'stack-weight', stack: s });
    put(anchor, t.scales, { kind: 'stack-scales', stack: s });
    if (s.bias) {
      consumed.add(s.bias);
      put(anchor, stackBiasTensor(name, s.sources.length, s.part.np * s.parts.length), { kind: 'stack-bias', stack: s });
    }
    for (const lins of s.sources) for (const lin of lins) lin.members.forEach((m) => consumed.add(m));
  }
  const copied = place.copyRest();
  // MXFP4 has no global scale, hence no fused groups sharing one.
  return { scheme: 'mxfp4', layout, dtype, shards: place.shards(), dense, groups: [], stacks, ignored: [], copied, scans: new ScaleScans() };
}
