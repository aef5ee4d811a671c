// `marlin-fp4 upload <dir> <repo-id>`, and the push that `convert --push-to-hub` ends with.
import { Command } from 'commander';
import { hubEndpoint } from '../checkpoint/hub-env.js';
import { looksLikeRepoId } from '../checkpoint/resolve-model.js';
import { InputError } from '../errors.js';
import { uploadCheckpoint, type UploadReport } from '../publish/upload.js';
import { appendStepSummary } from './ci-output.js';
import { bytes, seconds } from './format.js';
import { jsonReport } from './json-report.js';
import type { Output } from './output.js';
import { ProgressLine } from './progress.js';
import { uploadMarkdown } from './step-summary.js';

export interface PushFlags {
  branch?: string;
  private?: boolean;
  commitMessage?: string;
  json?: boolean;
  quiet?: boolean;
}

export function hubWebUrl(): string {
  return hubEndpoint() ?? 'https://huggingface.co';
}

export function checkRepoId(repo: string, option: string): string {
  if (!looksLikeRepoId(repo)) throw new InputError(`${option} ${repo}: not a Hub repo id (org/name)`);
  return repo;
}

/** Uploads with a progress line; prints the summary line unless --json/--quiet. */
export async function push(out: Output, dir: string, repo: string, flags: PushFlags): Promise<UploadReport> {
  const progress = new ProgressLine('uploading', out.progressMode(flags));
  const report = await uploadCheckpoint({
    dir,
    repo,
    branch: flags.branch,
    private: flags.private,
    commitMessage: flags.commitMessage,
    onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal, `${p.phase} ${p.file}`),
  }).finally(() => progress.clear());
  appendStepSummary(uploadMarkdown(report, hubWebUrl()).join('\n'));
  if (!flags.json && !flags.quiet) {
    const url = `${hubWebUrl()}/${repo}${report.branch === 'main' ? '' : `/tree/${report.branch}`}`;
    out.line(
      `uploaded ${dir} to ${url}: ${report.files.length} files, ${bytes(report.bytes)} in ${seconds(report.seconds)} ` +
        `(commit ${report.commit.slice(0, 12)}${report.created ? ', repo created' : ''}; ${bytes(report.uploaded_bytes)} of LFS data sent; ` +
        `${report.verified_files} files checked on the Hub)`,
    );
  }
  return report;
}

export function uploadCommand(out: Output): Command {
  return new Command('upload')
    .summary('publish a converted checkpoint to the Hugging Face Hub')
    .description(
      'Upload a directory written by `marlin-fp4 convert` to a Hugging Face Hub model repo, in one commit. ' +
        "The directory is first checked against marlin_fp4_manifest.json (sizes and sha256); the repo is created when " +
        "missing; afterwards the Hub's sha256 of every file is compared with the manifest. An interrupted upload resumes: " +
        'shards already on the Hub are not sent again.\n\n' +
        'Needs a token with write access: HF_TOKEN, or the one `hf auth login` saved (HF_TOKEN_PATH, else HF_HOME/token).',
    )
    .argument('<dir>', 'the converted checkpoint')
    .argument('<repo-id>', 'the Hub model repo (org/name)')
    .option('--branch <name>', 'branch to commit to, created from main when missing (default: main)')
    .option('--revision <name>', 'the same as --branch')
    .option('--private', 'create the repo private (when it does not exist yet)')
    .option('--commit-message <text>', 'the commit title')
    .option('--json', 'print one machine-readable JSON report on stdout')
    .option('-q, --quiet', 'print nothing but warnings and errors')
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  $ marlin-fp4 upload ./Llama-3.1-8B-Instruct-FP4-marlin my-org/Llama-3.1-8B-Instruct-FP4-marlin\n' +
        '  $ HF_TOKEN=hf_… marlin-fp4 upload out/ my-org/model --private --branch v2 --json\n\n' +
        'Exit codes: 0 uploaded, 2 bad input (a directory that fails its manifest, no token, no write access), 3 environment (network, Hub errors), 4 internal error.',
    )
    .action(async (dir: string, repo: string, flags: PushFlags & { revision?: string }) => {
      checkRepoId(repo, 'upload');
      if (flags.revision && flags.branch && flags.revision !== flags.branch) throw new InputError(`--revision ${flags.revision} and --branch ${flags.branch}: give one`);
      const report = await push(out, dir, repo, { ...flags, branch: flags.branch ?? flags.revision });
      if (flags.json) out.json(jsonReport('upload', report));
    });
}
