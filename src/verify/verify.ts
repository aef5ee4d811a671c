// `marlin-fp4 verify`: proves a converted checkpoint against its NVFP4 source. An
// orchestrator over small steps, in this order:
//
// 1. integrity-step: the manifest's files and checksums, the source's checksums, manifest vs
//    config.json.
// 2. Per converted module (units: from the plan convert makes of the source, the same
//    expectations convert wrote from): structure (tensors, bytes, padding, scales, globals,
//    input scales), then GEMMs for the selected layers (gemm-checks), then the metadata
//    claims (records-step).
// 3. copied: every tensor the plan copies is there unchanged.
// 4. leftovers: no packed FP4 (U8) tensor or NVFP4 block scales outside a converted module.
//
// A new check is a new step: a function over the VerifyContext that adds to its errors and
// warnings (or to a layer's report), called from here.
import { join, resolve } from 'node:path';
import { InputError } from '../errors.js';
import { MANIFEST_FILE } from '../format/manifest.js';
import { readManifest } from '../integrity/manifest-check.js';
import { openCheckpoint, type Checkpoint } from '../checkpoint/model-dir.js';
import { detectFormat, requireConvertible } from '../checkpoint/flavour.js';
import { planSource } from '../plan/source-plan.js';
import { resolveBackend, setThreads, type ActDtype, type LayoutVersion } from '../transform/marlin.js';
import { defaultTolerance, referenceEngine } from './gemm.js';
import type { VerifyContext } from './context.js';
import { checkCopied } from './copied.js';
import { checkGemms } from './gemm-checks.js';
import { checkIntegrity } from './integrity-step.js';
import { checkLeftovers } from './leftovers.js';
import { claimErrors, readClaims } from './records-step.js';
import type { LayerReport, VerifyOptions, VerifyReport } from './report.js';
import { selectLayers } from './select.js';
import { checkStructure } from './structure.js';
import { outputTensors, unitsOf } from './units.js';

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
    const config = join(dir, 'config.json');
    if (det.format !== 'marlin-fp4') throw new InputError(`${config}: quantization_config.quant_method is not marlin_fp4 (is this a converted directory?)`);
    if (det.layout !== 'v1' && det.layout !== 'v2') throw new InputError(`${config}: quantization_config.layout ${det.layout} is not v1 or v2`);
    if (det.dtype !== 'float16' && det.dtype !== 'bfloat16') throw new InputError(`${config}: quantization_config.activation_dtype ${det.dtype} is not float16 or bfloat16`);
    const layout: LayoutVersion = det.layout;
    const dtype: ActDtype = det.dtype;
    src = await openCheckpoint(sourceDir).catch((e) => {
      if (e instanceof InputError) throw new InputError(`source ${sourceDir}: ${e.message}`);
      throw e;
    });
    // The expectations: what convert makes of this source under this layout and dtype.
    const plan = await planSource(src, requireConvertible(src), { layout, dtype });
    const ctx: VerifyContext = {
      dir,
      out,
      sourceDir,
      src,
      manifest,
      plan,
      outputs: outputTensors(plan),
      layout,
      dtype,
      backend,
      ms,
      tolerance: opts.tolerance ?? defaultTolerance(dtype),
      opts,
      errors: [],
      warnings: [],
      counts: { tensors: 0, gemms: 0 },
    };
    const units = unitsOf(plan, ctx.outputs);

    await checkIntegrity(ctx);
    const claims = readClaims(ctx, units);
    const selected = selectLayers(
      units.map((u) => u.name),
      opts.layers ?? 'all',
    );
    const total = units.length + selected.size;
    let done = 0;
    const layers: LayerReport[] = [];
    for (const u of units) {
      opts.onProgress?.({ done: done++, total, layer: u.name, stage: 'structure' });
      const rep: LayerReport = { name: u.name, kind: u.kind, n: 0, k: 0, np: 0, kp: 0, sf: 1, errors: [], zeroed_scales: 0, pass: false };
      if (u.stack) rep.experts = u.experts.length;
      layers.push(rep);
      const loaded = await checkStructure(ctx, u, rep);
      // Listed after the tensors' problems, which say more.
      rep.errors.push(...claimErrors(ctx, claims, u));
      if (selected.has(u.name)) {
        opts.onProgress?.({ done: done++, total, layer: u.name, stage: 'gemm' });
        if (loaded) await checkGemms(ctx, u, rep, loaded);
        else rep.gemm = [];
      }
      rep.pass = rep.errors.length === 0 && (rep.gemm ?? []).every((g) => g.pass) && (rep.gemm === undefined || rep.gemm.length > 0);
      if (layout === 'v1' && dtype === 'bfloat16' && loaded && u.scales.subnormal > 0) {
        ctx.warnings.push(`${u.name}: ${u.scales.subnormal} block scales below 2^-6, which the v1 bfloat16 kernel decodes wrongly (not emulated by this check)`);
      }
      if (rep.reencoded_max_relative_change !== undefined) {
        ctx.warnings.push(
          `${u.name}: block scales re-encoded onto a shared global scale (FORMAT.md §8.1): checked against the source within the E4M3 rounding bound; ` +
            `largest relative change of a dequantized weight ${(100 * rep.reencoded_max_relative_change).toPrecision(3)}%`,
        );
      }
      if (rep.zeroed_scales > 0) ctx.warnings.push(`${u.name}: layout v2 (${dtype}) set ${rep.zeroed_scales} non-zero block scales to 0 (expected; that data is lost)`);
    }
    const copiedChecked = opts.skipCopied ? 0 : await checkCopied(ctx);
    checkLeftovers(ctx);

    const failed = layers.filter((l) => !l.pass).map((l) => l.name);
    return {
      converted: dir,
      source: sourceDir,
      layout,
      activation_dtype: dtype,
      device: backend,
      reference_engine: referenceEngine(backend),
      m: ms,
      tolerance: ctx.tolerance,
      layers_checked: layers.length,
      layers_gemm: selected.size,
      tensors_checked: ctx.counts.tensors,
      copied_checked: copiedChecked,
      gemms: ctx.counts.gemms,
      layers,
      errors: ctx.errors,
      warnings: ctx.warnings,
      failed_layers: failed,
      passed: failed.length === 0 && ctx.errors.length === 0,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await out.close();
    await src?.close();
  }
}
