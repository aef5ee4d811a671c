// The output appears whole or not at all: everything is written into a temporary sibling
// directory that is renamed into place at the end, and removed on any failure.
//
// Identity is by device and inode after resolving links, never by path strings: an output
// that is the input (through any alias), inside it, or that contains it is refused before
// anything is written, so `--force` can never delete the model it reads.
//
// Commit without --force claims the final name with mkdir (atomic: it fails when anything
// exists there), then renames the staged directory onto that empty claim (rename(2) may
// replace an empty directory). Two runs racing for one name: one wins, the other stops with
// "already exists" and replaces nothing. With --force the existing output is moved aside and
// the staged one renamed into place, retried while other runs do the same, so parallel
// --force runs all succeed and each removes what it moved aside.
//
// Temporary names record the host and the owner's pid (`.<name>.marlin-fp4-tmp-<host>-<pid>-
// <random>`, `.old` for a previous output moved aside); a run removes those of dead runs of
// the same host in its output's parent (a killed run leaves a partial model behind), and puts
// back a previous output whose replacement never arrived.
import { createHash, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { mkdir, readdir, realpath, rename, rm, rmdir, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { EnvironmentError, fileError, InputError } from '../errors.js';

export interface StagedOutput {
  /** Final location. */
  dir: string;
  /** Where files are written until commit. */
  tmp: string;
  commit(): Promise<void>;
  discard(): Promise<void>;
}

export interface DirIdentity {
  /** Real path, for messages. */
  path: string;
  dev: number;
  ino: number;
}

const live = new Set<StagedOutput>();
let abandoned = false;

/** Temporary directories still open, for the signal handlers to remove. */
export function liveStagedOutputs(): StagedOutput[] {
  return [...live];
}

/**
 * A signal arrived: the staged outputs still open are to be removed, and none may be committed
 * from now on. The conversion keeps running until the process exits (the handler first waits
 * for the native calls in flight), and without this it could move its output into place in
 * between, or read a file of the directory being removed.
 */
export function abandonStagedOutputs(): StagedOutput[] {
  abandoned = true;
  return liveStagedOutputs();
}

function refuseIfAbandoned(outDir: string): void {
  if (abandoned) throw new EnvironmentError(`${outDir}: not moved into place: the run was interrupted`);
}

const HOST = createHash('sha256').update(hostname()).digest('hex').slice(0, 8);
const TMP = /^\.(.+)\.marlin-fp4-tmp-([0-9a-f]{8})-(\d+)-[0-9a-f]{8}(\.old(?:-\d+)?)?$/;

function tmpName(base: string): string {
  return `.${base}.marlin-fp4-tmp-${HOST}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // someone else's process: alive
  }
}

const code = (e: unknown) => (e as NodeJS.ErrnoException)?.code;

/** Device and inode of a directory and of each of its ancestors, from the real path up. */
async function chain(realPath: string): Promise<DirIdentity[]> {
  const out: DirIdentity[] = [];
  for (let p = realPath; ; p = dirname(p)) {
    const st = await stat(p);
    out.push({ path: p, dev: st.dev, ino: st.ino });
    if (dirname(p) === p) return out;
  }
}

const same = (a: DirIdentity, b: DirIdentity) => a.dev === b.dev && a.ino === b.ino;

/**
 * Refuses an output that is the input, lies inside it or contains it, comparing devices and
 * inodes along the real paths (links, bind mounts and `..` cannot hide an overlap). `inputs`
 * are the model directory and, for a Hub snapshot, its repo cache folder.
 */
async function refuseOverlap(outDir: string, dir: string, inputs: string[]): Promise<void> {
  const outReal = await realpath(dir).catch(async () => join(await realpath(dirname(dir)), basename(dir)));
  const outChain = await chain(outReal).catch(async () => chain(dirname(outReal)));
  const outExists = outChain[0]!.path === outReal;
  for (const input of inputs) {
    const inChain = await chain(await realpath(input));
    const me = inChain[0]!;
    const overlap = (outExists && inChain.some((a) => same(a, outChain[0]!))) || outChain.some((a) => same(a, me));
    if (overlap) {
      throw new InputError(
        `${outDir}: the output directory must not be the input directory, inside it, or contain it ` +
          `(the output resolves to ${outReal}, the input to ${me.path})`,
      );
    }
  }
}

/**
 * Removes the temporary directories that dead runs of this host left in `parent`, and puts
 * back a previous output that a dead `--force` run had moved aside when the output is
 * missing. Returns one line per directory handled.
 */
export async function sweepStale(parent: string): Promise<string[]> {
  const lines: string[] = [];
  const names = await readdir(parent).catch(() => [] as string[]);
  for (const name of names.sort()) {
    const m = TMP.exec(name);
    if (!m || m[2] !== HOST || alive(Number(m[3]))) continue;
    const path = join(parent, name);
    const target = join(parent, m[1]!);
    try {
      if (m[4] && !(await stat(target).catch(() => undefined))) {
        await rename(path, target);
        lines.push(`${target}: put back the previous output that run ${m[3]} (no longer running) had moved aside to ${name}`);
      } else {
        await rm(path, { recursive: true, force: true });
        lines.push(`${path}: removed, left behind by run ${m[3]}, which is no longer running`);
      }
    } catch {
      // Another run is sweeping the same directory: it says so.
    }
  }
  return lines;
}

export interface StageOptions {
  force: boolean;
  /** Lines about stale temporary directories removed (see sweepStale). */
  onNotice?(line: string): void;
}

export async function stageOutput(outDir: string, inputDirs: string[], { force, onNotice }: StageOptions): Promise<StagedOutput> {
  const dir = resolve(outDir);
  const parent = dirname(dir);
  const parentStat = await stat(parent).catch(() => undefined);
  if (!parentStat?.isDirectory()) throw new InputError(`${outDir}: parent directory ${parent} does not exist`);
  await refuseOverlap(outDir, dir, inputDirs);
  const existing = await stat(dir).catch(() => undefined);
  if (existing && !force) throw new InputError(`${outDir}: already exists (pass --force to replace it)`);
  if (existing && !existing.isDirectory()) throw new InputError(`${outDir}: exists and is not a directory`);
  for (const line of await sweepStale(parent)) onNotice?.(line);
  const tmp = join(parent, tmpName(basename(dir)));
  await mkdir(tmp).catch((e) => {
    throw fileError(outDir, 'create', e, 'output');
  });
  const staged: StagedOutput = {
    dir,
    tmp,
    async commit() {
      try {
        if (force) await replace(outDir, tmp, dir);
        else await claimAndRename(outDir, tmp, dir);
      } catch (e) {
        throw e instanceof InputError || e instanceof EnvironmentError ? e : fileError(outDir, 'move into place', e, 'output');
      }
      live.delete(staged);
    },
    async discard() {
      live.delete(staged);
      // Writers of other shards may still be creating files in it (a signal does not wait
      // for them): retry on ENOTEMPTY until the directory is gone.
      await rm(tmp, { recursive: true, force: true, maxRetries: 10, retryDelay: 20 });
    },
  };
  live.add(staged);
  return staged;
}

/** Without --force: never replaces anything, even a directory created while we converted. */
async function claimAndRename(outDir: string, tmp: string, dir: string): Promise<void> {
  refuseIfAbandoned(outDir);
  try {
    await mkdir(dir);
  } catch (e) {
    if (code(e) === 'EEXIST') throw new InputError(`${outDir}: already exists (created while this run was converting; nothing was replaced)`);
    throw e;
  }
  try {
    refuseIfAbandoned(outDir); // a signal may have come during the mkdir
    await rename(tmp, dir); // onto our own empty claim
  } catch (e) {
    await rmdir(dir).catch(() => {}); // only if it is still the empty claim
    if (code(e) === 'ENOTEMPTY' || code(e) === 'EEXIST') {
      throw new InputError(`${outDir}: already exists (written by another process while this run was converting; nothing was replaced)`);
    }
    throw e;
  }
}

/**
 * --force: renames the staged directory into place, moving whatever is there aside first,
 * and again when a parallel run put its output there in between. A failure after moving the
 * previous output aside puts it back, so a failure never loses both.
 */
async function replace(outDir: string, tmp: string, dir: string): Promise<void> {
  const aside: string[] = [];
  try {
    for (let attempt = 0; ; attempt++) {
      refuseIfAbandoned(outDir); // also between attempts: a signal puts back what was moved aside
      try {
        await rename(tmp, dir); // succeeds when dir is absent (or an empty directory)
        break;
      } catch (e) {
        // ENOTDIR: the old output is a link to a directory; the link is moved aside, not its target.
        if (!['ENOTEMPTY', 'EEXIST', 'ENOTDIR'].includes(code(e) ?? '') || attempt >= 100) throw e;
      }
      const old = `${tmp}.old${aside.length ? `-${aside.length}` : ''}`;
      try {
        await rename(dir, old);
        aside.push(old);
      } catch (e) {
        if (code(e) !== 'ENOENT') throw e; // another run moved it first: try again
      }
    }
  } catch (e) {
    const last = aside.pop();
    if (last) await rename(last, dir).catch(() => {});
    for (const old of aside) await rm(old, { recursive: true, force: true }).catch(() => {});
    throw e;
  }
  for (const old of aside) await rm(old, { recursive: true, force: true });
}
