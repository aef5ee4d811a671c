// Checks a converted directory against its manifest: every listed file present, with the
// recorded size and sha256, and no tensor file that the manifest does not list.
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { MANIFEST_FILE, manifestProblem, type Manifest } from '../format/manifest.js';
import { sha256Files, type HashQueue } from './sha256.js';

export interface ManifestProblem {
  file: string;
  reason: string;
}

export interface ManifestCheck {
  /** Files whose checksum was compared. */
  checked: number;
  /** False when the manifest holds no checksums (convert --no-checksums). */
  hasChecksums: boolean;
  problems: ManifestProblem[];
}

export async function readManifest(dir: string): Promise<Manifest> {
  const path = join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new InputError(`${path}: missing (not a directory written by marlin-fp4 convert)`);
  }
  try {
    const m = JSON.parse(text) as Manifest;
    const problem = manifestProblem(m);
    if (problem) throw new Error(problem);
    return m;
  } catch (e) {
    throw new InputError(`${path}: ${(e as Error).message}`);
  }
}

/**
 * hashes: a queue to hash on (verify shares one between the output and the source, and
 * closes it); by default a queue of its own.
 */
export async function checkManifest(dir: string, manifest?: Manifest, hashes?: HashQueue): Promise<ManifestCheck> {
  const m = manifest ?? (await readManifest(dir));
  const problems: ManifestProblem[] = [];
  const present: string[] = [];
  for (const f of m.files) {
    const st = await stat(join(dir, f.name)).catch(() => undefined);
    if (!st) problems.push({ file: f.name, reason: 'listed in the manifest but missing' });
    else if (st.size !== f.bytes) problems.push({ file: f.name, reason: `size ${st.size} differs from the manifest's ${f.bytes}` });
    else if (f.sha256) present.push(f.name);
  }
  const digests = hashes
    ? new Map(await Promise.all(present.map(async (f) => [join(dir, f), await hashes.digest(join(dir, f))] as const)))
    : await sha256Files(present.map((f) => join(dir, f)));
  for (const f of m.files) {
    const d = digests.get(join(dir, f.name));
    if (d && d.sha256 !== f.sha256) problems.push({ file: f.name, reason: `sha256 ${d.sha256} differs from the manifest's ${f.sha256} (modified after conversion)` });
  }
  const listed = new Set(m.files.map((f) => f.name));
  for (const f of await readdir(dir)) {
    if (f.endsWith('.safetensors') && !listed.has(f)) problems.push({ file: f, reason: 'not listed in the manifest' });
  }
  return { checked: digests.size, hasChecksums: m.files.some((f) => f.sha256), problems };
}
