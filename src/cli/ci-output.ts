// CI niceties. Under GitHub Actions (GITHUB_ACTIONS=true) warnings and errors become workflow
// commands (`::warning::…`, `::error::…`), which the runner turns into annotations on the run and
// shows in the log in place of the line; they go to stderr like the plain lines (the runner reads
// commands from both streams, and stdout stays one JSON document with --json). Each command also
// appends a Markdown summary to $GITHUB_STEP_SUMMARY.
import { appendFileSync } from 'node:fs';

export function inGithubActions(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.GITHUB_ACTIONS === 'true';
}

// The runner's escaping of a command's message and of its properties.
const escapeData = (s: string) => s.replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
const escapeProperty = (s: string) => escapeData(s).replace(/:/g, '%3A').replace(/,/g, '%2C');

/** `::error title=marlin-fp4 convert::message` */
export function annotation(kind: 'error' | 'warning' | 'notice', message: string, title?: string): string {
  return `::${kind}${title ? ` title=${escapeProperty(title)}` : ''}::${escapeData(message)}`;
}

/** Appends Markdown to the job's summary page; does nothing outside GitHub Actions. */
export function appendStepSummary(markdown: string, env: NodeJS.ProcessEnv = process.env): void {
  const file = env.GITHUB_STEP_SUMMARY;
  if (!inGithubActions(env) || !file) return;
  try {
    appendFileSync(file, `${markdown.trimEnd()}\n\n`); // a blank line between the commands' sections
  } catch {
    // A summary that cannot be written must not fail the conversion it describes.
  }
}

/** A Markdown table (cells with | escaped). */
export function mdTable(head: string[], rows: string[][]): string[] {
  const cell = (c: string) => c.replace(/\|/g, '\\|');
  return [`| ${head.map(cell).join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.map(cell).join(' | ')} |`)];
}
