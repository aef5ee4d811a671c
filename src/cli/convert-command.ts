import { Command, Option } from 'commander';
import { convert, type ConvertReport } from '../convert/convert.js';
import type { ActDtype, DeviceChoice, LayoutVersion } from '../transform/marlin.js';
import { bytes, seconds } from './format.js';
import { ProgressLine } from './progress.js';
import { parseThreads, type Output } from './output.js';
import { resolveModelArg } from './resolve.js';
import { verifyCheckpoint } from '../verify/verify.js';
import type { VerifyReport } from '../verify/report.js';
import { InputError } from '../errors.js';
import { recordVerification, type CardVerification } from '../convert/model-card.js';
import { MANIFEST_FILE } from '../format/manifest.js';
import { appendStepSummary } from './ci-output.js';
import { jsonReport } from './json-report.js';
import { convertMarkdown, verifyMarkdown } from './step-summary.js';
import { checkRepoId, push, type PushFlags } from './upload-command.js';
import { verificationFailed, verifySummary } from './verify-command.js';

interface ConvertFlags extends PushFlags {
  output?: string;
  pushToHub?: string;
  revision?: string;
  layout: LayoutVersion;
  dtype?: ActDtype;
  force?: boolean;
  threads?: number;
  device: DeviceChoice;
  checksums: boolean;
  strict?: boolean;
  verify?: boolean;
  json?: boolean;
  quiet?: boolean;
}

function summary(r: ConvertReport): string[] {
  const dense = r.layers.filter((l) => l.kind === 'linear').length;
  const stacks = r.layers.filter((l) => l.kind !== 'linear').length;
  const rate = r.seconds > 0 ? `, ${bytes(r.bytes_in / r.seconds)}/s` : '';
  return [
    `converted ${dense} linear layers and ${stacks / 2} MoE expert layers (${r.flavour} ${r.quant_algo} -> Marlin FP4 ${r.layout}, ${r.activation_dtype}, on the ${r.device === 'cuda' ? 'GPU' : 'CPU'}); copied ${r.copied_tensors} tensors unchanged`,
    `wrote ${r.output}: ${r.shards} shard${r.shards === 1 ? '' : 's'}, ${r.tensors} tensors, ${bytes(r.bytes_out)} in ${seconds(r.seconds)}${rate}`,
  ];
}

export function convertCommand(out: Output): Command {
  return new Command('convert')
    .summary('convert an NVFP4 or MXFP4 checkpoint into a Marlin-ready one')
    .description(
      'Convert an NVFP4 checkpoint (NVIDIA ModelOpt or compressed-tensors / llm-compressor, dense or MoE, ' +
        'or MXFP4: gpt-oss or compressed-tensors, bfloat16 only, ' +
        'one or many shards) into a checkpoint whose weights are already in the Marlin FP4 layout that ' +
        "vLLM's Marlin kernel reads, so that nothing is repacked at load time.\n\n" +
        'The output is written into a temporary sibling directory and renamed into place only when ' +
        'everything succeeded: on any error no output directory appears.',
    )
    .argument('<model>', 'model directory (config.json + *.safetensors), or a Hugging Face Hub repo id (org/name)')
    .option('-o, --output <dir>', 'output directory (default: <model>-marlin beside the model; ./<name>-marlin for a repo id)')
    .option('--revision <rev>', 'branch, tag or commit of a Hub repo id (default: main)')
    .addOption(new Option('--layout <version>', 'Marlin layout: v2 = current vLLM, v1 = older fp4_marlin_process_*').choices(['v1', 'v2']).default('v2'))
    .addOption(new Option('--dtype <dtype>', "activation dtype (default: config.json's torch_dtype)").choices(['float16', 'bfloat16']))
    .option('--force', 'replace the output directory if it exists')
    .addOption(
      new Option('--device <device>', 'where the transforms run: auto = CUDA when a GPU is usable, else CPU (same bytes either way)')
        .choices(['auto', 'cuda', 'cpu'])
        .default('auto'),
    )
    .option('--threads <n>', 'CPU threads for the transforms (default: all cores)', parseThreads)
    .option('--no-checksums', 'skip the sha256 of every output file and source shard in marlin_fp4_manifest.json')
    .option('--strict', 'refuse fused parts (q/k/v, gate/up) whose global scales differ instead of re-encoding their block scales onto one (exit 2)')
    .option('--verify', 'then run `marlin-fp4 verify` on the output (all layers, M = 1,16,128); exit code 1 if it fails')
    .option('--push-to-hub <repo-id>', 'then verify the output and, when it passes, upload it to this Hub model repo (see `marlin-fp4 upload`)')
    .option('--branch <name>', 'with --push-to-hub: the branch to commit to (default: main)')
    .option('--private', 'with --push-to-hub: create the repo private')
    .option('--commit-message <text>', 'with --push-to-hub: the commit title')
    .option('--json', 'print one machine-readable JSON report on stdout')
    .option('-q, --quiet', 'print nothing but warnings and errors')
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  $ marlin-fp4 convert ./Llama-3.1-8B-Instruct-FP4            # writes ./Llama-3.1-8B-Instruct-FP4-marlin\n' +
        '  $ marlin-fp4 convert nvidia/Llama-3.1-8B-Instruct-FP4 --push-to-hub my-org/Llama-3.1-8B-Instruct-FP4-marlin\n' +
        '  $ marlin-fp4 convert model/ -o out/ --layout v2 --dtype bfloat16 --json\n' +
        '  $ marlin-fp4 convert nvidia/Llama-3.1-8B-Instruct-FP4       # downloads into the HF cache, writes ./Llama-3.1-8B-Instruct-FP4-marlin\n\n' +
        'Exit codes: 0 ok, 1 verification failed (--verify), 2 bad input or usage, 3 environment, 4 internal error.',
    )
    .action(async (model: string, flags: ConvertFlags) => {
      if (flags.pushToHub) checkRepoId(flags.pushToHub, '--push-to-hub');
      else if (flags.branch || flags.private || flags.commitMessage) throw new InputError('--branch, --private and --commit-message apply with --push-to-hub');
      const src = await resolveModelArg(out, model, flags);
      const progress = new ProgressLine('converting', out.progressMode(flags));
      const shown = new Set<string>();
      const report = await convert({
        model: src.dir,
        out: flags.output ?? src.defaultOutput,
        layout: flags.layout,
        dtype: flags.dtype,
        force: flags.force,
        threads: flags.threads,
        device: flags.device,
        checksums: flags.checksums,
        strict: flags.strict,
        hub: src.hub,
        targetRepo: flags.pushToHub,
        onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal, p.tensor),
        onWarning: (w) => {
          progress.clear();
          out.warn(w);
          shown.add(w);
        },
      }).finally(() => progress.clear());
      for (const w of report.warnings) if (!shown.has(w)) out.warn(w);
      appendStepSummary(convertMarkdown(report, model).join('\n'));
      if (!flags.json && !flags.quiet) for (const line of summary(report)) out.line(line);
      // The Hub source's provenance, as inspect prints it (the manifest records it too).
      const body = { ...report, ...(src.hub ? { hub: src.hub } : {}) };
      if (!flags.verify && !flags.pushToHub) {
        if (flags.json) out.json(jsonReport('convert', body));
        return;
      }
      const vprogress = new ProgressLine('verifying', out.progressMode(flags));
      const verified = await verifyCheckpoint({
        dir: report.output,
        source: report.input,
        device: flags.device,
        threads: flags.threads,
        onProgress: (p) => vprogress.count(p.done, p.total, `${p.stage === 'gemm' ? 'GEMM' : 'structure'} ${p.layer}`),
      }).finally(() => vprogress.clear());
      if (!flags.json) for (const w of verified.warnings) out.warn(w);
      appendStepSummary(verifyMarkdown(verified).join('\n'));
      if (flags.quiet) verifySummary(verified).filter((l) => l.startsWith('  ') || l.startsWith('FAIL')).forEach((l) => out.line(l));
      else if (!flags.json) for (const line of ['', ...verifySummary(verified)]) out.line(line);
      if (!verified.passed) {
        if (flags.json) out.json(jsonReport('convert', { ...body, verify: verified }));
        throw verificationFailed(verified);
      }
      // The model card says what verify found; the manifest's entry for it follows.
      await recordVerification(report.output, MANIFEST_FILE, cardVerification(verified));
      const upload = flags.pushToHub ? await push(out, report.output, flags.pushToHub, flags) : undefined;
      if (flags.json) out.json(jsonReport('convert', { ...body, verify: verified, ...(upload ? { upload } : {}) }));
    });
}

/** What the model card says about a passed verify. */
function cardVerification(v: VerifyReport): CardVerification {
  return {
    layers_checked: v.layers_checked,
    layers_gemm: v.layers_gemm,
    gemms: v.gemms,
    m: v.m,
    tolerance: v.tolerance,
    worst_rel_err: Math.max(0, ...v.layers.flatMap((l) => (l.worst ?? []).map((w) => w.rel_err))),
    device: v.device,
    reference_engine: v.reference_engine,
  };
}
