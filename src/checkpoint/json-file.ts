// Reads the JSON files of a model directory (config.json, hf_quant_config.json, the shard
// index): regular files only, opened without blocking, capped in size and nesting depth, and
// every failure one line naming the file.
import { fileError, InputError } from '../errors.js';
import { SafetensorsError } from '../safetensors/errors.js';
import { openRegularFile, readExactly, type OpenOptions } from '../safetensors/io.js';
import { checkJsonLimits } from '../safetensors/json-limits.js';

// A model's JSON files are KBs (an index of a 700 GB model is about 10 MB); the caps stop a
// hostile file from costing memory or overflowing the stack of code that walks the value
// (JSON.stringify of a config nested 10,000 deep did).
export const MAX_JSON_BYTES = 256 * 1024 * 1024;
export const MAX_JSON_DEPTH = 64;

/**
 * Reads a JSON object file; a missing file gives undefined, anything else wrong one line:
 * not a regular file, malformed or too deep (InputError, exit code 2), or unreadable
 * (permissions, I/O: EnvironmentError, exit code 3, the same as for a shard).
 */
export async function readJsonObject(path: string, opts: OpenOptions = {}): Promise<Record<string, unknown> | undefined> {
  let opened: Awaited<ReturnType<typeof openRegularFile>>;
  try {
    opened = await openRegularFile(path, opts);
  } catch (e) {
    if (e instanceof InputError && e.code === 'ENOENT') return undefined;
    throw e;
  }
  let text: string;
  const { handle, stat } = opened;
  try {
    if (stat.size > MAX_JSON_BYTES) throw new InputError(`${path}: ${stat.size} bytes is more than the ${MAX_JSON_BYTES}-byte limit for a JSON file`);
    const buf = Buffer.alloc(stat.size);
    await readExactly(handle, buf, 0, path, undefined);
    text = buf.toString('utf8');
  } catch (e) {
    if (e instanceof SafetensorsError) throw new InputError(e.message); // shorter than its size said
    throw fileError(path, 'read', e);
  } finally {
    await handle.close();
  }
  const limit = checkJsonLimits(text, { maxDepth: MAX_JSON_DEPTH });
  if (limit) throw new InputError(`${path}: nested deeper than ${MAX_JSON_DEPTH} levels`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new InputError(`${path}: not valid JSON: ${(e as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InputError(`${path}: expected a JSON object`);
  }
  return value as Record<string, unknown>;
}
