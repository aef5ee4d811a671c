// The conversion plan: every output tensor with its name, dtype, shape, shard and how its
// bytes are produced. Everything that can be checked without reading weights is checked here,
// before anything is written.
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { shardPositions, type Checkpoint, type TensorRef } from '../checkpoint/model-dir.js';
import type { Flavour } from '../checkpoint/flavour.js';
import type { Scheme } from '../format/quant-config.js';
import { DTYPE_SIZE } from '../safetensors/index.js';
import { linearShape, type ActDtype, type LayoutVersion, type LinearShape } from '../transform/marlin.js';
import { stackName, stacksOf, stackPartShape, stackSizes, type ExpertRole, type StackSizes, type StackWhich } from '../format/moe.js';
import { biasTensor, inputScaleTensor, moduleTensors, type ModuleKind, type OutputLayout, type TensorSpec } from '../format/tensors.js';
import { asInputError, expertPart, findLinears, isBlockScale, isPackedFp4, where, type ExpertGroup, type FoundLinears, type LinearSource } from './linears.js';
import { globalScale, inputScale, readGlobalScale, readInputScale } from './global-scales.js';
import { planScales, type ScaleOutcome, type ScalePart, type ScanBuffer } from './scale-plan.js';
import { ScaleScans } from './scale-scans.js';
import { mapLimited, readSmallTensors } from '../checkpoint/read-batch.js';
import { findFusedGroups, globalsDiffer, partReencoding, sharedGlobal, strictRefusal, type FusedGroup } from './fused-groups.js';
import type { Reencoding } from '../transform/reencode.js';

export interface DenseLinear {
  source: LinearSource;
  shape: LinearShape;
  /** The global scale the output encodes: the linear's own, or its fused group's shared one; NaN for MXFP4, which has none (nothing reads it). */
  ws2: number;
  /** The linear's own global scale (ModelOpt's weight_scale_2). */
  sourceWs2: number;
  inputScale?: number;
  /** sf is the fused group's where the linear is in one; the counts are the linear's own. */
  scales: ScaleOutcome;
  /** The fused group (q/k/v, gate/up) the linear is part of. */
  group?: FusedGroup<DenseLinear>;
  /** How its block scales move onto the group's shared global, where its own global differs. */
  reencoding?: Reencoding;
}

export interface MoeStack {
  /** The experts' prefix Q, e.g. model.layers.3.mlp.experts */
  prefix: string;
  /** sources[e] = expert e's source linears, in output column order (one per part). */
  sources: LinearSource[][];
  /** 'w13' (gate then up along N; gpt-oss: its interleaved rows) or 'w2' (down). */
  which: StackWhich;
  kind: ModuleKind;
  /** The group's hidden and intermediate sizes (and the padded intermediate). */
  sizes: StackSizes;
  /** Shape of one part (gate, up or down) of one expert. */
  part: LinearShape;
  /** The parts' names (gate, up, down; gpt-oss: gate_up), in column order. */
  parts: string[];
  /** Global scale per expert as stored: the largest of its parts' (sharedGlobal); empty for MXFP4. */
  ws2: number[];
  /** reencodings[e][p]: how part p of expert e moves onto ws2[e], where its own global differs (none for MXFP4). */
  reencodings: (Reencoding | undefined)[][];
  /** One scale factor for the whole stack (1 for MXFP4). */
  scales: ScaleOutcome;
  /** gpt-oss: the source's [E, N] bias tensor, written as `Q_bias` (FORMAT.md section 5.1 step 5). */
  bias?: string;
  /** gpt-oss w13: gate/up rows interleaved as the checkpoint has them. */
  interleaved?: boolean;
  /** NVFP4 stacks: gate+up experts (w13 = gate then up) or up-only ones (w13 = up alone, FORMAT.md 6.2). */
  gated?: boolean;
}

export type Producer =
  | { kind: 'copy'; tensor: string }
  | { kind: 'dense-weight' | 'dense-scales' | 'dense-global'; linear: DenseLinear }
  | { kind: 'input-scale'; value: number }
  | { kind: 'bias'; linear: DenseLinear }
  | { kind: 'stack-weight' | 'stack-scales' | 'stack-global' | 'stack-bias'; stack: MoeStack };

/** An output tensor: its spec (from format/) and how its bytes are made. */
export interface OutputTensor extends TensorSpec {
  producer: Producer;
}

export interface OutputShard {
  file: string;
  tensors: OutputTensor[];
}

export interface Plan {
  scheme: Scheme;
  layout: LayoutVersion;
  dtype: ActDtype;
  shards: OutputShard[];
  dense: DenseLinear[];
  /** Dense linears that share one scale factor and global scale (q/k/v, gate/up). */
  groups: FusedGroup<DenseLinear>[];
  stacks: MoeStack[];
  /** Quantized modules kept as they are because the exclude/ignore list names them. */
  ignored: string[];
  copied: number;
  /** The block-scale scans; all done unless PlanOptions.deferScans. */
  scans: ScaleScans;
}

export interface PlanOptions {
  layout: LayoutVersion;
  dtype: ActDtype;
  /**
   * Read every block-scale tensor for v2's scale factors and the layout's losses (default
   * true). false (inspect's size estimate) reads no block scale: every ScaleOutcome is then
   * the placeholder { sf: 1, lost: 0, subnormal: 0 }, and the plan must not be written.
   */
  scanScales?: boolean;
  /** Refuse fused parts (dense or MoE gate/up) whose global scales differ instead of re-encoding them. */
  strict?: boolean;
  /**
   * Leave the block-scale scans to the caller (convert overlaps them with the first shards):
   * plan.scans holds them, started while planning but not awaited, and a module's
   * ScaleOutcome is the placeholder until plan.scans.ready() of it has resolved.
   */
  deferScans?: boolean;
}

/** Scans run side by side (each reads its scale tensors a batch at a time: scale-plan.ts). */
export const SCANS_AT_ONCE = 4;
/** Scalar tensors (global and input scales) read side by side while planning. */
const SCALARS_AT_ONCE = 16;

const UNSCANNED: ScaleOutcome = { sf: 1, lost: 0, subnormal: 0 };

/** A converted module's name: a dense linear's prefix, or a stack's `<experts prefix>.w13` / `.w2`. */
export function moduleName(m: DenseLinear | MoeStack): string {
  return 'source' in m ? m.source.prefix : stackName(m.prefix, m.which);
}

/** The converted modules whose tensors a shard holds (what its header's records need scanned). */
export function shardModules(shard: OutputShard): (DenseLinear | MoeStack)[] {
  const out = new Set<DenseLinear | MoeStack>();
  for (const { producer: p } of shard.tensors) {
    if ('linear' in p) out.add(p.linear);
    else if ('stack' in p) out.add(p.stack);
  }
  return [...out];
}

export function tensorBytes(t: Pick<OutputTensor, 'dtype' | 'shape'>): number {
  return t.shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[t.dtype];
}

/** Activation dtype: the option, else config.json's torch_dtype (or dtype). */
export function activationDtype(ckpt: Checkpoint, option?: string): ActDtype {
  const raw = option ?? ckpt.config.torch_dtype ?? ckpt.config.dtype ?? (ckpt.config.text_config as Record<string, unknown> | undefined)?.torch_dtype;
  if (raw === 'float16' || raw === 'bfloat16') return raw;
  if (option !== undefined) throw new InputError(`--dtype ${option}: must be float16 or bfloat16`);
  throw new InputError(
    `${join(ckpt.dir, 'config.json')}: torch_dtype is ${raw === undefined ? 'missing' : JSON.stringify(raw)}; pass --dtype float16 or --dtype bfloat16`,
  );
}

/** A dense linear's shape under the layout, with its bias checked (an InputError otherwise). */
export function denseShape(ckpt: Checkpoint, lin: LinearSource, layout: LayoutVersion): LinearShape {
  const w = ckpt.tensors.get(lin.weight)!.entry;
  const s = ckpt.tensors.get(lin.scale)!.entry;
  let shape: LinearShape;
  try {
    shape = linearShape(lin.weight, layout, w.shape, s.shape);
  } catch (e) {
    asInputError(ckpt, e);
  }
  if (lin.bias) {
    const b = ckpt.tensors.get(lin.bias)!.entry;
    if (layout === 'v1') throw new InputError(`${where(ckpt, lin.bias)}: layout v1 does not handle a linear bias; use --layout v2`);
    if (b.shape.length !== 1 || b.shape[0] !== shape.n) throw new InputError(`${where(ckpt, lin.bias)}: bias shape [${b.shape.join(', ')}] is not [${shape.n}]`);
    if (!['F16', 'BF16', 'F32'].includes(b.dtype)) throw new InputError(`${where(ckpt, lin.bias)}: bias dtype ${b.dtype} is not a float type`);
  }
  return shape;
}

async function planDense(ckpt: Checkpoint, lin: LinearSource, { layout }: PlanOptions): Promise<DenseLinear> {
  const shape = denseShape(ckpt, lin, layout);
  const ws2 = await readGlobalScale(ckpt, lin);
  return { source: lin, shape, ws2, sourceWs2: ws2, inputScale: await readInputScale(ckpt, lin), scales: UNSCANNED };
}

/**
 * Fused groups share the largest of their parts' global scales and one scale factor over all
 * their (re-encoded) block scales; every other dense linear has its own.
 */
async function planDenseScales(
  ckpt: Checkpoint,
  dense: DenseLinear[],
  { layout, dtype, scanScales, strict }: PlanOptions,
  scans: ScaleScans,
  rank: ShardRank,
): Promise<FusedGroup<DenseLinear>[]> {
  const groups = findFusedGroups(dense, layout);
  for (const g of groups) {
    if (strict && globalsDiffer(g)) throw strictRefusal(ckpt, g);
    for (const m of g.members) {
      m.group = g;
      m.ws2 = g.shared;
      m.reencoding = partReencoding(m.sourceWs2, g.shared);
    }
  }
  if (scanScales === false) return groups;
  for (const g of groups) {
    scans.add(
      g.members,
      async (scratch) => {
        const { each } = await planScales(ckpt, g.members.map((m): ScalePart => ({ lin: m.source, reencoding: m.reencoding })), layout, dtype, scratch);
        g.members.forEach((m, i) => (m.scales = each[i]!));
      },
      Math.min(...g.members.map((m) => rank(m.source.weight))),
    );
  }
  for (const d of dense) {
    if (!d.group) scans.add([d], async (scratch) => void (d.scales = (await planScales(ckpt, [{ lin: d.source }], layout, dtype, scratch)).all), rank(d.source.weight));
  }
  return groups;
}

/** An expert group's sizes, checked against the layout (an InputError otherwise); ip = padded intermediate. */
export function stackShape(ckpt: Checkpoint, group: ExpertGroup, layout: LayoutVersion): StackSizes {
  const first = group.experts[0]!;
  // w13's first part (gate, or up when non-gated) gives I x H; every part must agree.
  const lead = expertPart(first, group.gated ? 'gate' : 'up');
  const intermediate = lead.n;
  const hidden = lead.k;
  for (const ex of group.experts) {
    for (const role of ['gate', 'up', 'down'] as const) {
      const lin = ex[role];
      if (!lin) continue;
      const [n, k] = role === 'down' ? [hidden, intermediate] : [intermediate, hidden];
      if (lin.n !== n || lin.k !== k) {
        throw new InputError(`${where(ckpt, lin.weight)}: ${lin.prefix} is N x K = ${lin.n} x ${lin.k}, the stack's ${role} is ${n} x ${k} (hidden ${hidden}, intermediate ${intermediate})`);
      }
      if (lin.bias) throw new InputError(`${where(ckpt, lin.bias)}: MoE experts with a bias are not supported`);
    }
  }
  const down = expertPart(first, 'down');
  if (hidden % 64 !== 0) throw new InputError(`${where(ckpt, down.weight)}: hidden size ${hidden} is not a multiple of 64`);
  if (intermediate % 16 !== 0) throw new InputError(`${where(ckpt, lead.weight)}: intermediate size ${intermediate} is not a multiple of 16`);
  if (layout === 'v1' && intermediate % 64 !== 0) {
    throw new InputError(`${where(ckpt, lead.weight)}: intermediate size ${intermediate} is not a multiple of 64: layout v1 cannot pad it (use --layout v2)`);
  }
  return stackSizes(hidden, intermediate, layout);
}

async function planStacks(
  ckpt: Checkpoint,
  group: ExpertGroup,
  { layout, dtype, scanScales, strict }: PlanOptions,
  scans: ScaleScans,
  rank: ShardRank,
): Promise<MoeStack[]> {
  const sizes = stackShape(ckpt, group, layout);
  // Thousands of 4-byte tensors in a big MoE: read together (adjacent ones in one read), then
  // checked in order, so the first bad one is named whatever the reads' timing.
  const roles = ['gate', 'up', 'down'] as const;
  const present = group.experts.flatMap((ex) => roles.filter((r) => ex[r]).map((r) => ex[r]!));
  const data = await readSmallTensors(ckpt, present.map((lin) => lin.global!), SCALARS_AT_ONCE);
  let next = 0;
  const globals: Partial<Record<ExpertRole, number>>[] = group.experts.map((ex) => {
    const g: Partial<Record<ExpertRole, number>> = {};
    for (const r of roles) if (ex[r]) g[r] = globalScale(ckpt, ex[r], data[next++]!);
    return g;
  });
  for (const [e, { gate, up }] of globals.entries()) {
    if (strict && group.gated && gate !== up) {
      const ex = group.experts[e]!;
      throw new InputError(
        `${where(ckpt, expertPart(ex, 'up').global!)}: gate and up projections of ${group.prefix}.${e} have different global scales (${gate} vs ${up}); --strict refuses to re-encode their block scales onto one global`,
      );
    }
  }
  const stacks: MoeStack[] = [];
  for (const { which, kind, parts } of stacksOf(group.gated)) {
    // Per expert, the parts share the largest of their globals; the others are re-encoded onto it.
    const ws2 = globals.map((g) => sharedGlobal(parts.map((p) => g[p]!)));
    const reencodings = globals.map((g, e) => parts.map((p) => partReencoding(g[p]!, ws2[e]!)));
    const scope = group.experts.flatMap((ex, e) => parts.map((p, i): ScalePart => ({ lin: expertPart(ex, p), reencoding: reencodings[e]![i] })));
    const stack: MoeStack = {
      prefix: group.prefix,
      sources: group.experts.map((ex) => parts.map((role) => expertPart(ex, role))),
      gated: group.gated,
      which,
      kind,
      sizes,
      part: stackPartShape(which, sizes),
      parts,
      ws2,
      reencodings,
      scales: UNSCANNED,
    };
    if (scanScales !== false) {
      const run = async (scratch: ScanBuffer) => void (stack.scales = (await planScales(ckpt, scope, layout, dtype, scratch, { each: false })).all);
      scans.add([stack], run, rank(stack.sources[0]![0]!.weight));
    }
    stacks.push(stack);
  }
  return stacks;
}

export async function planConversion(ckpt: Checkpoint, flavour: Flavour, opts: PlanOptions): Promise<Plan> {
  const found = findLinears(ckpt, flavour);
  if (found.dense.length === 0 && found.groups.length === 0) {
    throw new InputError(`${ckpt.dir}: no NVFP4-quantized linear found (its config says ${flavour.kind} NVFP4)`);
  }
  const scans = new ScaleScans();
  // Each scan starts as soon as it is registered (a lane free), the first shards' first,
  // beside the rest of the planning: the reads of global and input scales, the placement.
  if (opts.scanScales !== false) scans.start(SCANS_AT_ONCE);
  try {
    const plan = await planModules(ckpt, found, opts, scans);
    if (!opts.deferScans) await scans.runAll(SCANS_AT_ONCE);
    return plan;
  } catch (e) {
    // No scan may read the checkpoint after the caller has closed it.
    scans.stop(e);
    await scans.settled();
    throw e;
  }
}

/** Orders scans by the shard their module is written to: the index of the shard holding `tensor` (the module's anchor). */
type ShardRank = (tensor: string) => number;

function shardRank(ckpt: Checkpoint): ShardRank {
  const index = shardPositions(ckpt);
  return (tensor) => index.get(ckpt.tensors.get(tensor)!.shard)!;
}

/** planConversion's modules, placement and copies, its scans registered in `scans`. */
async function planModules(ckpt: Checkpoint, found: FoundLinears, opts: PlanOptions, scans: ScaleScans): Promise<Plan> {
  const { layout, dtype } = opts;
  const rank = shardRank(ckpt);
  const dense = await mapLimited(found.dense, SCALARS_AT_ONCE / 2, (lin) => planDense(ckpt, lin, opts));
  const groups = await planDenseScales(ckpt, dense, opts, scans, rank);
  const stacks: MoeStack[] = [];
  for (const g of found.groups) stacks.push(...(await planStacks(ckpt, g, opts, scans, rank)));

  const place = new ShardPlacement(ckpt);
  const { consumed } = place;
  const put = place.put;
  const out: OutputLayout = { layout, dtype };

  for (const d of dense) {
    const { prefix, weight } = d.source;
    d.source.members.forEach((m) => consumed.add(m));
    const t = moduleTensors(prefix, 'linear', { part: d.shape, parts: 1 }, out);
    put(weight, t.weight, { kind: 'dense-weight', linear: d });
    put(weight, t.scales, { kind: 'dense-scales', linear: d });
    put(weight, t.global!, { kind: 'dense-global', linear: d });
    if (d.inputScale !== undefined) put(weight, inputScaleTensor(prefix), { kind: 'input-scale', value: d.inputScale });
    if (d.source.bias) {
      const b = ckpt.tensors.get(d.source.bias)!.entry;
      put(weight, biasTensor(prefix, b.dtype, d.shape), { kind: 'bias', linear: d });
    }
  }
  for (const s of stacks) {
    const anchor = s.sources[0]![0]!.weight;
    const t = moduleTensors(moduleName(s), s.kind, { part: s.part, parts: s.parts.length, experts: s.sources.length }, out);
    put(anchor, t.weight, { kind: 'stack-weight', stack: s });
    put(anchor, t.scales, { kind: 'stack-scales', stack: s });
    put(anchor, t.global!, { kind: 'stack-global', stack: s });
    const withInput: LinearSource[] = [];
    for (const lins of s.sources) {
      for (const lin of lins) {
        lin.members.forEach((m) => consumed.add(m));
        // An input scale shared by a 3-D tensor's experts is not a member: it is copied.
        if (lin.inputScale) {
          consumed.add(lin.inputScale);
          withInput.push(lin);
        }
      }
    }
    const raw = await readSmallTensors(ckpt, withInput.map((lin) => lin.inputScale!), SCALARS_AT_ONCE);
    const values = withInput.map((lin, i) => inputScale(ckpt, lin, raw[i]!));
    withInput.forEach((lin, i) => put(lin.inputScale!, inputScaleTensor(lin.prefix), { kind: 'input-scale', value: values[i]! }));
  }
  // The invariant, at the one place copies are decided: packed FP4 or its block scales are
  // never copied (findLinears refuses what it cannot place; this catches anything else).
  const copied = place.copyRest((ref) => {
    if (isPackedFp4(ref.name, ref.entry.dtype) || isBlockScale(ref.name, ref.entry.dtype)) {
      throw new InputError(`${where(ckpt, ref.name)}: ${ref.entry.dtype} ${isBlockScale(ref.name, ref.entry.dtype) ? 'NVFP4 block scales' : 'packed FP4'} that no converted layer uses; marlin-fp4 will not copy it unconverted`);
    }
  });

  const shards = place.shards();
  return { scheme: 'nvfp4', layout, dtype, shards, dense, groups, stacks, ignored: found.ignored, copied, scans };
}

/**
 * Where a plan's output tensors go: each into the shard of the source tensor it is made from
 * (its anchor); every source tensor no converted module consumed is copied into its own shard.
 */
export class ShardPlacement {
  /** Source tensors a converted module reads (never copied). */
  readonly consumed = new Set<string>();
  private readonly byShard: Map<string, OutputTensor[]>;

  constructor(private readonly ckpt: Checkpoint) {
    this.byShard = new Map<string, OutputTensor[]>(ckpt.shards.map((s) => [s, []]));
  }

  /**
   * Places the tensor `spec` made by `producer` in the shard of `anchor`. The output tensor is
   * built field by field: `{ ...spec, producer }` took about 10 µs an object on Node 20 (the
   * spread with a property after it leaves V8's fast path), a tenth of planning an MoE of
   * 37,000 tensors.
   */
  readonly put = (anchor: string, spec: TensorSpec, producer: Producer): void => {
    this.byShard.get(this.ckpt.tensors.get(anchor)!.shard)!.push({ name: spec.name, dtype: spec.dtype, shape: spec.shape, producer });
  };

  /** Copies every source tensor not consumed, each first shown to `check` (which may throw); returns how many. */
  copyRest(check?: (ref: TensorRef) => void): number {
    let copied = 0;
    for (const ref of this.ckpt.tensors.values()) {
      if (this.consumed.has(ref.name)) continue;
      check?.(ref);
      this.put(ref.name, { name: ref.name, dtype: ref.entry.dtype, shape: ref.entry.shape }, { kind: 'copy', tensor: ref.name });
      copied++;
    }
    return copied;
  }

  /** The shards in the source's order, tensors sorted by name; a name given twice is an InputError. */
  shards(): OutputShard[] {
    const names = new Set<string>();
    const shards: OutputShard[] = [];
    for (const [file, tensors] of this.byShard) {
      if (tensors.length === 0) continue;
      tensors.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      for (const t of tensors) {
        if (names.has(t.name)) throw new InputError(`${this.ckpt.dir}: output tensor ${t.name} would be written twice (a source tensor already has that name)`);
        names.add(t.name);
      }
      shards.push({ file, tensors });
    }
    return shards;
  }
}
