// Integrity step, run first: a file changed after conversion, or a source that is not the
// one converted, is reported before anything is recomputed; the manifest must agree with
// config.json on layout and activation dtype.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { MANIFEST_FILE } from '../format/manifest.js';
import { checkManifest } from '../integrity/manifest-check.js';
import { sha256Files } from '../integrity/sha256.js';
import type { VerifyContext } from './context.js';

export async function checkIntegrity(ctx: VerifyContext): Promise<void> {
  const { dir, manifest, sourceDir, errors, warnings } = ctx;
  const integrity = await checkManifest(dir, manifest).catch((e: Error) => {
    errors.push(`${MANIFEST_FILE}: ${e.message}`);
    return undefined;
  });
  for (const p of integrity?.problems ?? []) errors.push(`integrity: ${p.file}: ${p.reason}`);
  if (integrity && !integrity.hasChecksums) warnings.push(`${MANIFEST_FILE} holds no checksums (converted with --no-checksums): files were not checked for changes`);
  const recordedSource = manifest.source?.shards ?? [];
  if (recordedSource.some((f) => f.sha256)) {
    // A different source is not by itself a fault of the converted checkpoint (an equivalent
    // source verifies), so this is a warning; the structural checks decide.
    const missing = recordedSource.filter((f) => !existsSync(join(sourceDir, f.name)));
    const digests = await sha256Files(recordedSource.filter((f) => !missing.includes(f)).map((f) => join(sourceDir, f.name)));
    const differ = recordedSource.filter((f) => f.sha256 && digests.get(join(sourceDir, f.name)) && digests.get(join(sourceDir, f.name))!.sha256 !== f.sha256);
    if (missing.length || differ.length) {
      warnings.push(
        `source ${sourceDir} is not the checkpoint that was converted (${[...missing.map((f) => `${f.name} missing`), ...differ.map((f) => `${f.name} has another sha256`)].join(', ')}): verifying against it as given`,
      );
    }
  }
  if (manifest.layout !== ctx.layout) errors.push(`${MANIFEST_FILE} says layout ${manifest.layout}, config.json says ${ctx.layout}`);
  if (manifest.activation_dtype !== ctx.dtype) errors.push(`${MANIFEST_FILE} says activation dtype ${manifest.activation_dtype}, config.json says ${ctx.dtype}`);
}
