// The model argument of convert, inspect and verify --source: a local directory or a Hub repo
// id, downloaded with a progress line on a TTY (never with --json or --quiet).
import { resolveModel, type ResolvedModel, type ResolveOptions } from '../checkpoint/resolve-model.js';
import { ProgressLine } from './progress.js';
import type { Output } from './output.js';

export async function resolveModelArg(
  out: Output,
  model: string,
  flags: { revision?: string; json?: boolean; quiet?: boolean },
  opts: Pick<ResolveOptions, 'headersOnly' | 'extraFiles'> = {},
): Promise<ResolvedModel> {
  const progress = new ProgressLine('downloading', out.progressMode(flags));
  return resolveModel(model, {
    ...opts,
    revision: flags.revision,
    onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal, p.file),
  }).finally(() => progress.clear());
}
