// Integrity step: the manifest's files and checksums (a file changed after conversion), the
// source's shards hashed for the report, and checked against the ones the manifest says were
// converted: a different source is an error unless the user named it with --source (then a
// warning: an equivalent source still verifies, the other checks decide). Hashing runs on
// worker threads from the start, beside the other steps; verify awaits the result at the end.
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { MANIFEST_FILE } from '../format/manifest.js';
import { checkManifest } from '../integrity/manifest-check.js';
import { HashQueue, type FileDigest } from '../integrity/sha256.js';
import type { VerifyContext } from './context.js';
import type { SourceReport } from './report.js';

export interface IntegrityResult {
  errors: string[];
  warnings: string[];
  source: SourceReport;
}

/** Hash workers: half the cores (up to 8), so that hashing the output and the source overlaps the checks. */
function hashWorkers(): number {
  return Math.max(1, Math.min(8, Math.floor(availableParallelism() / 2)));
}

export async function checkIntegrity(ctx: VerifyContext): Promise<IntegrityResult> {
  const { dir, manifest, sourceDir } = ctx;
  const errors: string[] = [];
  const warnings: string[] = [];
  const hashes = new HashQueue(hashWorkers());
  try {
    // The source's shards first in the queue beside the output's files: both are needed.
    const shardDigests = new Map<string, Promise<FileDigest>>(ctx.src.shards.map((s) => [s, hashes.digest(join(sourceDir, s))]));
    const integrity = await checkManifest(dir, manifest, hashes).catch((e: Error) => {
      errors.push(`${MANIFEST_FILE}: ${e.message}`);
      return undefined;
    });
    for (const p of integrity?.problems ?? []) errors.push(`integrity: ${p.file}: ${p.reason}`);
    if (integrity && !integrity.hasChecksums) warnings.push(`${MANIFEST_FILE} holds no checksums (converted with --no-checksums): files were not checked for changes`);

    const shards: SourceReport['shards'] = [];
    for (const [name, p] of shardDigests) {
      const d = await p;
      shards.push({ name, bytes: d.bytes, sha256: d.sha256 });
    }
    const recorded = manifest.source?.shards ?? [];
    const differences: string[] = [];
    const now = new Map(shards.map((s) => [s.name, s]));
    for (const f of recorded) {
      const got = now.get(f.name);
      if (!got) differences.push(existsSync(join(sourceDir, f.name)) ? `${f.name} is no longer a shard` : `${f.name} missing`);
      else if (f.sha256 ? got.sha256 !== f.sha256 : got.bytes !== f.bytes) differences.push(`${f.name} has another ${f.sha256 ? 'sha256' : 'size'}`);
    }
    for (const s of shards) if (!recorded.some((f) => f.name === s.name) && recorded.length) differences.push(`${s.name} was not converted`);
    const recordedPath = manifest.source?.path;
    if (differences.length) {
      const what = `source ${sourceDir} is not the checkpoint that was converted (${differences.join(', ')})`;
      if (ctx.sourceNamed) warnings.push(`${what}: verifying against it as given`);
      else errors.push(`${what}; pass --source to verify against another source`);
    }
    return {
      errors,
      warnings,
      source: {
        path: sourceDir,
        named: ctx.sourceNamed,
        recorded_path: recordedPath ?? null,
        matches_manifest: recorded.length ? differences.length === 0 : null,
        shards,
      },
    };
  } finally {
    await hashes.close();
  }
}

/** manifest vs config.json: the two must agree on layout and activation dtype. */
export function manifestAgrees(ctx: VerifyContext): string[] {
  const out: string[] = [];
  if (ctx.manifest.layout !== ctx.layout) out.push(`${MANIFEST_FILE} says layout ${ctx.manifest.layout}, config.json says ${ctx.layout}`);
  if (ctx.manifest.activation_dtype !== ctx.dtype) out.push(`${MANIFEST_FILE} says activation dtype ${ctx.manifest.activation_dtype}, config.json says ${ctx.dtype}`);
  return out;
}
