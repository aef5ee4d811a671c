// Opens a model directory: config, shards (single, indexed, or several without an index) and
// a catalogue of every tensor with the shard that holds it. Only headers are read here.
import { stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { listModelFiles } from './model-files.js';
import { z } from 'zod';
import { InputError } from '../errors.js';
import { SafetensorsError, SafetensorsReader, type RandomAccessFile, type SafetensorsHeader, type TensorEntry } from '../safetensors/index.js';
import { readJsonObject } from './json-file.js';

export const INDEX_FILE = 'model.safetensors.index.json';

export interface TensorRef {
  name: string;
  shard: string; // file name inside the model directory
  entry: TensorEntry;
}

export interface Checkpoint {
  dir: string;
  config: Record<string, unknown>;
  hfQuantConfig?: Record<string, unknown>;
  /** Shard file names, in the order the index (or the directory listing) gives them. */
  shards: string[];
  readers: Map<string, SafetensorsReader>;
  tensors: Map<string, TensorRef>;
  /** Every other file of the directory (tokenizer, generation config, …), relative paths. */
  otherFiles: string[];
  /** The directory's real path (links resolved). */
  realDir: string;
  /** Where the model's links may point (realDir, or a Hub snapshot's repo cache folder). */
  root: string;
  /** Real path of every readable file, by relative path (open with O_NOFOLLOW). */
  realPaths: Map<string, string>;
  /** Files left out because they are not regular files inside the model, one line each. */
  warnings: string[];
  sharded: boolean;
  close(): Promise<void>;
}

/** Each shard's position in `ckpt.shards`: the order in which reads and scans visit the files. */
export function shardPositions(ckpt: Pick<Checkpoint, 'shards'>): Map<string, number> {
  return new Map(ckpt.shards.map((s, i) => [s, i]));
}

const IndexSchema = z.object({
  metadata: z.record(z.string(), z.unknown()).optional(),
  weight_map: z.record(z.string(), z.string()),
});

/** An index's weight map, with the shards it names (in the order first named) and how many tensors it lists. */
interface WeightMap {
  map: Record<string, string>;
  shards: string[];
  tensors: number;
}

/**
 * The index's weight map when IndexSchema would accept the index as it is; undefined
 * otherwise (the schema says why). One pass over the map, which has an entry per tensor,
 * checks it, lists its shards and counts its tensors: listing its values apart took 50 ms of
 * the 0.8 s that opening an MoE of 37,000 tensors took on the 2-core VM.
 */
function plainWeightMap(index: Record<string, unknown>): WeightMap | undefined {
  const { metadata, weight_map: map } = index;
  const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (metadata !== undefined && !isRecord(metadata)) return undefined;
  if (!isRecord(map)) return undefined;
  const shards = new Set<string>();
  let last: string | undefined;
  let tensors = 0;
  for (const k in map) {
    const shard = map[k];
    if (typeof shard !== 'string') return undefined;
    tensors++;
    // Tensors of one shard are usually listed together: the set sees each run once.
    if (shard !== last) shards.add((last = shard));
  }
  return { map: map as Record<string, string>, shards: [...shards], tensors };
}

function safeShardName(indexPath: string, file: string): string {
  if (file !== basename(file) || file === '.' || file === '..' || !file.endsWith('.safetensors')) {
    throw new InputError(`${indexPath}: weight_map names "${file}", which is not a .safetensors file in this directory`);
  }
  return file;
}

/**
 * Shards that are not in the directory but read from elsewhere (a Hub repo by range requests,
 * checkpoint/resolve-model.ts): their names join the directory's files, and they are opened
 * through `open`.
 */
export interface ShardSource {
  files: string[];
  open(file: string): Promise<RandomAccessFile>;
  /** Called with each shard's header once read (e.g. to fetch its scalars in one go). */
  opened?(file: string, header: SafetensorsHeader): Promise<void>;
}

/** Callbacks of openCheckpoint. */
export interface OpenHooks {
  /**
   * The local shards, once their names are known and each is checked to be a regular file
   * inside the model, before their headers are read: convert starts hashing them here.
   */
  onShards?(dir: string, shards: string[]): void;
}

export async function openCheckpoint(modelDir: string, remote?: ShardSource, hooks: OpenHooks = {}): Promise<Checkpoint> {
  const dir = resolve(modelDir);
  const st = await stat(dir).catch(() => undefined);
  if (!st) throw new InputError(`${modelDir}: no such directory`);
  if (!st.isDirectory()) throw new InputError(`${modelDir}: not a directory (give the model's directory)`);
  const listed = await listModelFiles(dir);
  // config.json, hf_quant_config.json, the index and the shards must be readable regular files
  // of the model: anything else refused under those names is an error, not a skipped file.
  const usable = (rel: string): string | undefined => {
    const why = listed.refused.get(rel);
    if (why) throw new InputError(`${join(dir, rel)}: ${why}; the model's files must be regular files inside its directory`);
    return listed.files.get(rel);
  };
  const readJson = (rel: string) => {
    const real = usable(rel);
    return real ? readJsonObject(join(dir, rel), { realPath: real, noFollow: true }) : undefined;
  };

  const configPath = join(dir, 'config.json');
  const config = await readJson('config.json');
  if (!config) throw new InputError(`${configPath}: missing (a model directory needs config.json)`);
  const hfQuantConfig = await readJson('hf_quant_config.json');

  const isRemote = (rel: string) => remote?.files.includes(rel) === true && !listed.files.has(rel);
  const files = [...new Set([...listed.files.keys(), ...(remote?.files ?? [])])].sort();
  let shards: string[];
  let weightMap: Record<string, string> | undefined;
  let listedTensors = 0;
  const indexPath = join(dir, INDEX_FILE);
  const index = await readJson(INDEX_FILE);
  if (index) {
    // Checked by hand first: the schema took a tenth of opening an MoE of 37,000 tensors.
    let plain = plainWeightMap(index);
    if (!plain) {
      const parsed = IndexSchema.safeParse(index);
      if (!parsed.success) {
        throw new InputError(`${indexPath}: ${parsed.error.issues[0]?.path.join('.') || 'index'}: ${parsed.error.issues[0]?.message}`);
      }
      const map = parsed.data.weight_map;
      plain = { map, shards: [...new Set(Object.values(map))], tensors: Object.keys(map).length };
    }
    weightMap = plain.map;
    listedTensors = plain.tensors;
    shards = plain.shards.map((f) => safeShardName(indexPath, f));
    for (const s of shards) if (!isRemote(s) && !usable(s)) throw new InputError(`${indexPath}: names shard ${s}, which does not exist`);
  } else {
    for (const rel of listed.refused.keys()) if (rel.endsWith('.safetensors') && !rel.includes('/')) usable(rel);
    shards = files.filter((f) => f.endsWith('.safetensors') && !f.includes('/'));
  }
  if (shards.length === 0) throw new InputError(`${modelDir}: no *.safetensors files`);
  hooks.onShards?.(dir, shards.filter((s) => !isRemote(s)));

  const readers = new Map<string, SafetensorsReader>();
  const tensors = new Map<string, TensorRef>();
  const close = async () => {
    await Promise.all([...readers.values()].map((r) => r.close()));
  };
  try {
    for (const shard of shards) {
      const opened = isRemote(shard)
        ? SafetensorsReader.fromFile(await remote!.open(shard), join(dir, shard))
        : SafetensorsReader.open(join(dir, shard), { realPath: listed.files.get(shard), noFollow: true });
      const reader = await opened.catch((e) => {
        if (e instanceof SafetensorsError) throw new InputError(e.message);
        throw e;
      });
      readers.set(shard, reader);
      if (isRemote(shard)) await remote!.opened?.(shard, reader.header);
      for (const entry of reader.header.tensors.values()) {
        const prev = tensors.get(entry.name);
        if (prev) throw new InputError(`${join(dir, shard)}: tensor ${entry.name}: also in ${prev.shard}`);
        if (weightMap && weightMap[entry.name] !== shard) {
          throw new InputError(
            `${join(dir, shard)}: tensor ${entry.name}: not listed for this shard in ${INDEX_FILE}` +
              (weightMap[entry.name] ? ` (it says ${weightMap[entry.name]})` : ''),
          );
        }
        tensors.set(entry.name, { name: entry.name, shard, entry });
      }
    }
    // Every tensor of the headers is in the weight map (checked above, each once), so the map
    // names one that is nowhere exactly when it lists more; only then is it walked for the
    // message (the walk took 80 ms of opening an MoE of 37,000 tensors on the 2-core VM).
    if (weightMap && listedTensors !== tensors.size) {
      for (const [name, shard] of Object.entries(weightMap)) {
        if (!tensors.has(name)) throw new InputError(`${indexPath}: tensor ${name}: listed in ${shard} but not there`);
      }
    }
  } catch (e) {
    await close();
    throw e;
  }

  const shardSet = new Set(shards);
  const otherFiles = files.filter((f) => !shardSet.has(f) && f !== INDEX_FILE);
  // Side files (tokenizer, chat template, …) that are not regular files inside the model are
  // left out with a warning: the conversion does not need them, and copying one that links
  // outside would publish a file that is not the model's.
  const warnings = [...listed.refused].filter(([rel]) => !shardSet.has(rel)).map(([rel, why]) => `${join(dir, rel)}: not copied: ${why}`);
  return {
    dir,
    realDir: listed.realDir,
    root: listed.root,
    realPaths: listed.files,
    warnings,
    config,
    hfQuantConfig,
    shards,
    readers,
    tensors,
    otherFiles,
    sharded: index !== undefined || shards.length > 1,
    close,
  };
}

/** Reads one tensor's bytes. */
export function readTensor(ckpt: Checkpoint, name: string): Promise<Buffer> {
  const ref = ckpt.tensors.get(name);
  if (!ref) throw new InputError(`${ckpt.dir}: tensor ${name}: missing`);
  return ckpt.readers.get(ref.shard)!.read(name).catch((e) => {
    if (e instanceof SafetensorsError) throw new InputError(e.message);
    throw e;
  });
}

/** Fills `target` with bytes of one tensor from `offset` (streaming copies, reused buffers). */
export function readTensorInto(ckpt: Checkpoint, name: string, offset: number, target: Uint8Array): Promise<Uint8Array> {
  const ref = ckpt.tensors.get(name);
  if (!ref) throw new InputError(`${ckpt.dir}: tensor ${name}: missing`);
  return ckpt.readers.get(ref.shard)!.readRangeInto(name, offset, target).catch((e) => {
    if (e instanceof SafetensorsError) throw new InputError(e.message);
    throw e;
  });
}
