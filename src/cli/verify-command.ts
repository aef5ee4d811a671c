import { Command, InvalidArgumentError, Option } from 'commander';
import { InputError, VerificationFailed } from '../errors.js';
import type { DeviceChoice } from '../transform/marlin.js';
import { parseChecks } from '../verify/checks.js';
import { verifyCheckpoint } from '../verify/verify.js';
import type { LayerReport, VerifyReport } from '../verify/report.js';
import { seconds } from './format.js';
import { parseThreads, type Output } from './output.js';
import { ProgressLine } from './progress.js';
import { resolveModelArg } from './resolve.js';
import { appendStepSummary } from './ci-output.js';
import { jsonReport } from './json-report.js';
import { verifyMarkdown } from './step-summary.js';

interface VerifyFlags {
  source?: string;
  revision?: string;
  m: number[];
  tolerance?: number;
  layers: string;
  experts: number | 'all';
  checks: string;
  device: DeviceChoice;
  threads?: number;
  json?: boolean;
  quiet?: boolean;
}

function parseMs(v: string): number[] {
  const ms = v.split(',').map((s) => Number(s.trim()));
  if (ms.length === 0 || ms.some((m) => !Number.isInteger(m) || m < 1 || m > 65536)) {
    throw new InvalidArgumentError('must be a comma-separated list of whole numbers from 1 to 65536, e.g. 1,16,128');
  }
  return ms;
}

function parseTolerance(v: string): number {
  const t = Number(v);
  if (!Number.isFinite(t) || t <= 0) throw new InvalidArgumentError('must be a positive number, e.g. 2e-3');
  return t;
}

function parseLayers(v: string): string {
  if (v === '') throw new InvalidArgumentError("must be 'all', a count, or a regular expression");
  return v;
}

function parseChecksFlag(v: string): string {
  try {
    parseChecks(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message.replace(/^--checks [^:]*: /, ''));
  }
  return v;
}

function parseExperts(v: string): number | 'all' {
  if (v === 'all') return 'all';
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("must be 'all' or a whole number >= 1");
  return n;
}

const sci = (v: number) => (v === Infinity || Number.isNaN(v) ? 'inf' : v === 0 ? '0' : v.toExponential(2));

function table(r: VerifyReport, rows: LayerReport[]): string[] {
  const head = ['layer', 'kind', 'N x K', 'structure', ...r.m.map((m) => `rel M=${m}`), 'max abs', 'result'];
  const body = rows.map((l) => {
    const worst = new Map((l.worst ?? []).map((w) => [w.m, w]));
    const maxAbs = l.worst && l.worst.length ? Math.max(...l.worst.map((w) => w.max_abs_err)) : undefined;
    return [
      l.name,
      l.kind + (l.experts ? ` x${l.experts}` : ''),
      l.n ? `${l.n} x ${l.k}` : '?',
      l.errors.length ? `FAIL (${l.errors.length})` : r.checks.includes('structure') ? 'ok' : '-',
      ...r.m.map((m) => (worst.has(m) ? sci(worst.get(m)!.rel_err) : l.gemm ? 'n/a' : '-')),
      maxAbs === undefined ? '-' : sci(maxAbs),
      l.pass ? 'pass' : 'FAIL',
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i <= 1 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [fmt(head), ...body.map(fmt)];
}

export function verifySummary(r: VerifyReport): string[] {
  const shown = r.layers.filter((l) => l.gemm !== undefined || !l.pass);
  const lines = shown.length ? table(r, shown) : [];
  const structOk = r.layers.filter((l) => l.errors.length === 0).length;
  const reencoded = r.layers.filter((l) => l.errors.length === 0 && l.reencoded_max_relative_change !== undefined).length;
  lines.push('');
  if (r.source_files) {
    const s = r.source_files;
    lines.push(
      `source: ${s.path}${s.named ? ' (--source)' : ''}, ${s.shards.length} shard${s.shards.length === 1 ? '' : 's'}` +
        (s.matches_manifest === null ? ', the manifest records no checksums' : s.matches_manifest ? ', the ones converted (sha256 as the manifest records)' : ', NOT the ones converted'),
    );
  }
  if (r.checks.includes('structure')) {
    lines.push(
      `structure: ${structOk} of ${r.layers_checked} converted layers byte-exact against the source` +
        (reencoded ? ` (${reencoded} of them against the source re-encoded onto a shared global, within the E4M3 rounding bound)` : '') +
        (r.copied_checked ? `, ${r.copied_checked} copied tensors checked` : '') +
        ', every file as convert writes it',
    );
  }
  if (r.checks.includes('gemm')) {
    lines.push(
      `GEMM: ${r.layers_gemm} layers at M = ${r.m.join(', ')}, per-column error bound ${r.tolerance} ` +
        `(${r.layout}, ${r.activation_dtype}; on the ${r.device === 'cuda' ? 'GPU' : 'CPU'}, reference: ${r.reference_engine}; ${r.gemms} GEMMs)`,
    );
  }
  const failed = r.layers.filter((l) => !l.pass);
  if (failed.length || r.errors.length) {
    lines.push('', 'problems:');
    for (const e of r.errors) lines.push(`  ${e}`);
    for (const l of failed) {
      for (const e of l.errors.slice(0, 5)) lines.push(`  ${l.name}: ${e}`);
      if (l.errors.length > 5) lines.push(`  ${l.name}: … and ${l.errors.length - 5} more`);
      for (const g of (l.gemm ?? []).filter((c) => !c.pass).slice(0, 3)) {
        const who = g.expert !== undefined ? ` expert ${g.expert}${g.part ? ` ${g.part}` : ''}` : '';
        lines.push(`  ${l.name}:${who} GEMM at M = ${g.m}: ${g.error ?? `column ${g.worst_column}: error ${sci(g.rel_err)} > ${r.tolerance}`}`);
      }
      if (l.gemm && l.gemm.length === 0 && l.errors.length === 0) lines.push(`  ${l.name}: no GEMM could run`);
    }
  }
  lines.push('', `${r.passed ? 'PASS' : 'FAIL'}: ${r.converted} (${seconds(r.seconds)})`);
  return lines;
}

export function verifyCommand(out: Output): Command {
  return new Command('verify')
    .summary('prove a converted checkpoint against its NVFP4 source')
    .description(
      'Check a checkpoint written by `marlin-fp4 convert` against its NVFP4 source: first every converted ' +
        'tensor structurally (unpacked and decoded back, byte for byte; scales that layout v2 zeroes are ' +
        'expected to be 0), then, per layer, a GEMM that reads the Marlin layout directly against a reference ' +
        'GEMM on the dequantized source, on deterministic random activations.',
    )
    .argument('[converted-dir]', 'the converted checkpoint (default: the current directory)')
    .option('--source <nvfp4-dir>', 'the NVFP4 source, a directory or a Hugging Face Hub repo id (default: the path recorded in marlin_fp4_manifest.json)')
    .option('--revision <rev>', 'branch, tag or commit of a Hub repo id given as --source (default: main)')
    .addOption(new Option('--m <list>', 'GEMM row counts, comma-separated').argParser(parseMs).default([1, 16, 128], '1,16,128'))
    .addOption(new Option('--tolerance <x>', "bound on each output column's GEMM error (default 1e-4: both GEMMs dequantize exactly and accumulate in float32)").argParser(parseTolerance))
    .addOption(new Option('--checks <list>', 'checks to run, comma-separated: integrity, structure, gemm').argParser(parseChecksFlag).default('integrity,structure,gemm'))
    .addOption(
      new Option('--layers <which>', "layers that get GEMMs: 'all', a count N (an evenly spread sample of N), or a regular expression on the layer name")
        .argParser(parseLayers)
        .default('all'),
    )
    .addOption(new Option('--experts <n>', "MoE experts per stack that get GEMMs: a count (evenly spread) or 'all'").argParser(parseExperts).default(4))
    .addOption(
      new Option('--device <device>', 'where the checks run: auto = CUDA when a GPU is usable, else CPU').choices(['auto', 'cuda', 'cpu']).default('auto'),
    )
    .option('--threads <n>', 'CPU threads (default: all cores)', parseThreads)
    .option('--json', 'print one machine-readable JSON report on stdout')
    .option('-q, --quiet', 'print only the verdict line and problems')
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  $ marlin-fp4 verify ./Llama-3.1-8B-Instruct-FP4-marlin\n' +
        '  $ marlin-fp4 verify out/ --source model/ --layers 8 --m 1,64 --device cpu --json\n\n' +
        'Exit codes: 0 verified, 1 a layer failed, 2 bad input or usage, 3 environment (e.g. --device cuda without a GPU), 4 internal error.',
    )
    .action(async (dir: string | undefined, flags: VerifyFlags) => {
      if (flags.revision !== undefined && flags.source === undefined) throw new InputError(`--revision ${flags.revision}: applies to a Hub repo id given as --source`);
      const source = flags.source === undefined ? undefined : (await resolveModelArg(out, flags.source, flags)).dir;
      const progress = new ProgressLine('verifying', out.progressMode(flags));
      const report = await verifyCheckpoint({
        dir,
        source,
        m: flags.m,
        tolerance: flags.tolerance,
        layers: flags.layers,
        experts: flags.experts,
        checks: flags.checks,
        device: flags.device,
        threads: flags.threads,
        onProgress: (p) => progress.count(p.done, p.total, `${p.stage === 'gemm' ? 'GEMM' : 'structure'} ${p.layer}`),
      }).finally(() => progress.clear());
      for (const w of report.warnings) if (!flags.json) out.warn(w);
      appendStepSummary(verifyMarkdown(report).join('\n'));
      if (flags.json) out.json(jsonReport('verify', report));
      else if (flags.quiet) verifySummary(report).filter((l) => l.startsWith('  ') || l.startsWith('PASS') || l.startsWith('FAIL')).forEach((l) => out.line(l));
      else for (const line of verifySummary(report)) out.line(line);
      if (!report.passed) throw verificationFailed(report);
    });
}

export function verificationFailed(report: VerifyReport): VerificationFailed {
  const n = report.failed_layers.length;
  return new VerificationFailed(
    n ? `verification failed: ${n} layer${n === 1 ? '' : 's'} (${report.failed_layers.slice(0, 3).join(', ')}${n > 3 ? ', …' : ''})` : `verification failed: ${report.errors[0]}`,
  );
}
