// The files of a model directory that may be read: regular files inside the directory,
// links included when they resolve inside it. A link that leaves the directory, a broken
// link, a FIFO, socket or device is refused with the reason, so that nothing outside the
// model is ever published and nothing can block. Hugging Face cache snapshots are the one
// place where links legitimately point elsewhere: `<repo>/snapshots/<commit>/<file>` links to
// `<repo>/blobs/<hash>`, so for a snapshot the whole repo cache folder counts as inside.
import { readdir, realpath, stat } from 'node:fs/promises';
import { basename, dirname, join, relative, sep } from 'node:path';
import { fileError } from '../errors.js';
import { fileKind } from '../safetensors/io.js';

export interface ModelFiles {
  /** The directory as the user named it, resolved (for messages). */
  dir: string;
  /** Its real path (links resolved). */
  realDir: string;
  /** Where links may point: realDir, or the repo folder of a Hugging Face cache snapshot. */
  root: string;
  /** Readable regular files: relative path -> real path (open it with O_NOFOLLOW). */
  files: Map<string, string>;
  /** Entries that must not be read: relative path -> why. */
  refused: Map<string, string>;
}

/** Whether `child` is `parent` or inside it (both real, absolute paths). */
export function isInside(child: string, parent: string): boolean {
  const rel = relative(parent, child);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${sep}`) && !rel.startsWith(sep));
}

/** The repo folder when `realDir` is a snapshot of the Hugging Face cache layout, else realDir. */
async function linkRoot(realDir: string): Promise<string> {
  const snapshots = dirname(realDir);
  const repo = dirname(snapshots);
  if (basename(snapshots) !== 'snapshots' || !/^(models|datasets|spaces)--./.test(basename(repo))) return realDir;
  const blobs = await stat(join(repo, 'blobs')).catch(() => undefined);
  return blobs?.isDirectory() ? repo : realDir;
}

async function walk(m: ModelFiles, prefix: string): Promise<void> {
  const here = prefix ? join(m.realDir, prefix) : m.realDir;
  const entries = await readdir(here, { withFileTypes: true }).catch((e) => {
    throw fileError(prefix ? join(m.dir, prefix) : m.dir, 'list', e);
  });
  for (const d of entries) {
    const rel = prefix ? `${prefix}/${d.name}` : d.name;
    const path = join(here, d.name);
    if (d.isDirectory()) {
      if (!d.name.startsWith('.')) await walk(m, rel); // .git, .cache of a hub download
    } else if (d.isFile()) {
      m.files.set(rel, path);
    } else if (d.isSymbolicLink()) {
      const target = await realpath(path).catch(() => undefined);
      if (target === undefined) {
        m.refused.set(rel, 'a broken symbolic link');
        continue;
      }
      if (!isInside(target, m.root)) {
        m.refused.set(rel, `a link to ${target}, outside the model directory`);
        continue;
      }
      // stat, not open: it never blocks, whatever the target is.
      const st = await stat(target).catch(() => undefined);
      if (st?.isFile()) m.files.set(rel, target);
      else m.refused.set(rel, st ? `a link to ${fileKind(st)}` : 'a broken symbolic link');
    } else {
      const st = await stat(path).catch(() => undefined);
      m.refused.set(rel, `not a regular file (${st ? fileKind(st) : 'unknown type'})`);
    }
  }
}

/** Lists a model directory (already known to exist and be a directory). */
export async function listModelFiles(dir: string): Promise<ModelFiles> {
  const realDir = await realpath(dir).catch((e) => {
    throw fileError(dir, 'resolve', e);
  });
  const m: ModelFiles = { dir, realDir, root: await linkRoot(realDir), files: new Map(), refused: new Map() };
  await walk(m, '');
  return m;
}
