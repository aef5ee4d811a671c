// `marlin-fp4 inspect`: what a checkpoint is and what `convert` would do with it, from the
// headers and the scalar global scales only (block scales too with scanScales; never the
// weights). Problems are collected, not thrown: an inspect that finds problems succeeded.
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { openCheckpoint, type Checkpoint, type ShardSource } from '../checkpoint/model-dir.js';
import { detectFormat, flavourProblem, type Detected, type Flavour, type Mxfp4Flavour } from '../checkpoint/flavour.js';
import { inspectMxfp4 } from './mxfp4.js';
import { readJsonObject } from '../checkpoint/json-file.js';
import { MANIFEST_FILE } from '../format/manifest.js';
import { expertPart, findLinears, groupLinears, isBlockScale, isPackedFp4, type ExpertGroup, type FoundLinears, type LinearSource } from '../plan/linears.js';
import { readGlobalScale } from '../plan/global-scales.js';
import { activationDtype, denseShape, planConversion, stackShape, tensorBytes } from '../plan/plan.js';
import { expertReencodeNotice, findFusedGroups, globalsDiffer, reencodeNotice, type GroupableLinear } from '../plan/fused-groups.js';
import type { ActDtype, LayoutVersion } from '../transform/marlin.js';
import { inspectMarlin, type MarlinLayers } from './marlin.js';
import { scanBlockScales, type ScaleScan } from './scales.js';
import type { Problem } from './problem.js';

export interface InspectOptions {
  /** A local model directory. */
  model: string;
  /** Shards read from elsewhere (a Hub repo, by range requests) instead of from `model`. */
  remote?: ShardSource;
  /** Activation dtype to judge for (default: config.json's torch_dtype). */
  dtype?: ActDtype;
  /** Also read every block-scale tensor (1/8 of the weights): negative/NaN scales, v2 losses, v1 bfloat16 subnormals. */
  scanScales?: boolean;
}

export interface ShapeCount {
  n: number;
  k: number;
  count: number;
}

export interface MoeShape {
  experts: number;
  hidden: number;
  intermediate: number;
  /** gate+up experts (true) or up-only ones (false: FORMAT.md section 6.2). */
  gated: boolean;
  count: number;
}

export interface Quantized {
  dense: number;
  dense_shapes: ShapeCount[];
  moe_layers: number;
  moe_shapes: MoeShape[];
  /** Quantized modules that the exclude/ignore list keeps as they are (copied). */
  ignored: string[];
}

export interface LayoutEstimate {
  layout: LayoutVersion;
  /** Every quantized linear meets the layout's shape rules. */
  shapes_ok: boolean;
  /** Output tensor data (padding included, headers not), as convert would write it. */
  tensor_bytes?: number;
  tensors?: number;
  /** Why no estimate could be made (the first problem convert would stop at). */
  unavailable?: string;
}

/** What convert does with one module (its tensors' common prefix). */
export interface ModuleFate {
  name: string;
  /** linear: an NVFP4 linear; moe-experts: a stack of NVFP4 experts; other: not quantized (norms, embeddings, …). */
  kind: 'linear' | 'moe-experts' | 'other';
  /** With convert's default layout (v2): converted, passed through unchanged, or refused (convert would stop). */
  fate: 'converted' | 'passed-through' | 'refused';
  /** Why it is passed through or refused. */
  reason?: string;
  /** Set when layout v1 would refuse it (and v2 not). */
  v1_refused?: string;
  tensors: number;
  bytes: number;
}

export interface Conversion {
  activation_dtype: ActDtype;
  /** Where activation_dtype came from. */
  activation_dtype_from: 'option' | 'config.json' | 'assumed';
  converted: { tensors: number; bytes: number };
  passed_through: { tensors: number; bytes: number };
  layouts: LayoutEstimate[];
}

export interface InspectReport {
  path: string;
  format: Detected['format'];
  flavour?: Flavour['kind'] | Mxfp4Flavour['kind'];
  /** One line: ModelOpt NVFP4, compressed-tensors NVFP4, MXFP4, Marlin FP4 v2 (bfloat16), not quantized (…). */
  description: string;
  marlin?: { layout: string; activation_dtype: string };
  architecture?: string;
  model_type?: string;
  torch_dtype?: string;
  shards: { file: string; bytes: number; tensors: number }[];
  total_bytes: number;
  tensors: number;
  other_files: string[];
  quantized?: Quantized;
  conversion?: Conversion;
  /** With scanScales (NVFP4): what the block scales imply. */
  scales?: ScaleScan;
  /** Already-converted checkpoints: the converted layers and their scale counts. */
  marlin_layers?: MarlinLayers;
  /** Every module with what convert would do with it (NVFP4 checkpoints). */
  modules?: ModuleFate[];
  problems: Problem[];
  /** What convert would do, in one line. */
  verdict: string;
  /** convert (default layout v2) would accept this checkpoint. */
  convertible: boolean;
  seconds: number;
}

const str = (v: unknown) => (typeof v === 'string' ? v : undefined);

function describe(d: Detected): string {
  switch (d.format) {
    case 'nvfp4':
      return `${d.kind === 'modelopt' ? 'ModelOpt' : 'compressed-tensors'} ${d.algo}`;
    case 'mxfp4':
      return `${d.kind === 'gpt-oss' ? 'gpt-oss' : d.kind === 'modelopt' ? 'ModelOpt' : 'compressed-tensors'} MXFP4`;
    case 'marlin-fp4':
      return `Marlin FP4 ${d.layout} (${d.dtype}), already converted`;
    default:
      return `not NVFP4 (${d.description})`;
  }
}

function shapeCounts(items: { n: number; k: number }[]): ShapeCount[] {
  const m = new Map<string, ShapeCount>();
  for (const { n, k } of items) {
    const key = `${n}x${k}`;
    const c = m.get(key) ?? { n, k, count: 0 };
    c.count++;
    m.set(key, c);
  }
  return [...m.values()].sort((a, b) => b.count - a.count || a.n - b.n || a.k - b.k);
}

export function moeShapeCounts(items: { experts: number; hidden: number; intermediate: number; gated: boolean }[]): MoeShape[] {
  const m = new Map<string, MoeShape>();
  for (const { experts, hidden, intermediate, gated } of items) {
    const key = `${experts}/${hidden}/${intermediate}/${gated}`;
    const c = m.get(key) ?? { experts, hidden, intermediate, gated, count: 0 };
    c.count++;
    m.set(key, c);
  }
  return [...m.values()].sort((a, b) => b.count - a.count);
}

const bytesOf = (ckpt: Checkpoint, name: string) => {
  const e = ckpt.tensors.get(name)!.entry;
  return e.end - e.begin;
};

function moeSizes(g: ExpertGroup): { experts: number; hidden: number; intermediate: number; gated: boolean } {
  const lead = expertPart(g.experts[0]!, g.gated ? 'gate' : 'up');
  return { experts: g.experts.length, hidden: lead.k, intermediate: lead.n, gated: g.gated };
}

export async function inspectCheckpoint(opts: InspectOptions): Promise<InspectReport> {
  const started = performance.now();
  const ckpt = await openCheckpoint(opts.model, opts.remote);
  try {
    const det = detectFormat(ckpt);
    const arch = ckpt.config.architectures;
    const report: InspectReport = {
      path: ckpt.dir,
      format: det.format,
      flavour: det.format === 'nvfp4' || det.format === 'mxfp4' ? det.kind : undefined,
      description: describe(det),
      marlin: det.format === 'marlin-fp4' ? { layout: det.layout, activation_dtype: det.dtype } : undefined,
      architecture: Array.isArray(arch) ? arch.map(String).join(', ') : str(arch),
      model_type: str(ckpt.config.model_type),
      torch_dtype: str(ckpt.config.torch_dtype) ?? str(ckpt.config.dtype) ?? str((ckpt.config.text_config as Record<string, unknown> | undefined)?.torch_dtype),
      shards: [],
      total_bytes: 0,
      tensors: ckpt.tensors.size,
      other_files: ckpt.otherFiles,
      // Optional sections, declared here so that the JSON keeps this order.
      quantized: undefined,
      conversion: undefined,
      scales: undefined,
      marlin_layers: undefined,
      modules: undefined,
      problems: [],
      verdict: '',
      convertible: false,
      seconds: 0,
    };
    for (const shard of ckpt.shards) {
      const bytes = ckpt.readers.get(shard)!.header.fileSize;
      report.shards.push({ file: shard, bytes, tensors: ckpt.readers.get(shard)!.header.tensors.size });
      report.total_bytes += bytes;
    }

    if (det.format === 'nvfp4') {
      await inspectNvfp4(ckpt, det, opts, report);
    } else if (det.format === 'marlin-fp4') {
      const manifest = await readJsonObject(join(ckpt.dir, MANIFEST_FILE)).catch(() => undefined);
      const m = await inspectMarlin(ckpt, det, manifest, opts.scanScales ?? false);
      report.marlin_layers = m.layers;
      report.quantized = {
        dense: m.dense.length,
        dense_shapes: shapeCounts(m.dense),
        moe_layers: m.moe.length,
        moe_shapes: moeShapeCounts(m.moe),
        ignored: m.ignored,
      };
      report.problems.push(...m.problems);
      report.verdict = 'already a Marlin FP4 checkpoint: nothing to convert';
    } else if (det.format === 'mxfp4') {
      const { format: _format, ...flavour } = det;
      const m = inspectMxfp4(ckpt, flavour, opts.dtype);
      report.quantized = { dense: m.dense.length, dense_shapes: shapeCounts(m.dense), moe_layers: m.moe.length, moe_shapes: moeShapeCounts(m.moe.map((x) => ({ ...x, gated: true }))), ignored: [] };
      report.conversion = {
        activation_dtype: m.dtype,
        activation_dtype_from: m.dtypeFrom,
        converted: m.converted,
        passed_through: m.passed,
        layouts: [
          { layout: 'v2', shapes_ok: m.v2.unavailable === undefined, ...m.v2 },
          { layout: 'v1', shapes_ok: false, unavailable: 'MXFP4 has one Marlin layout (v2)' },
        ],
      };
      report.problems.push(...m.problems);
      report.convertible = m.problems.length === 0 && m.v2.tensor_bytes !== undefined;
      report.verdict = report.convertible
        ? 'convert would accept it (MXFP4 -> Marlin FP4 v2, bfloat16 only)'
        : `convert would refuse it: ${m.problems.length} problem${m.problems.length === 1 ? '' : 's'}`;
    } else {
      report.verdict = `not an NVFP4 checkpoint (${det.description}): nothing to convert`;
    }
    report.seconds = (performance.now() - started) / 1000;
    return report;
  } finally {
    await ckpt.close();
  }
}

async function inspectNvfp4(ckpt: Checkpoint, flavour: Flavour, opts: InspectOptions, report: InspectReport): Promise<void> {
  const problems = report.problems;
  const configProblem = flavourProblem(flavour);
  if (configProblem) problems.push({ kind: flavour.groupSize !== 16 ? 'group-size' : 'malformed', message: `${ckpt.dir}: ${configProblem}` });

  const missing: string[] = [];
  const found: FoundLinears = findLinears(ckpt, flavour, missing);
  // (One message per distinct problem: a bad ignore pattern, say, fails every linear alike.)
  for (const message of new Set(missing)) problems.push({ kind: /: missing \(/.test(message) ? 'missing' : 'malformed', message });
  const moe = found.groups.map((g) => moeSizes(g));
  report.quantized = {
    dense: found.dense.length,
    dense_shapes: shapeCounts(
      found.dense.map((l) => ({ n: l.n, k: l.k })),
    ),
    moe_layers: found.groups.length,
    moe_shapes: moeShapeCounts(moe),
    ignored: found.ignored,
  };

  // Activation dtype: the option, config.json, or (for the estimate only) bfloat16.
  let dtype: ActDtype;
  let from: Conversion['activation_dtype_from'];
  try {
    dtype = activationDtype(ckpt, opts.dtype);
    from = opts.dtype ? 'option' : 'config.json';
  } catch (e) {
    if (!(e instanceof InputError)) throw e;
    problems.push({ kind: 'dtype', message: e.message });
    dtype = 'bfloat16';
    from = 'assumed';
  }

  // What is converted (every member of a quantized linear) and what is copied.
  const consumed = new Set<string>();
  const all: LinearSource[] = [...found.dense, ...found.groups.flatMap(groupLinears)];
  for (const lin of all) lin.members.forEach((m) => consumed.add(m));
  let convertedBytes = 0;
  for (const name of consumed) convertedBytes += bytesOf(ckpt, name);
  let copiedBytes = 0;
  for (const ref of ckpt.tensors.values()) if (!consumed.has(ref.name)) copiedBytes += ref.entry.end - ref.entry.begin;

  // Global scales (scalars): positive finite, equal across fused shards.
  const ws2 = new Map<LinearSource, number>();
  /** Per module prefix, why convert would refuse it: for v2 (and v1). */
  const refused = { v2: new Map<string, string>(), v1: new Map<string, string>() };
  const groupOf = new Map<LinearSource, string>();
  for (const g of found.groups) for (const l of groupLinears(g)) groupOf.set(l, g.prefix);
  for (const lin of all) {
    try {
      ws2.set(lin, await readGlobalScale(ckpt, lin));
    } catch (e) {
      if (!(e instanceof InputError)) throw e;
      problems.push({ kind: 'global-scale', message: e.message });
      const module = groupOf.get(lin) ?? lin.prefix;
      for (const m of [refused.v2, refused.v1]) if (!m.has(module)) m.set(module, e.message);
    }
  }
  // Fused parts with different global scales: convert re-encodes them (not a problem unless --strict).
  const groupable: GroupableLinear[] = [];
  for (const l of found.dense) {
    if (!ws2.has(l)) continue;
    try {
      groupable.push({ source: l, shape: denseShape(ckpt, l, 'v2'), sourceWs2: ws2.get(l)! });
    } catch (e) {
      if (!(e instanceof InputError)) throw e; // reported below, per layout
    }
  }
  for (const g of findFusedGroups(groupable, 'v2')) {
    if (globalsDiffer(g)) problems.push({ kind: 'fused-global-scale', message: reencodeNotice(g) });
  }
  for (const g of found.groups) {
    g.experts.forEach((ex, e) => {
      if (!ex.gate || !ex.up) return;
      const [a, b] = [ws2.get(ex.gate), ws2.get(ex.up)];
      if (a !== undefined && b !== undefined && a !== b) problems.push({ kind: 'fused-global-scale', message: expertReencodeNotice(`${g.prefix}.${e}`, a, b) });
    });
  }

  // Shape rules and the output estimate, per layout (v2 first: convert's default).
  const layouts: LayoutEstimate[] = [];
  for (const layout of ['v2', 'v1'] as const) {
    const before = problems.length;
    for (const lin of found.dense) {
      try {
        denseShape(ckpt, lin, layout);
      } catch (e) {
        if (!(e instanceof InputError)) throw e;
        problems.push({ kind: 'shape', layout, message: e.message });
        if (!refused[layout].has(lin.prefix)) refused[layout].set(lin.prefix, e.message);
      }
    }
    for (const g of found.groups) {
      try {
        stackShape(ckpt, g, layout);
      } catch (e) {
        if (!(e instanceof InputError)) throw e;
        problems.push({ kind: 'shape', layout, message: e.message });
        if (!refused[layout].has(g.prefix)) refused[layout].set(g.prefix, e.message);
      }
    }
    const est: LayoutEstimate = { layout, shapes_ok: problems.length === before };
    if (est.shapes_ok) {
      try {
        // The same plan convert makes (padding included), without reading the block scales.
        const plan = await planConversion(ckpt, flavour, { layout, dtype, scanScales: false });
        const tensors = plan.shards.flatMap((s) => s.tensors);
        est.tensors = tensors.length;
        est.tensor_bytes = tensors.reduce((a, t) => a + tensorBytes(t), 0);
      } catch (e) {
        if (!(e instanceof InputError)) throw e;
        est.unavailable = e.message;
      }
    } else {
      const n = problems.length - before;
      est.unavailable = `${n} quantized layer${n === 1 ? ' breaks' : 's break'} layout ${layout}'s shape rules`;
    }
    layouts.push(est);
  }
  report.conversion = {
    activation_dtype: dtype,
    activation_dtype_from: from,
    converted: { tensors: consumed.size, bytes: convertedBytes },
    passed_through: { tensors: ckpt.tensors.size - consumed.size, bytes: copiedBytes },
    layouts,
  };

  report.modules = moduleFates(ckpt, found, consumed, refused);

  if (opts.scanScales) {
    const scan = await scanBlockScales(ckpt, found, dtype);
    report.scales = scan.scan;
    problems.push(...scan.problems);
  }

  // Findings convert accepts (with a warning) do not stand in its way.
  const accepted = (p: Problem) => p.kind === 'v1-bfloat16-subnormal' || p.kind === 'fused-global-scale';
  const general = problems.filter((p) => p.layout === undefined && !accepted(p));
  const v2 = layouts[0]!;
  const v1 = layouts[1]!;
  if (all.length === 0 && missing.length === 0) {
    report.verdict = `no NVFP4-quantized linear found (its config says ${flavour.kind} NVFP4): convert would refuse it`;
  } else if (general.length === 0 && v2.tensor_bytes !== undefined) {
    report.convertible = true;
    report.verdict = `convert would accept it with --layout v2${v1.tensor_bytes !== undefined ? ' (and v1)' : ' (not v1)'}`;
  } else if (general.length === 0 && v1.tensor_bytes !== undefined) {
    report.verdict = 'convert would accept it only with --layout v1';
  } else {
    const n = problems.filter((p) => p.layout !== 'v1' && !accepted(p)).length;
    report.verdict = `convert would refuse it: ${n} problem${n === 1 ? '' : 's'}`;
  }
  // A dtype convert can't guess is a problem with a one-flag fix: say so rather than refuse.
  if (from === 'assumed' && general.every((p) => p.kind === 'dtype') && v2.tensor_bytes !== undefined) {
    report.verdict = 'convert would accept it with --dtype float16 or --dtype bfloat16 (config.json gives no torch_dtype)';
  }
}

/** The module a tensor belongs to: its name without the last component. */
const moduleOf = (tensor: string) => (tensor.includes('.') ? tensor.slice(0, tensor.lastIndexOf('.')) : tensor);

/** Every module of an NVFP4 checkpoint, in tensor-name order, with what convert does with it. */
function moduleFates(ckpt: Checkpoint, found: FoundLinears, consumed: Set<string>, refused: { v2: Map<string, string>; v1: Map<string, string> }): ModuleFate[] {
  const out = new Map<string, ModuleFate>();
  const add = (name: string, kind: ModuleFate['kind'], tensor: string) => {
    const m = out.get(name) ?? { name, kind, fate: 'converted' as ModuleFate['fate'], tensors: 0, bytes: 0 };
    m.tensors++;
    m.bytes += bytesOf(ckpt, tensor);
    out.set(name, m);
  };
  const owner = new Map<string, { name: string; kind: ModuleFate['kind'] }>();
  for (const lin of found.dense) for (const t of lin.members) owner.set(t, { name: lin.prefix, kind: 'linear' });
  for (const g of found.groups) for (const l of groupLinears(g)) for (const t of l.members) owner.set(t, { name: g.prefix, kind: 'moe-experts' });
  const ignored = new Set(found.ignored);
  // Packed FP4 or block scales that no converted module takes: convert refuses them (never copies).
  const unplaced = new Set<string>();
  for (const name of [...ckpt.tensors.keys()].sort()) {
    const o = consumed.has(name) ? owner.get(name) : undefined;
    const module = o?.name ?? moduleOf(name);
    add(module, o?.kind ?? (ignored.has(module) ? 'linear' : 'other'), name);
    const dtype = ckpt.tensors.get(name)!.entry.dtype;
    if (!o && (isPackedFp4(name, dtype) || isBlockScale(name, dtype))) unplaced.add(module);
  }
  for (const m of out.values()) {
    if (unplaced.has(m.name)) {
      m.fate = 'refused';
      m.reason = 'packed NVFP4 (U8) or block scales that convert cannot place (see problems); never copied unconverted';
    } else if (ignored.has(m.name)) {
      m.fate = 'passed-through';
      m.reason = 'on the exclude/ignore list of the quantization config';
    } else if (m.kind === 'other') {
      m.fate = 'passed-through';
      m.reason = 'not quantized';
    } else if (refused.v2.has(m.name)) {
      m.fate = 'refused';
      m.reason = refused.v2.get(m.name);
    } else if (refused.v1.has(m.name)) {
      m.v1_refused = refused.v1.get(m.name);
    }
  }
  return [...out.values()];
}
