// `marlin-fp4 convert`: read checkpoint -> plan -> transform -> write, into a staged directory
// that is renamed into place only when everything succeeded.
import { join, resolve } from 'node:path';
import { openCheckpoint } from '../checkpoint/model-dir.js';
import { requireConvertible } from '../checkpoint/flavour.js';
import { activationDtype, SCANS_AT_ONCE, shardModules, tensorBytes } from '../plan/plan.js';
import { planSource } from '../plan/source-plan.js';
import { checkMxfp4Options } from '../plan/mxfp4.js';
import type { Scheme } from '../format/quant-config.js';
import { resolveBackend, setThreads, type ActDtype, type Backend, type DeviceChoice, type LayoutVersion } from '../transform/marlin.js';
import { BufferPool } from './buffer-pool.js';
import { mark, reportProfile, startProfile, timed } from './profile.js';
import { layerRecords } from '../plan/records.js';
import type { LayerRecord } from '../format/records.js';
import type { ManifestFile } from '../format/manifest.js';
import { stageOutput, type StagedOutput } from './output-dir.js';
import { envInteger, fileError } from '../errors.js';
import { forEachLimited, writeShard } from './write-shard.js';
import { copyOtherFiles, writeConfig, writeIndex, writeManifest, writesIndex } from './write-files.js';
import { HashQueue, type FileDigest } from '../integrity/sha256.js';
import { readFile, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Checkpoint } from '../checkpoint/model-dir.js';
import { EnvironmentError } from '../errors.js';
import { VERSION } from '../version.js';
import { CARD_FILE, licenceFiles, writeModelCard, type CardInfo } from './model-card.js';

// Shards converted side by side (MARLIN_FP4_SHARDS_AT_ONCE overrides): writes to one file
// serialize in the kernel, so several files in flight keep the cores copying. With the CPU
// transforms on every core, 2; with the GPU doing them, reading and writing are the whole
// work, and 4 took 2.17 s instead of 2.96 s for a Llama-8B-sized model on the H200 host.
function shardsAtOnce(backend: Backend): number {
  return envInteger('MARLIN_FP4_SHARDS_AT_ONCE', backend === 'cuda' ? 4 : 2, 1, 64);
}

/**
 * An error of the staging directory as the user sees it: paths inside the temporary
 * directory are named inside the output directory they are written for.
 */
function asOutputError(e: unknown, staged: StagedOutput): unknown {
  const err = e as NodeJS.ErrnoException;
  if (err?.code && err.syscall) {
    const path = typeof err.path === 'string' ? err.path.split(staged.tmp).join(staged.dir) : staged.dir;
    return fileError(path, err.syscall === 'open' || err.syscall === 'write' ? 'write' : err.syscall, e, 'output');
  }
  if (e instanceof Error && e.message.includes(staged.tmp)) e.message = e.message.split(staged.tmp).join(staged.dir);
  return e;
}

export interface ConvertOptions {
  model: string;
  out?: string;
  layout: LayoutVersion;
  dtype?: ActDtype;
  force?: boolean;
  threads?: number;
  /** Where the transforms run (default auto: CUDA when a device is usable). */
  device?: DeviceChoice;
  /** sha256 of every output file and source shard in the manifest (default true). */
  checksums?: boolean;
  /** Refuse fused parts whose global scales differ instead of re-encoding their block scales (exit 2). */
  strict?: boolean;
  onProgress?(p: ConvertProgress): void;
  /** Each warning as soon as it is known (they are all in the report too). */
  onWarning?(line: string): void;
  /** The source came from the Hub: recorded in the manifest, its shards checked against the Hub's sha256. */
  hub?: HubSource;
  /** The Hub repo the output is meant for (convert --push-to-hub): named in the model card. */
  targetRepo?: string;
}

/** What convert needs to know of a Hub source (checkpoint/resolve-model.ts's HubSource has it). */
export interface HubSource {
  repo: string;
  revision: string;
  commit: string;
  /** sha256 the Hub publishes for each LFS file, by path. */
  lfs_sha256: Record<string, string>;
}

export interface ConvertProgress {
  bytesDone: number;
  bytesTotal: number;
  tensor: string;
}

export interface ConvertReport {
  input: string;
  output: string;
  flavour: string;
  /** nvfp4 or mxfp4. */
  scheme: Scheme;
  /** The source's algorithm: NVFP4, W4A16_NVFP4 or MIXED_PRECISION (ModelOpt; compressed-tensors: NVFP4). */
  quant_algo: string;
  layout: LayoutVersion;
  activation_dtype: ActDtype;
  device: Backend;
  shards: number;
  tensors: number;
  converted_layers: number;
  copied_tensors: number;
  ignored_modules: string[];
  bytes_in: number;
  bytes_out: number;
  seconds: number;
  /** Peak resident memory of the process (bytes), for CI logs and memory budgets. */
  peak_rss_bytes: number;
  warnings: string[];
  layers: LayerRecord[];
}

/** The default output directory: a `-marlin` sibling of the model directory. */
export function defaultOutputDir(model: string): string {
  return `${resolve(model)}-marlin`;
}

const percent = (x: number) => `${(100 * x).toPrecision(3)}%`;

/** The warning for a layer whose block scales were re-encoded onto a shared global scale. */
export function reencodeWarning(l: LayerRecord): string | undefined {
  const r = l.reencoded;
  if (!r) return undefined;
  const what =
    l.kind === 'linear'
      ? `global scale ${r.source_global} differs from its fused group's (${l.fused_group}: ${r.shared_global}, the largest)`
      : `gate and up global scales differ in ${r.experts} expert${r.experts === 1 ? '' : 's'} (each stored with the larger)`;
  const effect =
    r.changed === 0
      ? 'none changed value'
      : `${r.changed} changed value${r.underflowed ? ` (${r.underflowed} became 0)` : ''}, largest relative change of a dequantized weight ${percent(r.max_relative_change)}`;
  return `${l.name}: ${what}: ${r.scales} block scales re-encoded onto the shared global, ${effect} (--strict refuses)`;
}

function warningsFor(layers: LayerRecord[], layout: LayoutVersion, dtype: ActDtype): string[] {
  const out: string[] = [];
  for (const l of layers) {
    const re = reencodeWarning(l);
    if (re) out.push(re);
    if (l.zeroed_scales > 0) {
      out.push(`${l.name}: layout v2 (${dtype}) sets ${l.zeroed_scales} non-zero block scales below 2^-6 to 0: that data is lost`);
    }
    if (layout === 'v1' && dtype === 'bfloat16' && l.subnormal_scales > 0) {
      out.push(`${l.name}: ${l.subnormal_scales} block scales below 2^-6 are decoded wrongly by the v1 bfloat16 kernel (use --layout v2)`);
    }
  }
  return out;
}

/**
 * Source shards against the sha256 the Hub publishes for them: a download damaged on the way
 * or on disk is caught here, before any output appears. Returns how many were compared.
 */
function checkAgainstHub(dir: string, shards: string[], digests: Map<string, FileDigest>, hub: HubSource): number {
  let checked = 0;
  for (const shard of shards) {
    const got = digests.get(join(dir, shard))?.sha256;
    const want = hub.lfs_sha256[shard];
    if (!got || !want) continue;
    if (got !== want) {
      throw new EnvironmentError(
        `${join(dir, shard)}: sha256 ${got} differs from the ${want} the Hub publishes for ${hub.repo}@${hub.commit.slice(0, 12)}: ` +
          'the cached download is damaged; delete it from the Hugging Face cache and run again',
      );
    }
    checked++;
  }
  return checked;
}

async function cardInfo(ckpt: Checkpoint, format: string, layout: string, dtype: string, layers: number, opts: ConvertOptions): Promise<CardInfo> {
  const card = ckpt.otherFiles.includes(CARD_FILE) ? await readFile(join(ckpt.dir, CARD_FILE), 'utf8') : undefined;
  const arch = ckpt.config.architectures;
  return {
    // Named after the source, not the output path: the same input gives the same bytes anywhere.
    name: opts.targetRepo ?? `${basename(opts.hub?.repo ?? ckpt.dir)}-marlin`,
    target_repo: opts.targetRepo,
    source: { repo: opts.hub?.repo, commit: opts.hub?.commit, name: basename(ckpt.dir), format, card, licenceFiles: licenceFiles(ckpt.otherFiles) },
    layout,
    activation_dtype: dtype,
    architecture: Array.isArray(arch) ? arch.map(String).join(', ') : typeof arch === 'string' ? arch : undefined,
    converted_layers: layers,
    tool_version: VERSION,
  };
}

export async function convert(opts: ConvertOptions): Promise<ConvertReport> {
  const started = performance.now();
  if (opts.threads !== undefined) setThreads(opts.threads);
  mark('convert started');
  // Checksums run on worker threads beside the conversion: the source shards from as soon as
  // their names are known (while the headers are parsed and the plan made, the cores are
  // otherwise idle), each output shard behind its writer, the small files at the end.
  const hashes = opts.checksums !== false ? new HashQueue() : undefined;
  try {
    const onShards =
      hashes &&
      ((dir: string, shards: string[]) => {
        for (const shard of shards) void hashes.digest(join(dir, shard)).then(() => mark(`source ${shard} hashed`), () => {});
      });
    // The device probe and the checkpoint's headers, side by side; a device error (exit 3) is
    // still the one reported when both fail, as when the probe came first.
    const choosing = resolveBackend(opts.device ?? 'auto');
    choosing.catch(() => {}); // awaited just below
    const opening = openCheckpoint(opts.model, undefined, { onShards });
    opening.catch(() => {}); // awaited below, after the probe
    let backend: Backend;
    try {
      backend = await choosing;
    } catch (e) {
      await opening.then((c) => c.close(), () => {});
      throw e;
    }
    mark('device chosen');
    const ckpt = await opening;
    mark('checkpoint opened');
    try {
      return await convertOpened(opts, ckpt, backend, hashes, started);
    } finally {
      await ckpt.close();
    }
  } finally {
    await hashes?.close();
  }
}

/** convert() once the device is chosen and the checkpoint open (its source shards being hashed when `hashes`). */
async function convertOpened(opts: ConvertOptions, ckpt: Checkpoint, backend: Backend, hashes: HashQueue | undefined, started: number): Promise<ConvertReport> {
  const shardLanes = shardsAtOnce(backend);
  const early: string[] = [];
  const warn = (line: string) => {
    early.push(line);
    opts.onWarning?.(line);
  };
  ckpt.warnings.forEach(warn);
  const source = requireConvertible(ckpt);
  const flavour = source.flavour;
  const dtype = activationDtype(ckpt, opts.dtype);
  // MXFP4's option errors come before anything is staged.
  if (source.scheme === 'mxfp4') checkMxfp4Options(ckpt, opts.layout, dtype);
  const staged = await stageOutput(opts.out ?? defaultOutputDir(opts.model), [ckpt.realDir, ckpt.root], { force: opts.force ?? false, onNotice: warn });
  try {
    startProfile(backend);
    // The block-scale scans start while planning and run on beside the conversion, in shard
    // order: each shard starts once the scans of its own modules are done (its header's
    // records need them).
    const plan = await timed('plan', planSource(ckpt, source, { layout: opts.layout, dtype, strict: opts.strict, deferScans: true }));
    mark('planned');
    plan.scans.start(SCANS_AT_ONCE, plan.shards.flatMap(shardModules));
    void timed('scans', plan.scans.settled()).then(() => mark('all scans done'));
    const bytesTotal = [...ckpt.tensors.values()].reduce((a, t) => a + t.entry.end - t.entry.begin, 0);
    let bytesDone = 0;
    // Page-locked buffers for the GPU (MARLIN_FP4_PIN=0: pageable, as a fallback).
    // Six buffers per shard in flight stay idle at most (the read-ahead batch, the one being
    // transformed, its output, the outputs being written and hashed), up to 384 MiB.
    const pool = new BufferPool(6 * shardLanes, backend === 'cuda' && process.env.MARLIN_FP4_PIN !== '0', 384 << 20);
    // Enough idle buffers for the copy chunks each lane has in flight (its writes and checksum trail the reads).
    const copyPool = new BufferPool(8 * shardLanes);
    const bytesOut = plan.shards.reduce((a, s) => a + s.tensors.reduce((b, t) => b + tensorBytes(t), 0), 0);
    const shardDigests = new Map<string, FileDigest>();
    let layers: LayerRecord[] = [];
    try {
      await forEachLimited(plan.shards, shardLanes, async (shard) => {
        await timed('scanWait', plan.scans.ready(shardModules(shard)));
        mark(`${shard.file}: scans ready, writing starts`);
        await writeShard({
          ckpt,
          plan,
          shard,
          dir: staged.tmp,
          finalDir: staged.dir,
          pool,
          copyPool,
          backend,
          records: layerRecords(plan),
          onInput: (n, tensor) => {
            bytesDone += n;
            opts.onProgress?.({ bytesDone, bytesTotal, tensor });
          },
          onDigest: hashes ? (path, digest) => shardDigests.set(path, digest) : undefined,
        });
        mark(`${shard.file}: done${hashes ? ' (hashed)' : ''}`);
      });
      mark('every shard written');
      // Every shard waited for its own scans; the records of all modules need every scan.
      await plan.scans.runAll(SCANS_AT_ONCE);
      layers = [...layerRecords(plan).values()];
      await writeConfig(ckpt, plan, flavour, staged.tmp);
      const files = ['config.json', ...plan.shards.map((s) => s.file)];
      if (writesIndex(ckpt, plan)) {
        await writeIndex(plan, staged.tmp);
        files.push('model.safetensors.index.json');
      }
      files.push(...(await copyOtherFiles(ckpt, staged.tmp, staged.dir)));
      files.push(...(await writeModelCard(staged.tmp, await cardInfo(ckpt, flavour.kind, plan.layout, dtype, layers.length, opts))));
      for (const f of files) if (!shardDigests.has(join(staged.tmp, f))) hashes?.add(join(staged.tmp, f));
      mark('small files written');
      const digests = new Map([...((await hashes?.done()) ?? []), ...shardDigests]);
      mark('every checksum known');
      const checkedAgainstHub = opts.hub ? checkAgainstHub(ckpt.dir, ckpt.shards, digests, opts.hub) : 0;
      const entry = async (dir: string, name: string): Promise<ManifestFile> => {
        const d = digests.get(join(dir, name));
        return d ? { name, bytes: d.bytes, sha256: d.sha256 } : { name, bytes: (await stat(join(dir, name))).size };
      };
      await writeManifest(
        ckpt,
        plan,
        flavour,
        layers,
        await Promise.all(files.map((f) => entry(staged.tmp, f))),
        await Promise.all(ckpt.shards.map((f) => entry(ckpt.dir, f))),
        staged.tmp,
        opts.hub && { repo: opts.hub.repo, revision: opts.hub.revision, commit: opts.hub.commit, shards_checked_against_hub: checkedAgainstHub },
      );
    } finally {
      plan.scans.stop(new Error('convert stopped'));
      await plan.scans.settled();
    }
    await staged.commit();
    mark('output committed');
    reportProfile(backend, performance.now() - started, Math.min(shardLanes, plan.shards.length));
    return {
      input: ckpt.dir,
      output: staged.dir,
      flavour: flavour.kind,
      scheme: plan.scheme,
      quant_algo: 'algo' in flavour ? flavour.algo : 'MXFP4',
      layout: plan.layout,
      activation_dtype: dtype,
      device: backend,
      shards: plan.shards.length,
      tensors: plan.shards.reduce((a, s) => a + s.tensors.length, 0),
      converted_layers: layers.length,
      copied_tensors: plan.copied,
      ignored_modules: plan.ignored,
      bytes_in: bytesTotal,
      bytes_out: bytesOut,
      seconds: (performance.now() - started) / 1000,
      peak_rss_bytes: process.resourceUsage().maxRSS * 1024,
      warnings: [...early, ...warningsFor(layers, plan.layout, dtype)],
      layers,
    };
  } catch (e) {
    await staged.discard();
    throw asOutputError(e, staged);
  }
}
