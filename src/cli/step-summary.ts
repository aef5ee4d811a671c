// The Markdown each command appends to $GITHUB_STEP_SUMMARY under GitHub Actions (ci-output.ts):
// what was converted, verified, inspected or uploaded, in a few lines and a table.
import type { ConvertReport } from '../convert/convert.js';
import type { InspectReport } from '../inspect/inspect.js';
import type { UploadReport } from '../publish/upload.js';
import type { VerifyReport } from '../verify/report.js';
import { mdTable } from './ci-output.js';
import { bytes, seconds } from './format.js';

const code = (s: string) => `\`${s.replace(/`/g, "'")}\``;

export function convertMarkdown(r: ConvertReport, source: string): string[] {
  const dense = r.layers.filter((l) => l.kind === 'linear').length;
  const moe = r.layers.filter((l) => l.kind !== 'linear').length / 2;
  return [
    `### marlin-fp4 convert: ${code(source)}`,
    '',
    ...mdTable(
      ['', ''],
      [
        ['output', code(r.output)],
        ['format', `${r.flavour} NVFP4 → Marlin FP4 ${r.layout}, ${r.activation_dtype}`],
        ['layers', `${dense} linear, ${moe} MoE expert layers converted; ${r.copied_tensors} tensors copied`],
        ['size', `${r.shards} shard${r.shards === 1 ? '' : 's'}, ${bytes(r.bytes_out)} of tensors`],
        ['time', `${seconds(r.seconds)} on the ${r.device === 'cuda' ? 'GPU' : 'CPU'}, peak RSS ${bytes(r.peak_rss_bytes)}`],
        ['warnings', r.warnings.length ? String(r.warnings.length) : 'none'],
      ],
    ),
    '',
  ];
}

export function verifyMarkdown(r: VerifyReport): string[] {
  const worst = Math.max(0, ...r.layers.flatMap((l) => (l.worst ?? []).map((w) => w.rel_err)));
  const lines = [
    `### marlin-fp4 verify: ${r.passed ? '✅ PASS' : '❌ FAIL'}`,
    '',
    `- structure: ${r.layers.filter((l) => l.errors.length === 0).length} of ${r.layers_checked} converted layers byte-exact against the source`,
    `- GEMMs: ${r.layers_gemm} layers at M = ${r.m.join(', ')}, worst relative error ${worst === 0 ? '0' : worst.toExponential(2)} (bound ${r.tolerance}; ${r.gemms} GEMMs, reference ${r.reference_engine})`,
  ];
  if (r.failed_layers.length) lines.push(`- failed layers: ${r.failed_layers.slice(0, 10).map(code).join(', ')}${r.failed_layers.length > 10 ? ', …' : ''}`);
  for (const e of r.errors.slice(0, 10)) lines.push(`- ${e}`);
  return [...lines, ''];
}

export function inspectMarkdown(r: InspectReport, model: string, transferred?: number): string[] {
  return [
    `### marlin-fp4 inspect: ${code(model)}`,
    '',
    ...mdTable(
      ['', ''],
      [
        ['format', r.description],
        ['architecture', r.architecture ?? '(none)'],
        ['files', `${r.shards.length} shards, ${bytes(r.total_bytes)}, ${r.tensors} tensors${transferred !== undefined ? ` (${bytes(transferred)} read from the Hub)` : ''}`],
        ['problems', r.problems.length ? String(r.problems.length) : 'none'],
        ['verdict', r.verdict],
      ],
    ),
    ...r.problems.slice(0, 20).map((p) => `- ${p.layout ? `[${p.layout}] ` : ''}${p.message}`),
    '',
  ];
}

export function uploadMarkdown(r: UploadReport, hubUrl: string): string[] {
  const url = `${hubUrl}/${r.repo}${r.branch === 'main' ? '' : `/tree/${r.branch}`}`;
  return [
    `### marlin-fp4 upload: [${r.repo}](${url})`,
    '',
    `- commit ${code(r.commit.slice(0, 12))} on ${code(r.branch)}${r.created ? ` (repo created${r.private ? ', private' : ''})` : ''}`,
    `- ${r.files.length} files, ${bytes(r.bytes)}; ${bytes(r.uploaded_bytes)} of LFS data sent (the rest was already on the Hub)`,
    `- ${r.verified_files} files checked on the Hub against the manifest (sha256 / git blob id)`,
    '',
  ];
}

export function failureMarkdown(command: string, message: string, exitCode: number): string[] {
  return [`### marlin-fp4 ${command}: ❌ failed (exit code ${exitCode})`, '', '```', message, '```', ''];
}
