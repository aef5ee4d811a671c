// `marlin-fp4 verify`: proves a converted checkpoint against its NVFP4 source.
//
// 1. Structural check of every converted layer: tensor names, dtypes and shapes; the packed
//    weight unpacked back equals the source weight byte for byte; the processed scales decoded
//    back equal the source scales with v2's clamp applied (a scale the clamp zeroes must be 0
//    exactly there, nothing else may differ); the padding is zero; the processed global scale
//    is the one the source's weight_scale_2 gives; input scales and copied tensors are unchanged;
//    the metadata (layout, shapes, sf) agrees with config.json and the source.
// 2. Per selected layer, GEMMs at each M on deterministic random activations: the Marlin GEMM
//    on the converted tensors (reading the layout directly) against the reference GEMM on the
//    source (dequantized per FORMAT.md section 1, with v2's clamp applied), by relative
//    Frobenius error against a tolerance.
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { InputError } from '../errors.js';
import { MANIFEST_FILE } from '../convert/write-files.js';
import type { LayerRecord } from '../convert/metadata.js';
import { checkManifest, readManifest } from '../integrity/manifest-check.js';
import { sha256Files } from '../integrity/sha256.js';
import { openCheckpoint, readTensor, type Checkpoint } from '../checkpoint/model-dir.js';
import { detectFormat, requireNvfp4 } from '../checkpoint/flavour.js';
import { findLinears, type ExpertGroup, type LinearSource } from '../plan/linears.js';
import { readGlobalScale, readInputScale } from '../plan/global-scales.js';
import { mergeScaleStats, scaleFactor, scanScales, subnormalScales, type ScaleStats } from '../transform/scale-stats.js';
import {
  decodeScales,
  linearShape,
  moePaddedIntermediate,
  processGlobalScale,
  resolveBackend,
  setThreads,
  unpackWeight,
  type ActDtype,
  type Backend,
  type DeviceChoice,
  type LayoutVersion,
  type LinearShape,
} from '../transform/marlin.js';
import { clampedScales, defaultTolerance, gemmError, gemmMarlin, gemmReference, randomActivations, referenceEngine } from './gemm.js';


export interface VerifyOptions {
  /** The converted directory (default: the current directory). */
  dir?: string;
  /** The NVFP4 source (default: the path the manifest records). */
  source?: string;
  /** GEMM row counts (default 1, 16, 128). */
  m?: number[];
  /** Relative Frobenius error bound (default 2e-3 for float16, 1e-2 for bfloat16). */
  tolerance?: number;
  /** Which layers get GEMMs: 'all', a count N (a deterministic, evenly spread sample), or a regex on the layer name. */
  layers?: string;
  /** MoE experts per stack that get GEMMs: a count (evenly spread sample) or 'all' (default 4). */
  experts?: number | 'all';
  /** Where the GEMMs and inverse transforms run (default auto). */
  device?: DeviceChoice;
  threads?: number;
  /** Skip the byte comparison of copied (unquantized) tensors. */
  skipCopied?: boolean;
  onProgress?(p: { done: number; total: number; layer: string; stage: 'structure' | 'gemm' }): void;
}

export interface GemmCheck {
  m: number;
  expert?: number;
  /** gate / up / down for MoE stacks. */
  part?: string;
  rel_err: number;
  max_abs_err: number;
  /** Only where v2 zeroed scales: the error against the source's exact weights (information). */
  rel_err_vs_exact?: number;
  pass: boolean;
  error?: string;
}

/** A converted module as convert recorded it (name, kind, shapes, sf), with verify's findings. */
export interface LayerReport extends Pick<LayerRecord, 'name' | 'kind' | 'n' | 'k' | 'np' | 'kp' | 'sf' | 'experts'> {
  /** Structural problems (empty when the layer is byte-exact). */
  errors: string[];
  /** Block scales v2 set to 0 (expected differences, data lost by the format). */
  zeroed_scales: number;
  /** Absent when the layer was not selected for GEMMs. */
  gemm?: GemmCheck[];
  /** Worst relative error per M over the layer's GEMMs. */
  worst?: { m: number; rel_err: number; max_abs_err: number }[];
  pass: boolean;
}

export interface VerifyReport {
  converted: string;
  source: string;
  layout: LayoutVersion;
  activation_dtype: ActDtype;
  device: Backend;
  /** What the reference GEMM multiplies with: cpu, cublas (…), cuda-kernel (…). */
  reference_engine: string;
  m: number[];
  tolerance: number;
  layers_checked: number;
  layers_gemm: number;
  tensors_checked: number;
  copied_checked: number;
  gemms: number;
  layers: LayerReport[];
  /** Problems that belong to no layer (missing layers, copied tensors, metadata). */
  errors: string[];
  warnings: string[];
  failed_layers: string[];
  passed: boolean;
  seconds: number;
}

interface RecordLike {
  name: string;
  kind: string;
  layout?: string;
  activation_dtype?: string;
  n?: number;
  k?: number;
  np?: number;
  kp?: number;
  sf?: number;
  experts?: number;
}

/** One converted module as verify sees it: its source linears and its converted tensors. */
interface Unit {
  name: string;
  kind: LayerReport['kind'];
  /** Tensor prefix in the output: P for a dense linear, Q.w13 / Q.w2 for a stack. */
  out: { weight: string; scales: string; global: string };
  /** experts[e] = the source linears of its parts, in output column order. */
  experts: LinearSource[][];
  parts: string[];
  dense?: LinearSource;
  group?: ExpertGroup;
}

function fnv(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** count indices in [0, total) spread evenly, first and last included. */
export function sampleIndices(total: number, count: number): number[] {
  if (count >= total) return [...Array(total).keys()];
  if (count <= 1) return [0];
  const out = new Set<number>();
  for (let i = 0; i < count; i++) out.add(Math.round((i * (total - 1)) / (count - 1)));
  return [...out].sort((a, b) => a - b);
}

/** The layers `--layers` selects, by name. */
export function selectLayers(names: string[], spec: string): Set<string> {
  if (spec === 'all') return new Set(names);
  if (/^\d+$/.test(spec)) {
    const n = Number(spec);
    if (n < 1) throw new InputError(`--layers ${spec}: must be at least 1`);
    return new Set(sampleIndices(names.length, n).map((i) => names[i]!));
  }
  let re: RegExp;
  try {
    re = new RegExp(spec);
  } catch (e) {
    throw new InputError(`--layers ${spec}: not a valid regular expression (${(e as Error).message})`);
  }
  const picked = names.filter((n) => re.test(n));
  if (picked.length === 0) throw new InputError(`--layers ${spec}: matches none of the ${names.length} converted layers`);
  return new Set(picked);
}

function diffBytes(a: Uint8Array, b: Uint8Array): { count: number; first: number } {
  const n = Math.min(a.length, b.length);
  if (a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length))) {
    return { count: 0, first: -1 };
  }
  let count = Math.abs(a.length - b.length);
  let first = -1;
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) {
      if (first < 0) first = i;
      count++;
    }
  }
  if (first < 0) first = n;
  return { count, first };
}

const hex = (v: number | undefined) => (v === undefined ? 'none' : `0x${v.toString(16).padStart(2, '0')}`);

function slab(t: Buffer, e: number, count: number): Buffer {
  const size = t.length / count;
  return t.subarray(e * size, (e + 1) * size);
}

function expectTensor(ckpt: Checkpoint, name: string, dtype: string | string[], shape: number[], errors: string[]): boolean {
  const ref = ckpt.tensors.get(name);
  if (!ref) {
    errors.push(`${name}: missing from the converted checkpoint`);
    return false;
  }
  const dtypes = Array.isArray(dtype) ? dtype : [dtype];
  let ok = true;
  if (!dtypes.includes(ref.entry.dtype)) {
    errors.push(`${name}: dtype ${ref.entry.dtype}, expected ${dtypes.join(' or ')}`);
    ok = false;
  }
  if (ref.entry.shape.join(',') !== shape.join(',')) {
    errors.push(`${name}: shape [${ref.entry.shape.join(', ')}], expected [${shape.join(', ')}]`);
    ok = false;
  }
  return ok;
}

/** Per-layer records that each shard's __metadata__.marlin_fp4 carries. */
function shardRecords(ckpt: Checkpoint, errors: string[]): Map<string, RecordLike & { shardLayout?: string; shardDtype?: string }> {
  const out = new Map<string, RecordLike & { shardLayout?: string; shardDtype?: string }>();
  for (const [shard, reader] of ckpt.readers) {
    const raw = reader.header.metadata.marlin_fp4;
    if (raw === undefined) continue;
    try {
      const meta = JSON.parse(raw) as { layout?: string; activation_dtype?: string; layers?: RecordLike[] };
      for (const r of meta.layers ?? []) out.set(r.name, { ...r, shardLayout: meta.layout, shardDtype: meta.activation_dtype });
    } catch {
      errors.push(`${shard}: __metadata__.marlin_fp4 is not valid JSON`);
    }
  }
  return out;
}

function units(found: { dense: LinearSource[]; groups: ExpertGroup[] }): Unit[] {
  const out: Unit[] = [];
  for (const d of found.dense) {
    out.push({
      name: d.prefix,
      kind: 'linear',
      out: { weight: `${d.prefix}.weight`, scales: `${d.prefix}.weight_scale`, global: `${d.prefix}.weight_scale_2` },
      experts: [[d]],
      parts: [d.prefix.slice(d.prefix.lastIndexOf('.') + 1)],
      dense: d,
    });
  }
  for (const g of found.groups) {
    for (const which of ['w13', 'w2'] as const) {
      const q = `${g.prefix}.${which}`;
      out.push({
        name: q,
        kind: which === 'w13' ? 'moe-w13' : 'moe-w2',
        out: { weight: `${q}_weight`, scales: `${q}_weight_scale`, global: `${q}_weight_scale_2` },
        experts: g.experts.map((ex) => (which === 'w13' ? [ex.gate, ex.up] : [ex.down])),
        parts: which === 'w13' ? ['gate', 'up'] : ['down'],
        group: g,
      });
    }
  }
  // Natural order: layers.2 before layers.10.
  return out.sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }));
}

interface Loaded {
  shape: LinearShape;
  sf: number;
  subnormal: number;
  /** Per expert, per part: source weight, source scales, weight_scale_2. */
  src: { weight: Buffer; scale: Buffer; ws2: number }[][];
  weight?: Buffer;
  scales?: Buffer;
  global?: Buffer;
}

export async function verifyCheckpoint(opts: VerifyOptions = {}): Promise<VerifyReport> {
  const started = performance.now();
  if (opts.threads !== undefined) setThreads(opts.threads);
  const backend = resolveBackend(opts.device ?? 'auto');
  const dir = resolve(opts.dir ?? process.cwd());
  const ms = opts.m ?? [1, 16, 128];
  if (ms.length === 0 || ms.some((m) => !Number.isInteger(m) || m < 1)) throw new InputError(`--m ${ms.join(',')}: every M must be a whole number >= 1`);
  const manifestPath = join(dir, MANIFEST_FILE);
  const manifest = await readManifest(dir);
  const sourceDir = resolve(opts.source ?? manifest.source?.path ?? '');
  if (!opts.source && !manifest.source?.path) throw new InputError(`${manifestPath}: records no source path; pass --source <nvfp4-dir>`);

  const out = await openCheckpoint(dir);
  let src: Checkpoint | undefined;
  try {
    const det = detectFormat(out);
    if (det.format !== 'marlin-fp4') throw new InputError(`${join(dir, 'config.json')}: quantization_config.quant_method is not marlin_fp4 (is this a converted directory?)`);
    if (det.layout !== 'v1' && det.layout !== 'v2') throw new InputError(`${join(dir, 'config.json')}: quantization_config.layout ${det.layout} is not v1 or v2`);
    if (det.dtype !== 'float16' && det.dtype !== 'bfloat16') {
      throw new InputError(`${join(dir, 'config.json')}: quantization_config.activation_dtype ${det.dtype} is not float16 or bfloat16`);
    }
    const layout: LayoutVersion = det.layout;
    const dtype: ActDtype = det.dtype;
    const tolerance = opts.tolerance ?? defaultTolerance(dtype);
    src = await openCheckpoint(sourceDir).catch((e) => {
      if (e instanceof InputError) throw new InputError(`source ${sourceDir}: ${e.message}`);
      throw e;
    });
    const flavour = requireNvfp4(src);
    const found = findLinears(src, flavour);
    const all = units(found);
    const errors: string[] = [];
    const warnings: string[] = [];
    // Integrity first: a file changed after conversion, or a source that is not the one
    // converted, is reported before anything is recomputed.
    const integrity = await checkManifest(dir, manifest).catch((e: Error) => {
      errors.push(`${MANIFEST_FILE}: ${e.message}`);
      return undefined;
    });
    for (const p of integrity?.problems ?? []) errors.push(`integrity: ${p.file}: ${p.reason}`);
    if (integrity && !integrity.hasChecksums) warnings.push(`${MANIFEST_FILE} holds no checksums (converted with --no-checksums): files were not checked for changes`);
    const recordedSource = manifest.source?.shards ?? [];
    if (recordedSource.some((f) => f.sha256)) {
      // A different source is not by itself a fault of the converted checkpoint (an equivalent
      // source verifies), so this is a warning; the structural checks below decide.
      const missing = recordedSource.filter((f) => !existsSync(join(sourceDir, f.name)));
      const digests = await sha256Files(recordedSource.filter((f) => !missing.includes(f)).map((f) => join(sourceDir, f.name)));
      const differ = recordedSource.filter((f) => f.sha256 && digests.get(join(sourceDir, f.name)) && digests.get(join(sourceDir, f.name))!.sha256 !== f.sha256);
      if (missing.length || differ.length) {
        warnings.push(
          `source ${sourceDir} is not the checkpoint that was converted (${[...missing.map((f) => `${f.name} missing`), ...differ.map((f) => `${f.name} has another sha256`)].join(', ')}): verifying against it as given`,
        );
      }
    }
    if (manifest.layout !== layout) errors.push(`${MANIFEST_FILE} says layout ${manifest.layout}, config.json says ${layout}`);
    if (manifest.activation_dtype !== dtype) errors.push(`${MANIFEST_FILE} says activation dtype ${manifest.activation_dtype}, config.json says ${dtype}`);
    const manifestRecords = new Map((manifest.layers ?? []).map((r) => [r.name, r]));
    const shardRecs = shardRecords(out, errors);
    for (const name of manifestRecords.keys()) {
      if (!all.some((u) => u.name === name)) errors.push(`${name}: listed in ${MANIFEST_FILE} but the source has no such quantized module`);
    }
    const selected = selectLayers(
      all.map((u) => u.name),
      opts.layers ?? 'all',
    );
    const expertsWanted = opts.experts ?? 4;
    const total = all.length + selected.size;
    let done = 0;
    const layers: LayerReport[] = [];
    let tensorsChecked = 0;
    let gemms = 0;

    for (const u of all) {
      opts.onProgress?.({ done: done++, total, layer: u.name, stage: 'structure' });
      const rep: LayerReport = { name: u.name, kind: u.kind, n: 0, k: 0, np: 0, kp: 0, sf: 1, errors: [], zeroed_scales: 0, pass: false };
      if (u.experts.length > 1 || u.group) rep.experts = u.experts.length;
      layers.push(rep);
      const loaded = await structural(u, rep);
      if (selected.has(u.name)) {
        opts.onProgress?.({ done: done++, total, layer: u.name, stage: 'gemm' });
        if (loaded) await gemmChecks(u, rep, loaded);
        else rep.gemm = [];
      }
      rep.pass = rep.errors.length === 0 && (rep.gemm ?? []).every((g) => g.pass) && (rep.gemm === undefined || rep.gemm.length > 0);
      if (layout === 'v1' && dtype === 'bfloat16' && loaded && loaded.subnormal > 0) {
        warnings.push(`${u.name}: ${loaded.subnormal} block scales below 2^-6, which the v1 bfloat16 kernel decodes wrongly (not emulated by this check)`);
      }
      if (rep.zeroed_scales > 0) warnings.push(`${u.name}: layout v2 (${dtype}) set ${rep.zeroed_scales} non-zero block scales to 0 (expected; that data is lost)`);
    }

    let copiedChecked = 0;
    if (!opts.skipCopied) copiedChecked = await checkCopied(src, out, found, errors);

    const failed = layers.filter((l) => !l.pass).map((l) => l.name);
    return {
      converted: dir,
      source: sourceDir,
      layout,
      activation_dtype: dtype,
      device: backend,
      reference_engine: referenceEngine(backend),
      m: ms,
      tolerance,
      layers_checked: layers.length,
      layers_gemm: selected.size,
      tensors_checked: tensorsChecked,
      copied_checked: copiedChecked,
      gemms,
      layers,
      errors,
      warnings,
      failed_layers: failed,
      passed: failed.length === 0 && errors.length === 0,
      seconds: (performance.now() - started) / 1000,
    };

    // --- structural check of one unit; returns what the GEMMs need, or undefined when they cannot run.
    async function structural(u: Unit, rep: LayerReport): Promise<Loaded | undefined> {
      const s = src!;
      const errs = rep.errors;
      // Shape of one part from the source, as the layout pads it.
      const first = u.experts[0]![0]!;
      const w0 = s.tensors.get(first.weight)!.entry;
      const s0 = s.tensors.get(first.scale)!.entry;
      let shape: LinearShape;
      try {
        if (u.kind === 'linear') {
          shape = linearShape(u.name, layout, w0.shape, s0.shape);
        } else {
          const g = u.group!.experts[0]!;
          const I = s.tensors.get(g.gate.weight)!.entry.shape[0]!;
          const H = 2 * s.tensors.get(g.gate.weight)!.entry.shape[1]!;
          const ip = moePaddedIntermediate(I, H, layout);
          shape = u.kind === 'moe-w13' ? { n: I, k: H, np: ip, kp: H } : { n: H, k: I, np: H, kp: ip };
          if (layout === 'v1' && (shape.n % 64 !== 0 || shape.k % 32 !== 0)) throw new Error(`shape [${shape.n}, ${shape.k}] cannot be laid out under v1`);
        }
      } catch (e) {
        errs.push(`cannot be laid out as ${layout}: ${(e as Error).message}`);
        return undefined;
      }
      Object.assign(rep, { n: shape.n, k: shape.k, np: shape.np, kp: shape.kp });

      // Source data and the scale factor a correct conversion derives from it.
      const srcData: Loaded['src'] = [];
      const stats: ScaleStats[] = [];
      for (const parts of u.experts) {
        const row: Loaded['src'][number] = [];
        for (const lin of parts) {
          const [weight, scale, ws2] = await Promise.all([readTensor(s, lin.weight), readTensor(s, lin.scale), readGlobalScale(s, lin)]);
          stats.push(scanScales(lin.scale, scale, shape.k / 16));
          row.push({ weight, scale, ws2 });
        }
        srcData.push(row);
      }
      const merged = mergeScaleStats(stats);
      const sf = scaleFactor(merged, layout, dtype);
      rep.sf = sf;
      const loaded: Loaded = { shape, sf, subnormal: subnormalScales(merged), src: srcData };

      // Metadata: the manifest's and the shard's records must describe this layer as it is
      // (listed after the tensors' problems, which say more).
      const metaErrs: string[] = [];
      const claims = [
        [MANIFEST_FILE, manifestRecords.get(u.name)],
        ['shard metadata', shardRecs.get(u.name)],
      ] as const;
      for (const [where, r] of claims) {
        if (!r) {
          metaErrs.push(`no record in ${where}`);
          continue;
        }
        const want: Record<string, unknown> = { layout, activation_dtype: dtype, n: shape.n, k: shape.k, np: shape.np, kp: shape.kp, sf };
        for (const [key, value] of Object.entries(want)) {
          const got = (r as unknown as Record<string, unknown>)[key];
          if (got !== value) metaErrs.push(`${where} says ${key} = ${JSON.stringify(got)}, expected ${JSON.stringify(value)}`);
        }
      }

      // Tensors: names, dtypes, shapes.
      const E = u.experts.length;
      const P = u.parts.length;
      const lead = u.kind === 'linear' ? [] : [E];
      const globalDtype = layout === 'v2' ? 'F32' : dtype === 'float16' ? 'F16' : 'BF16';
      const rows = shape.kp / 16;
      const okW = expectTensor(out, u.out.weight, 'I32', [...lead, rows, 2 * shape.np * P], errs);
      const okS = expectTensor(out, u.out.scales, 'F8_E4M3', [...lead, rows, shape.np * P], errs);
      const okG = expectTensor(out, u.out.global, globalDtype, u.kind === 'linear' ? [1] : [E], errs);
      tensorsChecked += 3;
      // What can be read is checked even when another tensor is wrong; the GEMMs need all three.
      const [wAll, sAll, gAll] = await Promise.all([
        okW ? readTensor(out, u.out.weight) : undefined,
        okS ? readTensor(out, u.out.scales) : undefined,
        okG ? readTensor(out, u.out.global) : undefined,
      ]);
      Object.assign(loaded, { weight: wAll, scales: sAll, global: gAll });

      // Contents, expert by expert and part by part.
      const gsize = layout === 'v2' ? 4 : 2;
      for (let e = 0; e < E; e++) {
        const who = (p: number) => (u.kind === 'linear' ? '' : `expert ${e} ${u.parts[p]}: `);
        for (let p = 0; p < P; p++) {
          const { weight, scale } = srcData[e]![p]!;
          const where = { totalNp: shape.np * P, colOffset: p * shape.np };
          if (wAll) {
            const wSlab = u.kind === 'linear' ? wAll : slab(wAll, e, E);
            const unpacked = await unpackWeight(u.out.weight, wSlab, shape, where, backend);
            const dw = diffBytes(unpacked.weight, weight);
            if (dw.count > 0) {
              const rb = shape.k / 2;
              const at = `[${Math.floor(dw.first / rb)}, k ${2 * (dw.first % rb)}..${2 * (dw.first % rb) + 1}]`;
              errs.push(`${who(p)}weight: ${dw.count} bytes differ from the source, first at ${at} (${hex(unpacked.weight[dw.first])} vs ${hex(weight[dw.first])})`);
            }
            if (unpacked.paddingNonzero > 0) errs.push(`${who(p)}weight: ${unpacked.paddingNonzero} non-zero 8-byte blocks in the padding`);
          }
          if (!sAll) continue;
          const sSlab = u.kind === 'linear' ? sAll : slab(sAll, e, E);
          const decoded = await decodeScales(u.out.scales, sSlab, shape, { layout, sf }, where, backend);
          const want = clampedScales(scale, layout, sf);
          rep.zeroed_scales += want.lost;
          const ds = diffBytes(decoded.scales, want.scales);
          if (ds.count > 0) {
            const g = shape.k / 16;
            errs.push(
              `${who(p)}weight_scale: ${ds.count} block scales differ from the source${want.lost ? ` (after v2's clamp, which zeroes ${want.lost})` : ''}, ` +
                `first at [${Math.floor(ds.first / g)}, ${ds.first % g}] (decodes to ${hex(decoded.scales[ds.first])}, source ${hex(scale[ds.first])})`,
            );
          }
          if (decoded.paddingNonzero > 0) errs.push(`${who(p)}weight_scale: ${decoded.paddingNonzero} non-zero bytes in the padding`);
        }
        // One global per expert (gate's for w13, checked equal to up's by convert; here against gate).
        const wantG = processGlobalScale(u.name, srcData[e]![0]!.ws2, { layout, dtype, sf });
        const gotG = gAll?.subarray(gsize * e, gsize * (e + 1));
        if (gotG && !Buffer.from(gotG).equals(wantG)) {
          errs.push(`${u.kind === 'linear' ? '' : `expert ${e}: `}weight_scale_2: stored ${gotG.toString('hex')}, expected ${wantG.toString('hex')} from weight_scale_2 ${srcData[e]![0]!.ws2}`);
        }
        if (P > 1 && srcData[e]!.some((x) => x.ws2 !== srcData[e]![0]!.ws2)) errs.push(`expert ${e}: the parts' source global scales differ`);
      }
      // Input scales travel unchanged (ModelOpt's value; compressed-tensors' reciprocal undone).
      for (const parts of u.experts) {
        for (const lin of parts) {
          if (!lin.inputScale) continue;
          const name = `${lin.prefix}.input_scale`;
          if (!expectTensor(out, name, 'F32', [], errs)) continue;
          const want = await readInputScale(s, lin);
          const got = (await readTensor(out, name)).readFloatLE(0);
          if (got !== want) errs.push(`${name}: ${got}, expected ${want}`);
        }
      }
      if (u.dense?.bias && !out.tensors.has(`${u.dense.prefix}.bias`)) errs.push(`${u.dense.prefix}.bias: missing`);
      errs.push(...metaErrs);
      return wAll && sAll && gAll ? loaded : undefined;
    }

    // --- GEMMs of one unit at every M.
    async function gemmChecks(u: Unit, rep: LayerReport, l: Loaded): Promise<void> {
      const checks: GemmCheck[] = [];
      rep.gemm = checks;
      const E = u.experts.length;
      const P = u.parts.length;
      const width = l.shape.np * P;
      const sample = expertsWanted === 'all' ? [...Array(E).keys()] : sampleIndices(E, expertsWanted);
      const gsize = layout === 'v2' ? 4 : 2;
      for (const e of sample) {
        const wSlab = u.kind === 'linear' ? l.weight! : slab(l.weight!, e, E);
        const sSlab = u.kind === 'linear' ? l.scales! : slab(l.scales!, e, E);
        const global = l.global!.subarray(gsize * e, gsize * (e + 1));
        for (const m of ms) {
          const x = randomActivations(m, l.shape.k, dtype, fnv(`${u.name}/${e}/${m}`));
          let y: Float32Array;
          try {
            y = await gemmMarlin(
              { x, m, k: l.shape.k, n: width, np: width, kp: l.shape.kp, layout, dtype, weight: wSlab, scales: sSlab, global, threads: opts.threads },
              backend,
            );
            gemms++;
          } catch (err) {
            checks.push({ m, expert: u.kind === 'linear' ? undefined : e, rel_err: Infinity, max_abs_err: Infinity, pass: false, error: (err as Error).message });
            continue;
          }
          for (let p = 0; p < P; p++) {
            const part = l.src[e]![p]!;
            const kept = clampedScales(part.scale, layout, l.sf);
            const ref = await gemmReference(
              { x, m, n: l.shape.n, k: l.shape.k, weight: part.weight, scale: kept.scales, ws2: part.ws2, dtype, threads: opts.threads },
              backend,
            );
            gemms++;
            const err = gemmError(y, ref, { m, n: l.shape.n, cols: width, col0: p * l.shape.np });
            const c: GemmCheck = { m, rel_err: err.rel, max_abs_err: err.maxAbs, pass: err.rel <= tolerance };
            if (u.kind !== 'linear') {
              c.expert = e;
              c.part = u.parts[p];
            }
            if (kept.lost > 0) {
              const exact = await gemmReference(
                { x, m, n: l.shape.n, k: l.shape.k, weight: part.weight, scale: part.scale, ws2: part.ws2, dtype, threads: opts.threads },
                backend,
              );
              gemms++;
              c.rel_err_vs_exact = gemmError(y, exact, { m, n: l.shape.n, cols: width, col0: p * l.shape.np }).rel;
            }
            if (err.nonFinite > 0) c.error = `${err.nonFinite} outputs are NaN or infinite`;
            checks.push(c);
          }
        }
      }
      rep.worst = ms.map((m) => {
        const at = checks.filter((c) => c.m === m);
        return {
          m,
          rel_err: Math.max(0, ...at.map((c) => c.rel_err)),
          max_abs_err: Math.max(0, ...at.map((c) => c.max_abs_err)),
        };
      });
    }
  } finally {
    await out.close();
    await src?.close();
  }
}

/** Every source tensor that is not part of a quantized module must be in the output unchanged. */
async function checkCopied(src: Checkpoint, out: Checkpoint, found: { dense: LinearSource[]; groups: ExpertGroup[] }, errors: string[]): Promise<number> {
  const consumed = new Set<string>();
  for (const d of found.dense) d.members.forEach((m) => consumed.add(m));
  for (const g of found.groups) for (const ex of g.experts) for (const lin of [ex.gate, ex.up, ex.down]) lin.members.forEach((m) => consumed.add(m));
  let n = 0;
  for (const ref of src.tensors.values()) {
    if (consumed.has(ref.name)) continue;
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
