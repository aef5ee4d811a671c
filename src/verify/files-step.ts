// Completeness: every file of the output is one convert writes for this source, with the
// content it writes — config.json and the shard index as convert builds them, the model's
// other files (and the source's model card, kept as SOURCE_MODEL_CARD.md) byte-equal with the
// source's, each shard holding exactly the plan's tensors
// (no extra tensor, none in another shard) under the __metadata__ convert writes — and no
// file that convert would not write. The tensors' bytes are the structure and copied steps'.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { INDEX_FILE } from '../checkpoint/model-dir.js';
import { convertedConfig, convertedIndex, copiedFiles, writesIndex } from '../convert/write-files.js';
import { convertedShardMetadata } from '../convert/write-shard.js';
import { CARD_FILE, SOURCE_CARD_FILE } from '../convert/model-card.js';
import { MANIFEST_FILE } from '../format/manifest.js';
import { layerRecords } from '../plan/records.js';
import type { VerifyContext } from './context.js';
import { compareFiles } from './stream-compare.js';

const show = (v: unknown) => (v === undefined ? 'absent' : JSON.stringify(v).length > 80 ? `${JSON.stringify(v).slice(0, 77)}...` : JSON.stringify(v));

/** The first place where two JSON values differ, as "path: got here, want there", or undefined. */
export function jsonDifference(got: unknown, want: unknown, path = ''): string | undefined {
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;
  if (isObj(got) && isObj(want) && Array.isArray(got) === Array.isArray(want)) {
    const keys = [...new Set([...Object.keys(want), ...Object.keys(got)])];
    for (const k of keys) {
      const d = jsonDifference(got[k], want[k], Array.isArray(want) ? `${path}[${k}]` : path ? `${path}.${k}` : k);
      if (d) return d;
    }
    return undefined;
  }
  if (JSON.stringify(got) === JSON.stringify(want)) return undefined;
  return `${path || '(whole)'} is ${show(got)}, convert writes ${show(want)}`;
}

/** Metadata values that hold JSON (marlin_fp4's records) parsed, so a difference names the field. */
function parsedValues(m: Record<string, string>): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(m).map(([k, v]) => {
      try {
        return [k, JSON.parse(v)];
      } catch {
        return [k, v];
      }
    }),
  );
}

async function readJson(path: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    return { __unreadable__: (e as Error).message };
  }
}

export async function checkFiles(ctx: VerifyContext): Promise<void> {
  const { out, src, plan, errors } = ctx;
  // config.json as convert builds it from this source (compared as JSON: same keys and values).
  const wantConfig = JSON.parse(JSON.stringify(convertedConfig(src, plan, ctx.flavour)));
  const d = jsonDifference(await readJson(join(out.dir, 'config.json')), wantConfig);
  if (d) errors.push(`config.json: ${d}`);

  const index = writesIndex(src, plan);
  if (index) {
    const di = jsonDifference(await readJson(join(out.dir, INDEX_FILE)), convertedIndex(plan));
    if (di) errors.push(`${INDEX_FILE}: ${di}`);
  }

  // The set of files. The model card (README.md) depends on convert's options (names, a target
  // repo) and gets its verification block filled in after conversion: it must be there, its
  // bytes are the manifest's to vouch for (integrity). The source's own card is kept
  // unchanged as SOURCE_MODEL_CARD.md.
  const side = copiedFiles(src);
  const sourceCard = src.otherFiles.includes(CARD_FILE);
  const expected = new Set([
    'config.json',
    MANIFEST_FILE,
    CARD_FILE,
    ...(sourceCard ? [SOURCE_CARD_FILE] : []),
    ...plan.shards.map((s) => s.file),
    ...side,
    ...(index ? [INDEX_FILE] : []),
  ]);
  const present = new Set([...out.shards, ...out.otherFiles, ...(existsSync(join(out.dir, INDEX_FILE)) ? [INDEX_FILE] : [])]);
  for (const f of [...present].sort()) if (!expected.has(f)) errors.push(`${f}: a file convert does not write for this source`);
  for (const f of [...expected].sort()) if (!present.has(f)) errors.push(`${f}: missing (convert writes it for this source)`);

  // The model's other files, byte for byte.
  const pairs: [string, string][] = side.map((f) => [f, f]);
  if (sourceCard) pairs.push([SOURCE_CARD_FILE, CARD_FILE]);
  for (const [f, from] of pairs) {
    if (!present.has(f)) continue;
    const c = await compareFiles(join(out.dir, f), join(src.dir, from), ctx.pool);
    if (c.count === 0) continue;
    errors.push(
      c.sizeA !== c.sizeB
        ? `${f}: ${c.sizeA} bytes, the source's ${from} has ${c.sizeB} (convert copies it unchanged)`
        : `${f}: differs from the source's ${from} in ${c.count} bytes, first at byte ${c.first} (convert copies it unchanged)`,
    );
  }

  // Each shard: exactly the plan's tensors, under the metadata convert writes.
  const records = layerRecords(plan);
  const planned = new Map(plan.shards.flatMap((s) => s.tensors.map((t) => [t.name, s.file] as const)));
  for (const shard of plan.shards) {
    const reader = out.readers.get(shard.file);
    if (!reader) continue;
    for (const name of reader.header.tensors.keys()) {
      const want = planned.get(name);
      if (!want) errors.push(`${name}: in ${shard.file}, but convert writes no such tensor for this source`);
      else if (want !== shard.file) errors.push(`${name}: in ${shard.file}, convert writes it to ${want}`);
    }
    const dm = jsonDifference(parsedValues(reader.header.metadata), parsedValues(convertedShardMetadata(plan, shard, records)));
    if (dm) errors.push(`${shard.file}: __metadata__ ${dm}`);
  }
}
