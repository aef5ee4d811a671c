import { z } from 'zod';
import { DTYPE_SIZE, isDtype, type Dtype } from './dtypes.js';
import { SafetensorsError } from './errors.js';
import { openRegularFile, readExactly, type RandomAccessFile } from './io.js';
import { findDuplicateKey } from './json-keys.js';
import { checkJsonLimits } from './json-limits.js';

export interface TensorEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Relative to the start of the data section (SafetensorsHeader.dataStart). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  path: string;
  /** Length of the JSON header in bytes, as stored in the 8-byte prefix. */
  headerSize: number;
  /** Absolute file offset of the data section: 8 + headerSize. */
  dataStart: number;
  fileSize: number;
  /** Iterates in data-offset order, so consumers can read the file front to back. */
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
}

// Real headers are KBs to a few MBs; the cap is what stops a hostile 8-byte prefix from
// making us allocate GBs. (The Rust reference caps at 100_000_000, a little below this.)
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

// A file's tensor count is capped for the same reason: parsing costs time and memory per entry
// (a million zero-size entries fit in a 60 MB header and took 30 s and 1.7 GB; parsing is
// linear, about 20 µs and 2 KB per entry on a small machine). Real shards hold a few
// thousand; the largest NVFP4 MoE checkpoints have a few hundred thousand in all, spread
// over tens of shards.
export const MAX_TENSORS = 200_000;

// A header is 3 levels deep (object, entry, shape/data_offsets); the margin costs nothing.
const MAX_HEADER_DEPTH = 16;

const METADATA_KEY = '__metadata__';

const nonNegativeInt = z
  .int({ error: (iss) => `must be a non-negative safe integer, got ${show(iss.input)}` })
  .min(0, { error: (iss) => `must be a non-negative safe integer, got ${show(iss.input)}` });

// Strict object: an entry with extra fields is not something a safetensors writer produces,
// and rejecting it keeps "what we validated" equal to "what is in the file".
const entrySchema = z.strictObject(
  {
    dtype: z.string({ error: (iss) => (iss.input === undefined ? 'is missing' : `must be a string, got ${show(iss.input)}`) }),
    shape: z.array(nonNegativeInt, { error: (iss) => (iss.input === undefined ? 'is missing' : `must be an array, got ${show(iss.input)}`) }),
    data_offsets: z.tuple([nonNegativeInt, nonNegativeInt], {
      error: (iss) => (iss.input === undefined ? 'is missing' : `must be [begin, end], got ${show(iss.input)}`),
    }),
  },
  {
    error: (iss) =>
      iss.code === 'unrecognized_keys'
        ? `unexpected field(s) ${iss.keys.map((k) => JSON.stringify(k)).join(', ')}`
        : `entry must be an object, got ${show(iss.input)}`,
  },
);

const metadataSchema = z.record(z.string(), z.string({ error: (iss) => `must be a string, got ${show(iss.input)}` }), {
  error: (iss) => `must be an object of strings, got ${show(iss.input)}`,
});

/**
 * Validates a header completely: after this returns, every tensor's byte range is known to
 * be consistent with its dtype and shape, and the ranges tile the data section exactly, so
 * readers can trust offsets without re-checking them.
 */
export function parseHeader(path: string, json: Uint8Array, fileSize: number): SafetensorsHeader {
  const fail = (reason: string, tensor?: string) => new SafetensorsError(path, tensor, reason);

  const dataStart = 8 + json.length;
  if (!Number.isSafeInteger(fileSize) || fileSize < dataStart) {
    throw fail(`header of ${json.length} bytes does not fit in a file of ${fileSize} bytes`);
  }
  const dataLength = fileSize - dataStart;

  let text: string;
  try {
    // fatal: lossy decoding would turn bad bytes into U+FFFD and could merge two distinct
    // tensor names. ignoreBOM keeps a BOM in the text so JSON.parse rejects it: the format
    // has no BOM, and stripping it silently would accept files other readers refuse.
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(json);
  } catch {
    throw fail('header is not valid UTF-8');
  }

  // Before JSON.parse allocates anything: depth, entry count, and numbers written as integers
  // (JSON.parse turns "4.0" and "-0" into integers that a check of the value cannot tell apart).
  const counts = { keys: 0 };
  const limit = checkJsonLimits(text, { maxDepth: MAX_HEADER_DEPTH, maxTopEntries: MAX_TENSORS + 1, integersOnly: true }, counts);
  if (limit?.kind === 'depth') throw fail(`header is nested deeper than ${limit.limit} levels`);
  if (limit?.kind === 'entries') throw fail(`header lists more than ${MAX_TENSORS} tensors (the limit of this reader)`);
  if (limit?.kind === 'number') {
    const [owner, ...rest] = limit.path;
    const field = rest.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? p : `.${p}`)).join('');
    const what = `${field ? `${field} ` : ''}must be a non-negative safe integer, got ${clip(limit.literal)} (written as a non-integer number)`;
    throw fail(what, owner === METADATA_KEY || typeof owner !== 'string' ? undefined : owner);
  }

  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw fail(`header is not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw fail(`header must be a JSON object, got ${show(parsed)}`);
  }
  // Writers pad after the object, never before it; the reference implementation rejects
  // a header that doesn't open with '{', so we do too rather than accept what it refuses.
  if (!text.startsWith('{')) throw fail("header must start with '{' (found leading whitespace)");

  // A key written twice in one object leaves the parsed value with fewer keys than the text
  // has; only then is the text walked again to name it (the walk took a fifth of parsing an
  // MoE shard's header).
  const dup = parsedKeys(parsed) !== counts.keys ? findDuplicateKey(text) : undefined;
  if (dup) {
    const owner = dup.within[0] ?? dup.key;
    const nested = dup.within.length > 0 ? ` in ${dup.within.join('.')}` : '';
    throw fail(`duplicate key ${JSON.stringify(dup.key)}${nested}`, owner === METADATA_KEY ? undefined : owner);
  }

  let metadata: Record<string, string> = {};
  const entries: TensorEntry[] = [];
  for (const [name, raw] of Object.entries(parsed)) {
    if (name === METADATA_KEY) metadata = parseMetadata(raw, fail);
    else entries.push(parseEntry(name, raw, dataLength, fail));
  }

  // Ties only happen with zero-size tensors; breaking them by end then name keeps the
  // order (and thus names()) deterministic regardless of JSON key order.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

  // Requiring the ranges to tile [0, dataLength) rules out aliasing (two tensors sharing
  // bytes), hidden payloads in gaps, and trailing junk, all of which the format forbids.
  let covered = 0;
  let prev: TensorEntry | undefined;
  for (const e of entries) {
    if (e.begin < covered) {
      throw fail(`data_offsets [${e.begin}, ${e.end}] overlap tensor ${prev!.name} [${prev!.begin}, ${prev!.end}]`, e.name);
    }
    if (e.begin > covered) {
      const where = prev ? `after tensor ${prev.name} (ends at ${prev.end})` : 'at the start of the data section';
      throw fail(`gap of ${e.begin - covered} unused bytes ${where} before data_offsets [${e.begin}, ${e.end}]`, e.name);
    }
    covered = e.end;
    prev = e;
  }
  if (covered !== dataLength) {
    throw fail(`${dataLength - covered} unused bytes after the last tensor (tensors end at ${covered}, data section is ${dataLength} bytes)`);
  }

  return {
    path,
    headerSize: json.length,
    dataStart,
    fileSize,
    tensors: new Map(entries.map((e) => [e.name, e])),
    metadata,
  };
}

type RawEntry = { dtype: string; shape: number[]; data_offsets: [number, number] };

const isOffset = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/**
 * The entry as entrySchema accepts it, checked by hand: a header of tens of thousands of
 * entries (an MoE shard) spent most of its parsing in the schema. Undefined for anything
 * else, which the schema then rejects with its message.
 */
function plainEntry(raw: unknown): RawEntry | undefined {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw) || Object.keys(raw).length !== 3) return undefined;
  // JSON has no undefined: three keys, these three present, are exactly these three.
  const { dtype, shape, data_offsets: offsets } = raw as Partial<Record<keyof RawEntry, unknown>>;
  if (typeof dtype !== 'string' || !Array.isArray(shape) || !shape.every(isOffset)) return undefined;
  if (!Array.isArray(offsets) || offsets.length !== 2 || !isOffset(offsets[0]) || !isOffset(offsets[1])) return undefined;
  return raw as RawEntry;
}

function parseEntry(name: string, raw: unknown, dataLength: number, fail: (reason: string, tensor?: string) => SafetensorsError): TensorEntry {
  let data = plainEntry(raw);
  if (!data) {
    const r = entrySchema.safeParse(raw);
    if (!r.success) {
      const issue = r.error.issues[0]!;
      const field = issue.path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join('');
      throw fail(field ? `${field} ${issue.message}` : issue.message, name);
    }
    data = r.data;
  }
  const { dtype, shape, data_offsets: [begin, end] } = data;
  if (!isDtype(dtype)) throw fail(`unknown dtype ${JSON.stringify(dtype)}`, name);
  if (begin > end) throw fail(`data_offsets [${begin}, ${end}] have begin after end`, name);

  // BigInt because the element count of a hostile shape can exceed 2^53 and silently round,
  // which would let a wrong shape match its offsets.
  const expected = shape.reduce((n, d) => n * BigInt(d), BigInt(DTYPE_SIZE[dtype]));
  if (expected !== BigInt(end - begin)) {
    throw fail(
      `byte length mismatch: ${dtype} [${shape.join(', ')}] needs ${expected} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`,
      name,
    );
  }
  if (end > dataLength) {
    throw fail(`data_offsets [${begin}, ${end}] out of bounds: the data section is only ${dataLength} bytes (file truncated?)`, name);
  }
  return { name, dtype, shape, begin, end };
}

function parseMetadata(raw: unknown, fail: (reason: string, tensor?: string) => SafetensorsError): Record<string, string> {
  const r = metadataSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const key = issue.path.length > 0 ? ` value for key ${JSON.stringify(String(issue.path[0]))}` : '';
    throw fail(`__metadata__${key} ${issue.message}`);
  }
  // Copied with defineProperty from the validated input: a plain assignment of a key named
  // "__proto__" would change the object's prototype instead of storing the string.
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw as Record<string, string>)) {
    Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

/** Reads and validates the header without reading any tensor data. */
export async function readHeader(path: string): Promise<SafetensorsHeader> {
  const { handle } = await openRegularFile(path);
  try {
    return await readHeaderFrom(handle, path);
  } finally {
    await handle.close();
  }
}

/**
 * Shared with SafetensorsReader so the header and the tensor bytes come from the same open
 * file, not from whatever sits at `path` by the time a second open() would run.
 */
export async function readHeaderFrom(handle: RandomAccessFile, path: string): Promise<SafetensorsHeader> {
  const fail = (reason: string) => new SafetensorsError(path, undefined, reason);
  const { size } = await handle.stat();
  if (size < 8) throw fail(`file is ${size} bytes, too short for the 8-byte header length prefix`);

  const prefix = Buffer.alloc(8);
  await readExactly(handle, prefix, 0, path, undefined);
  // Compared as a BigInt before any allocation: the prefix is attacker-controlled and can
  // claim up to 2^64-1 bytes, which also isn't exactly representable as a Number.
  const headerSize = prefix.readBigUInt64LE(0);
  if (headerSize > BigInt(MAX_HEADER_BYTES)) {
    throw fail(`header length ${headerSize} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  if (headerSize > BigInt(size - 8)) {
    throw fail(`header length ${headerSize} exceeds the ${size - 8} bytes after the length prefix`);
  }

  const json = Buffer.alloc(Number(headerSize));
  await readExactly(handle, json, 8, path, undefined);
  return parseHeader(path, json, size);
}

/** Short, one-line description of an untrusted value for error messages. */
function show(v: unknown): string {
  if (v === undefined) return 'undefined';
  if (Array.isArray(v)) {
    const small = v.length <= 8 && v.every((x) => x === null || typeof x !== 'object');
    return small ? clip(JSON.stringify(v)) : `an array of ${v.length} items`;
  }
  if (v === null) return 'null';
  if (typeof v === 'object') return 'an object';
  return clip(typeof v === 'string' ? JSON.stringify(v) : String(v));
}

function clip(s: string): string {
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** Keys of every object in a parsed JSON value, at any depth. */
function parsedKeys(v: unknown): number {
  if (typeof v !== 'object' || v === null) return 0;
  let n = 0;
  if (Array.isArray(v)) {
    for (const e of v) n += parsedKeys(e);
    return n;
  }
  for (const k in v) {
    n++;
    n += parsedKeys((v as Record<string, unknown>)[k]);
  }
  return n;
}
