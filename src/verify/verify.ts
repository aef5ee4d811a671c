// `marlin-fp4 verify`: proves a converted checkpoint against its NVFP4 source. An
// orchestrator over small steps that share a VerifyContext:
//
// - integrity-step (--checks integrity): the manifest's files and checksums, the source's
//   shards hashed and compared with the ones converted; on worker threads from the start,
//   awaited at the end.
// - files-step (structure): every file of the output is one convert writes, with its content
//   (config.json, index, side files, each shard's tensor set and metadata).
// - per converted module (units: from the plan convert makes of the source), streamed expert
//   by expert (unit-step): structure, then GEMMs for the selected layers (gemm-checks), then
//   the metadata claims (records-step). Modules run side by side in lanes, reads overlapping
//   checks; buffers come from one pool (page-locked for the GPU).
// - copied (structure): every tensor the plan copies is there unchanged, compared in pieces,
//   beside the modules (its reads overlap their checks instead of adding a tail to the run).
// - leftovers (structure): no packed FP4 (U8) tensor or NVFP4 block scales outside a converted module.
//
// A new check is a new step: a function over the VerifyContext that adds to its errors and
// warnings (or to a layer's report), called from here.
import { join, resolve } from 'node:path';
import { InputError } from '../errors.js';
import { MANIFEST_FILE } from '../format/manifest.js';
import { readManifest } from '../integrity/manifest-check.js';
import { openCheckpoint, type Checkpoint } from '../checkpoint/model-dir.js';
import { detectFormat, requireConvertible } from '../checkpoint/flavour.js';
import { BufferPool } from '../convert/buffer-pool.js';
import { forEachLimited } from '../convert/write-shard.js';
import { planSource } from '../plan/source-plan.js';
import { resolveBackend, setThreads, type ActDtype, type Backend, type LayoutVersion } from '../transform/marlin.js';
import { parseChecks } from './checks.js';
import { gemmEngine } from './gemm.js';
import type { VerifyContext } from './context.js';
import { checkCopied } from './copied.js';
import { checkFiles } from './files-step.js';
import { worstPerM } from './gemm-checks.js';
import { checkIntegrity, manifestAgrees, type IntegrityResult } from './integrity-step.js';
import { checkLeftovers } from './leftovers.js';
import { claimErrors, readClaims } from './records-step.js';
import type { LayerReport, VerifyOptions, VerifyReport } from './report.js';
import { selectLayers } from './select.js';
import { StageTimes } from './stage-times.js';
import { checkUnit } from './unit-step.js';
import { outputTensors, unitsOf } from './units.js';

/**
 * Modules checked side by side (MARLIN_FP4_VERIFY_LANES overrides): on the CPU the native
 * calls use every core already, two lanes let one read while the other computes; the GPU
 * path waits on copies and the device, four keep it fed.
 */
function lanes(backend: Backend): number {
  const v = Number(process.env.MARLIN_FP4_VERIFY_LANES);
  return Number.isInteger(v) && v > 0 ? v : backend === 'cuda' ? 4 : 2;
}

export async function verifyCheckpoint(opts: VerifyOptions = {}): Promise<VerifyReport> {
  const started = performance.now();
  const times = new StageTimes();
  const checks = parseChecks(opts.checks);
  if (opts.threads !== undefined) setThreads(opts.threads);
  const backend = await resolveBackend(opts.device ?? 'auto');
  const dir = resolve(opts.dir ?? process.cwd());
  const ms = opts.m ?? [1, 16, 128];
  if (ms.length === 0 || ms.some((m) => !Number.isInteger(m) || m < 1)) throw new InputError(`--m ${ms.join(',')}: every M must be a whole number >= 1`);
  const manifestPath = join(dir, MANIFEST_FILE);
  const manifest = await readManifest(dir);
  const sourceDir = resolve(opts.source ?? manifest.source?.path ?? '');
  if (!opts.source && !manifest.source?.path) throw new InputError(`${manifestPath}: records no source path; pass --source <nvfp4-dir>`);

  const t0 = performance.now();
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
    const convertible = requireConvertible(src);
    const flavour = convertible.flavour;
    const plan = await planSource(src, convertible, { layout, dtype });
    times.add('open_and_plan', performance.now() - t0);
    const engine = gemmEngine(backend);
    const lanesNow = lanes(backend);
    const ctx: VerifyContext = {
      dir,
      out,
      sourceDir,
      src,
      flavour,
      sourceNamed: opts.sourceNamed ?? opts.source !== undefined,
      manifest,
      plan,
      outputs: outputTensors(plan),
      layout,
      dtype,
      backend,
      checks,
      engine,
      ms,
      tolerance: opts.tolerance ?? engine.tolerance(dtype),
      opts,
      pool: new BufferPool(16 * lanesNow, backend === 'cuda' && process.env.MARLIN_FP4_PIN !== '0'),
      times,
      errors: [],
      warnings: [],
      counts: { tensors: 0, gemms: 0, bytesRead: 0 },
    };
    const units = unitsOf(plan, ctx.outputs);

    // Hashing runs on worker threads beside everything below.
    const integrity: Promise<IntegrityResult> | undefined = checks.has('integrity') ? times.time('integrity', checkIntegrity(ctx)) : undefined;
    integrity?.catch(() => {}); // awaited below
    const agree = manifestAgrees(ctx);
    if (checks.has('structure')) await times.time('files', checkFiles(ctx));
    const claims = readClaims(ctx, units);
    // The copied tensors' comparison runs beside the modules; its errors join ctx.errors (in the
    // source's order) when it ends, before the leftovers' below.
    const copied = opts.skipCopied || !checks.has('structure') ? undefined : times.time('copied', checkCopied(ctx, lanesNow));
    copied?.catch(() => {}); // awaited below
    const selected = checks.has('gemm') ? selectLayers(units.map((u) => u.name), opts.layers ?? 'all') : new Set<string>();
    const total = units.length;
    let done = 0;
    const layers: LayerReport[] = units.map((u) => {
      const rep: LayerReport = { name: u.name, kind: u.kind, n: u.shape.n, k: u.shape.k, np: u.shape.np, kp: u.shape.kp, sf: u.scales.sf, errors: [], zeroed_scales: 0, pass: false };
      if (u.stack) rep.experts = u.experts.length;
      return rep;
    });
    await forEachLimited([...units.keys()], lanesNow, async (i) => {
      const u = units[i]!;
      const rep = layers[i]!;
      const gemm = selected.has(u.name);
      opts.onProgress?.({ done: done++, total, layer: u.name, stage: gemm ? 'gemm' : 'structure' });
      await checkUnit(ctx, u, rep, gemm);
      // Listed after the tensors' problems, which say more.
      if (checks.has('structure')) rep.errors.push(...claimErrors(ctx, claims, u));
      if (gemm) worstPerM(ctx, rep);
      rep.pass = rep.errors.length === 0 && (rep.gemm ?? []).every((g) => g.pass) && (rep.gemm === undefined || rep.gemm.length > 0);
    });
    for (const [i, u] of units.entries()) {
      const rep = layers[i]!;
      if (layout === 'v1' && dtype === 'bfloat16' && u.scales.subnormal > 0) {
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
    const copiedChecked = (await copied) ?? 0;
    if (checks.has('structure')) checkLeftovers(ctx);
    const ir = await integrity;

    const failed = layers.filter((l) => !l.pass).map((l) => l.name);
    const errors = [...(ir?.errors ?? []), ...agree, ...ctx.errors];
    return {
      converted: dir,
      source: sourceDir,
      ...(ir ? { source_files: ir.source } : {}),
      checks: [...checks],
      layout,
      activation_dtype: dtype,
      device: backend,
      reference_engine: engine.reference,
      m: ms,
      tolerance: ctx.tolerance,
      layers_checked: layers.length,
      layers_gemm: selected.size,
      tensors_checked: ctx.counts.tensors,
      copied_checked: copiedChecked,
      gemms: ctx.counts.gemms,
      layers,
      errors,
      warnings: [...(ir?.warnings ?? []), ...ctx.warnings],
      failed_layers: failed,
      passed: failed.length === 0 && errors.length === 0,
      seconds: (performance.now() - started) / 1000,
      stages: times.seconds(),
      bytes_read: ctx.counts.bytesRead,
      peak_rss_bytes: process.resourceUsage().maxRSS * 1024,
    };
  } finally {
    await out.close();
    await src?.close();
  }
}
