import { InvalidArgumentError } from 'commander';
import { progressBarsDisabled } from '../checkpoint/hub-env.js';
import { annotation, inGithubActions } from './ci-output.js';
import { useColor } from './format.js';
import type { ProgressMode } from './progress.js';

/** Where the CLI writes: results on stdout, warnings, errors and progress on stderr. */
export interface Output {
  line(s: string): void;
  json(v: unknown): void;
  warn(s: string): void;
  error(s: string): void;
  /** How progress is shown: never with --json, --quiet or HF_HUB_DISABLE_PROGRESS_BARS=1; self-updating on a terminal, else a line every few seconds. */
  progressMode(flags: { json?: boolean; quiet?: boolean }): ProgressMode;
}

export function consoleOutput(): Output {
  const color = useColor(process.stderr);
  const paint = (code: string, s: string) => (color ? `\x1b[${code}m${s}\x1b[0m` : s);
  // Under GitHub Actions the workflow command replaces the plain line (the log shows it as one).
  const gha = inGithubActions();
  return {
    line: (s) => process.stdout.write(`${s}\n`),
    json: (v) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`),
    warn: (s) => process.stderr.write(gha ? `${annotation('warning', s)}\n` : `${paint('33', 'warning:')} ${s}\n`),
    error: (s) => process.stderr.write(gha ? `${annotation('error', s)}\n` : `${paint('31', 'error:')} ${s}\n`),
    progressMode: (flags) => {
      if (flags.json || flags.quiet || progressBarsDisabled()) return 'off';
      return process.stderr.isTTY === true ? 'tty' : 'lines';
    },
  };
}

export function parseThreads(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 1024) throw new InvalidArgumentError('must be a whole number from 1 to 1024');
  return n;
}
