import { InvalidArgumentError } from 'commander';
import { useColor } from './format.js';

/** Where the CLI writes: results on stdout, warnings, errors and progress on stderr. */
export interface Output {
  line(s: string): void;
  json(v: unknown): void;
  warn(s: string): void;
  error(s: string): void;
  progressAllowed(flags: { json?: boolean; quiet?: boolean }): boolean;
}

export function consoleOutput(): Output {
  const color = useColor(process.stderr);
  const paint = (code: string, s: string) => (color ? `\x1b[${code}m${s}\x1b[0m` : s);
  return {
    line: (s) => process.stdout.write(`${s}\n`),
    json: (v) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`),
    warn: (s) => process.stderr.write(`${paint('33', 'warning:')} ${s}\n`),
    error: (s) => process.stderr.write(`${paint('31', 'error:')} ${s}\n`),
    progressAllowed: (flags) => process.stderr.isTTY === true && !flags.json && !flags.quiet,
  };
}

export function parseThreads(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 1024) throw new InvalidArgumentError('must be a whole number from 1 to 1024');
  return n;
}
