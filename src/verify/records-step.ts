// Metadata step: the manifest's and every shard's records must describe each converted
// module as the plan does (layout, dtype, shapes, sf, fused group), and list no module the source lacks.
import { MANIFEST_FILE } from '../format/manifest.js';
import { readShardMetadata, SHARD_METADATA_KEY, type LayerRecord, type ReadRecord } from '../format/records.js';
import { denseRecord, stackRecord } from '../plan/records.js';
import type { VerifyContext } from './context.js';
import type { Unit } from './units.js';

/** The record fields a converted module's claims are checked on. */
const CHECKED: readonly (keyof LayerRecord)[] = ['layout', 'activation_dtype', 'n', 'k', 'np', 'kp', 'sf', 'fused_group', 'scheme', 'group_size', 'gated'];

export interface Claims {
  manifest: Map<string, ReadRecord>;
  shards: Map<string, ReadRecord>;
}

/** Reads both record lists; a shard whose metadata is not JSON is an error of the run. */
export function readClaims(ctx: VerifyContext, units: Unit[]): Claims {
  const manifest = new Map<string, ReadRecord>((ctx.manifest.layers ?? []).map((r) => [r.name, r]));
  const shards = new Map<string, ReadRecord>();
  for (const [shard, reader] of ctx.out.readers) {
    try {
      for (const r of readShardMetadata(reader.header.metadata)?.layers ?? []) shards.set(r.name, r);
    } catch {
      ctx.errors.push(`${shard}: __metadata__.${SHARD_METADATA_KEY} is not valid JSON`);
    }
  }
  for (const name of manifest.keys()) {
    if (!units.some((u) => u.name === name)) ctx.errors.push(`${name}: listed in ${MANIFEST_FILE} but the source has no such quantized module`);
  }
  return { manifest, shards };
}

/** What the records say about one module that differs from the plan's record of it. */
export function claimErrors(ctx: VerifyContext, claims: Claims, u: Unit): string[] {
  const want = u.dense ? denseRecord(ctx.plan, u.dense) : stackRecord(ctx.plan, u.stack!);
  const errs: string[] = [];
  const sources = [
    [MANIFEST_FILE, claims.manifest.get(u.name)],
    ['shard metadata', claims.shards.get(u.name)],
  ] as const;
  for (const [where, r] of sources) {
    if (!r) {
      errs.push(`no record in ${where}`);
      continue;
    }
    for (const key of CHECKED) {
      const got = (r as Record<string, unknown>)[key];
      if (got !== want[key]) errs.push(`${where} says ${key} = ${JSON.stringify(got)}, expected ${JSON.stringify(want[key])}`);
    }
  }
  return errs;
}
