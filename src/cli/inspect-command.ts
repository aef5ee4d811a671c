import { resolve } from 'node:path';
import { Command, Option } from 'commander';
import { inspectCheckpoint, type InspectReport, type LayoutEstimate } from '../inspect/inspect.js';
import type { ActDtype } from '../transform/marlin.js';
import { bytes } from './format.js';
import { resolveModelArg } from './resolve.js';
import { appendStepSummary } from './ci-output.js';
import { jsonReport } from './json-report.js';
import { inspectMarkdown } from './step-summary.js';
import { MANIFEST_FILE } from '../format/manifest.js';
import type { Output } from './output.js';

interface InspectFlags {
  revision?: string;
  dtype?: ActDtype;
  scanScales?: boolean;
  json?: boolean;
  quiet?: boolean;
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

function table(head: string[], rows: string[][], indent = '  '): string[] {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (cells: string[]) => indent + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [fmt(head), ...rows.map(fmt)];
}

function estimate(e: LayoutEstimate, inputBytes: number): string {
  if (e.tensor_bytes === undefined) return `not possible: ${e.unavailable}`;
  const pct = inputBytes > 0 ? ((e.tensor_bytes - inputBytes) / inputBytes) * 100 : 0;
  const change = Math.abs(pct) < 0.05 ? ' (the same as the input)' : ` (${pct > 0 ? '+' : ''}${pct.toFixed(1)}% vs the input)`;
  return `${bytes(e.tensor_bytes)} of tensors, ${e.tensors} tensors${change}`;
}

/** The report for people: what the checkpoint is, what convert would do, what is wrong. */
export function inspectSummary(r: InspectReport, model: string): string[] {
  const lines: string[] = [];
  const kv = (k: string, v: string) => lines.push(`${k.padEnd(14)}${v}`);
  // A local path as given; a repo id with the snapshot it was read from.
  kv('model', model === r.path || resolve(model) === r.path ? model : `${model} (${r.path})`);
  kv('format', r.description);
  kv('architecture', `${r.architecture ?? '(none in config.json)'}${r.model_type ? ` (${r.model_type})` : ''}, torch_dtype ${r.torch_dtype ?? '(none)'}`);
  kv('files', `${plural(r.shards.length, 'shard')}, ${bytes(r.total_bytes)}, ${plural(r.tensors, 'tensor')}; ${plural(r.other_files.length, 'other file')}`);
  const q = r.quantized;
  if (q) {
    kv('quantized', `${plural(q.dense, 'dense linear')}, ${plural(q.moe_layers, 'MoE expert layer')}${q.ignored.length ? `; ${q.ignored.length} on the exclude list (copied)` : ''}`);
    if (q.dense_shapes.length) {
      lines.push('', ...table(['dense N x K', 'count'], q.dense_shapes.map((s) => [`${s.n} x ${s.k}`, String(s.count)])));
    }
    if (q.moe_shapes.length) {
      lines.push('', ...table(['MoE experts', 'hidden', 'intermediate', 'gated', 'layers'], q.moe_shapes.map((s) => [String(s.experts), String(s.hidden), String(s.intermediate), s.gated ? 'yes' : 'no (up, down)', String(s.count)])));
    }
  }
  const c = r.conversion;
  if (c) {
    lines.push(
      '',
      ...table(
        ['convert', 'tensors', 'bytes'],
        [
          ['converted', String(c.converted.tensors), bytes(c.converted.bytes)],
          ['passed through', String(c.passed_through.tensors), bytes(c.passed_through.bytes)],
        ],
      ),
      '',
    );
    const dt = `${c.activation_dtype}${c.activation_dtype_from === 'assumed' ? ' (assumed)' : c.activation_dtype_from === 'option' ? ' (--dtype)' : ''}`;
    for (const e of c.layouts) kv(`output ${e.layout}`, `${estimate(e, c.converted.bytes + c.passed_through.bytes)}${e.tensor_bytes === undefined ? '' : `; ${dt}`}`);
  }
  if (r.modules) {
    const n = (fate: string) => r.modules!.filter((m) => m.fate === fate).length;
    kv('modules', `${n('converted')} converted, ${n('passed-through')} passed through, ${n('refused')} refused (--json lists each)`);
  }
  if (r.scales) {
    const s = r.scales;
    kv('block scales', `${s.tensors_scanned} tensors scanned: ${s.invalid_tensors} invalid; v2 (${s.activation_dtype}) would zero ${s.zeroed_v2}; ${s.subnormal} below 2^-6 (v1 bfloat16 decodes them wrongly)`);
  }
  const m = r.marlin_layers;
  if (m) {
    kv('layers', `${m.layers} converted layers (from ${m.from})${m.zeroed_scales !== undefined ? `; ${m.zeroed_scales} block scales zeroed by v2 at conversion` : ''}`);
    if (m.subnormal_scales) {
      kv('v1 bfloat16', `${m.subnormal_scales.count} block scales below 2^-6 in ${plural(m.subnormal_scales.layers, 'layer')} (counted from the ${m.subnormal_scales.from === 'scan' ? 'stored scales' : 'manifest'})`);
    }
  }
  lines.push('', ...problemLines(r));
  return lines;
}

/** The problems and the verdict (all that --quiet prints). */
export function problemLines(r: InspectReport): string[] {
  const lines: string[] = [];
  if (r.problems.length) {
    lines.push(`problems (${r.problems.length}):`);
    for (const p of r.problems) lines.push(`  ${p.layout ? `[${p.layout}] ` : ''}${p.message}`);
  } else {
    // MXFP4 scales are a byte permutation: nothing to scan for.
    lines.push(r.conversion && !r.scales && r.format === 'nvfp4' ? 'problems: none found (block scales not read: pass --scan-scales to check them too)' : 'problems: none found');
  }
  lines.push(`verdict: ${r.verdict}`);
  return lines;
}

export function inspectCommand(out: Output): Command {
  return new Command('inspect')
    .summary('say what a checkpoint is and what convert would do with it, without reading the weights')
    .description(
      'Report what a checkpoint is (ModelOpt or compressed-tensors NVFP4, MXFP4, already Marlin, not quantized), ' +
        'its architecture, shards and sizes, its quantized linears and MoE expert layers with their shapes, what ' +
        'convert would convert and pass through, the output size for --layout v2 and v1, and every problem convert ' +
        'would stop at (shape rules per layout, missing scales), and what it would warn about (fused parts with ' +
        'differing global scales, whose block scales it re-encodes; v2 and v1 scale losses). Reads the ' +
        'headers and the scalar global scales only; --scan-scales also reads the block scales (1/8 of the weights).\n\n' +
        'Exits 0 when the checkpoint could be inspected, problems or not.',
    )
    .argument('<model>', 'model directory, or a Hugging Face Hub repo id (org/name)')
    .option('--revision <rev>', 'branch, tag or commit of a Hub repo id (default: main)')
    .addOption(new Option('--dtype <dtype>', "activation dtype to judge for (default: config.json's torch_dtype)").choices(['float16', 'bfloat16']))
    .option('--scan-scales', 'also read every block scale: negative or NaN scales, scales v2 zeroes, scales v1 bfloat16 decodes wrongly')
    .option('--json', 'print one machine-readable JSON report on stdout')
    .option('-q, --quiet', 'print only the problems and the verdict')
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  $ marlin-fp4 inspect ./Llama-3.1-8B-Instruct-FP4\n' +
        '  $ marlin-fp4 inspect nvidia/Llama-3.1-8B-Instruct-FP4 --json\n\n' +
        'Exit codes: 0 inspected (problems or not), 2 unreadable input or usage, 3 environment (network), 4 internal error.',
    )
    .action(async (model: string, flags: InspectFlags) => {
      // A repo id is read with range requests: headers and scalars, never the weights.
      const resolved = await resolveModelArg(out, model, flags, { headersOnly: true, extraFiles: [MANIFEST_FILE] });
      const report = await inspectCheckpoint({ model: resolved.dir, remote: resolved.remote, dtype: flags.dtype, scanScales: flags.scanScales });
      if (resolved.hub && resolved.remote) resolved.hub.downloaded_bytes = resolved.remote.fetched();
      appendStepSummary(inspectMarkdown(report, model, resolved.hub?.downloaded_bytes).join('\n'));
      if (flags.json) out.json(jsonReport('inspect', { model, ...(resolved.hub ? { hub: resolved.hub } : {}), ...report }));
      else if (flags.quiet) for (const line of problemLines(report)) out.line(line);
      else for (const line of inspectSummary(report, model)) out.line(line);
    });
}
