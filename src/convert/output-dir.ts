// The output appears whole or not at all: everything is written into a temporary sibling
// directory that is renamed into place at the end, and removed on any failure.
import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { InputError } from '../errors.js';

export interface StagedOutput {
  /** Final location. */
  dir: string;
  /** Where files are written until commit. */
  tmp: string;
  commit(): Promise<void>;
  discard(): Promise<void>;
}

const live = new Set<StagedOutput>();

/** Temporary directories still open, for the signal handlers to remove. */
export function liveStagedOutputs(): StagedOutput[] {
  return [...live];
}

function inside(child: string, parent: string): boolean {
  const rel = relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !rel.startsWith(sep) && rel !== '..');
}

export async function stageOutput(outDir: string, inputDir: string, force: boolean): Promise<StagedOutput> {
  const dir = resolve(outDir);
  const input = resolve(inputDir);
  if (inside(dir, input) || inside(input, dir)) {
    throw new InputError(`${outDir}: the output directory must not be the input directory, inside it, or contain it`);
  }
  const existing = await stat(dir).catch(() => undefined);
  if (existing && !force) throw new InputError(`${outDir}: already exists (pass --force to replace it)`);
  if (existing && !existing.isDirectory()) throw new InputError(`${outDir}: exists and is not a directory`);
  const parent = dirname(dir);
  const parentStat = await stat(parent).catch(() => undefined);
  if (!parentStat?.isDirectory()) throw new InputError(`${outDir}: parent directory ${parent} does not exist`);
  const tmp = join(parent, `.${basename(dir)}.marlin-fp4-tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(tmp);
  const staged: StagedOutput = {
    dir,
    tmp,
    async commit() {
      if (await stat(dir).catch(() => undefined)) {
        // --force: move the old output aside first, so a failure here never loses both.
        const old = `${tmp}.old`;
        await rename(dir, old);
        await rename(tmp, dir);
        await rm(old, { recursive: true, force: true });
      } else {
        await rename(tmp, dir);
      }
      live.delete(staged);
    },
    async discard() {
      live.delete(staged);
      await rm(tmp, { recursive: true, force: true });
    },
  };
  live.add(staged);
  return staged;
}
