// A model argument is a local directory or, when no such path exists and it looks like
// `org/name`, a Hugging Face Hub repo id: then only the files a conversion needs (configs,
// index, shards, tokenizer and generation files) and the files the output carries over for
// people and loaders (README, licence, the custom code config.json's auto_map names) are
// downloaded into the standard HF cache (HF_HUB_CACHE, else HF_HOME/hub, else
// ~/.cache/huggingface/hub), and the cached snapshot directory is used as the model directory.
// Token, endpoint and offline mode come from hub-env.ts (as huggingface_hub reads them).
// With `headersOnly` (inspect), only the small JSON files are downloaded and the shards are
// read with HTTP range requests (hub-ranges.ts).
import { readdir, readlink, stat, mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { envInteger, EnvironmentError, InputError } from '../errors.js';
import { hubEndpoint, hubOffline, hubToken } from './hub-env.js';
import { RangeFile } from './hub-ranges.js';
import { INDEX_FILE } from './model-dir.js';
import type { SafetensorsHeader } from '../safetensors/index.js';

/** Tensors this small (scalars, a few values) are prefetched when a shard is read remotely. */
const SCALAR_BYTES = 64;

export interface HubSource {
  repo: string;
  revision: string;
  /** The commit the revision pointed at. */
  commit: string;
  /** Files of the snapshot used (downloaded now or found in the cache). */
  files: string[];
  bytes: number;
  /** Bytes fetched by this run (0 when everything was cached). */
  downloaded_bytes: number;
  /** The sha256 the Hub publishes for each LFS file of the snapshot (its Git LFS oid), by path. */
  lfs_sha256: Record<string, string>;
}

/** A repo's shards, opened for range requests instead of downloaded (ResolveOptions.headersOnly). */
export interface RemoteShards {
  /** Every top-level file of the repo at that commit. */
  files: string[];
  open(path: string): Promise<RangeFile>;
  /** Fetches a shard's scalar tensors (global and input scales) together, once its header is read. */
  opened(path: string, header: SafetensorsHeader): Promise<void>;
  /** Bytes of file content fetched so far, downloads and range requests. */
  fetched(): number;
}

export interface ResolvedModel {
  /** The local model directory (for a repo id: the cached snapshot). */
  dir: string;
  /** Where `convert` writes by default: `<model>-marlin` beside a local model, `./<name>-marlin` for a repo id. */
  defaultOutput: string;
  hub?: HubSource;
  /** Set with headersOnly: the shards, read by range requests. */
  remote?: RemoteShards;
}

export interface DownloadProgress {
  bytesDone: number;
  bytesTotal: number;
  file: string;
}

export interface ResolveOptions {
  /** Branch, tag or commit (repo ids only; default main). */
  revision?: string;
  onProgress?(p: DownloadProgress): void;
  /** Defaults: env HF_ENDPOINT, else https://huggingface.co. */
  hubUrl?: string;
  /** Defaults to the library's HF cache path (HF_HUB_CACHE / HF_HOME / ~/.cache/huggingface/hub). */
  cacheDir?: string;
  /** Download only config.json, hf_quant_config.json, the index and `extraFiles`; read shards by range requests. */
  headersOnly?: boolean;
  /** Small files also downloaded with headersOnly when the repo has them (e.g. a converted checkpoint's manifest). */
  extraFiles?: string[];
}

/** Seconds a Hub request may stay silent (connect, headers, or between body pieces). */
export const DEFAULT_HUB_TIMEOUT_S = 60;

const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}\/[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}$/;

/** Whether a string has the shape of a Hub model id (`org/name`). */
export function looksLikeRepoId(s: string): boolean {
  return REPO_ID.test(s) && !s.includes('..') && !s.includes('--') && !s.endsWith('.') && !s.endsWith('-');
}

/** Top-level files of a repo that a Marlin conversion reads or carries over. */
export function neededFile(path: string): boolean {
  if (path.includes('/')) return false;
  return (
    path === 'config.json' ||
    path === 'hf_quant_config.json' ||
    path === 'generation_config.json' ||
    path.endsWith('.safetensors') ||
    path.endsWith('.safetensors.index.json') ||
    /^tokenizer([._-].*)?$/.test(path) ||
    ['special_tokens_map.json', 'added_tokens.json', 'vocab.json', 'vocab.txt', 'merges.txt', 'preprocessor_config.json'].includes(path) ||
    /^chat_template\.(jinja|json)$/.test(path) ||
    path.endsWith('.tiktoken')
  );
}

/** Top-level files the output carries over for people: the model card and the licence terms. */
export function carriedFile(path: string): boolean {
  return /^(README\.md|(LICENSE|LICENCE|NOTICE)([._-].*)?|USE_POLICY\.md)$/i.test(path) && !path.includes('/');
}

/**
 * The Python files of custom code that a config's `auto_map` names (`"AutoModel":
 * "modeling_x.ModelX"`, tokenizers as a pair), in this repo: entries that point into another
 * repo (`other/repo--modeling_x.ModelX`) are that repo's business.
 */
export function autoMapFiles(config: unknown): string[] {
  const map = (config as { auto_map?: unknown } | undefined)?.auto_map;
  if (!map || typeof map !== 'object') return [];
  const out = new Set<string>();
  for (const v of Object.values(map as Record<string, unknown>)) {
    for (const ref of Array.isArray(v) ? v : [v]) {
      if (typeof ref !== 'string' || ref.includes('--')) continue;
      const module = ref.slice(0, ref.lastIndexOf('.'));
      if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(module)) out.add(`${module}.py`);
    }
  }
  return [...out].sort();
}

/** Modules a Python file imports relatively (`from .x import`, `import .x`), as transformers follows them. */
export function relativeImports(source: string): string[] {
  const out = new Set<string>();
  for (const m of source.matchAll(/^\s*(?:from\s+\.([A-Za-z_][A-Za-z0-9_]*)\s+import|import\s+\.([A-Za-z_][A-Za-z0-9_]*)\s*$)/gm)) {
    out.add(`${m[1] ?? m[2]}.py`);
  }
  return [...out].sort();
}

export async function resolveModel(model: string, opts: ResolveOptions = {}): Promise<ResolvedModel> {
  const local = await stat(model).catch(() => undefined);
  if (local || !looksLikeRepoId(model)) {
    if (opts.revision !== undefined) throw new InputError(`--revision ${opts.revision}: applies to a Hugging Face Hub repo id (org/name), but ${model} is a local path`);
    return { dir: model, defaultOutput: `${resolve(model)}-marlin` };
  }
  const hub = await downloadRepo(model, opts);
  return { dir: hub.dir, defaultOutput: resolve(`${basename(model)}-marlin`), hub: hub.source, remote: hub.remote };
}

type Hub = typeof import('@huggingface/hub');

interface Entry {
  path: string;
  size: number;
  /** sha256 of an LFS file (its LFS oid). */
  sha256?: string;
}

interface Downloaded {
  dir: string;
  source: HubSource;
  remote?: RemoteShards;
}

async function downloadRepo(repo: string, opts: ResolveOptions): Promise<Downloaded> {
  const hub: Hub = await import('@huggingface/hub');
  const revision = opts.revision ?? 'main';
  const hubUrl = (opts.hubUrl ?? hubEndpoint())?.replace(/\/+$/, '');
  const accessToken = hubToken()?.token;
  const cacheDir = opts.cacheDir ?? hub.getHFHubCachePath();
  const storage = join(cacheDir, hub.getRepoFolderName({ type: 'model', name: repo }));
  const where = `${repo}${revision === 'main' ? '' : `@${revision}`}`;

  if (hubOffline()) return offlineSnapshot(repo, revision, storage, where);

  // Every request is bounded in time: connecting and the answer's headers, then each gap
  // between two pieces of its body (undici's own limit is 5 minutes of silence).
  const timeoutS = envInteger('MARLIN_FP4_HUB_TIMEOUT', DEFAULT_HUB_TIMEOUT_S, 1, 86_400);
  let timedOut: string | undefined;

  // Downloads are counted as their bodies stream through this fetch (for the progress line).
  let done = 0;
  let total = 0;
  let current = '';
  let fetched = 0;
  const countingFetch: typeof fetch = async (input, init) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    const range = new Headers(init?.headers).get('range');
    const abort = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    // unref: a body nobody reads must not keep the process alive.
    const arm = (what: string) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        timedOut = what;
        abort.abort(new Error(what));
      }, timeoutS * 1000).unref();
    };
    arm(`no answer within ${timeoutS} s`);
    let res: Response;
    try {
      res = await fetch(input, { ...init, signal: init?.signal ? AbortSignal.any([init.signal, abort.signal]) : abort.signal });
    } catch (e) {
      clearTimeout(timer);
      throw e;
    }
    // A range request answered with the whole file would download a shard to read a header.
    if (range && range !== 'bytes=0-0' && res.status === 200) {
      clearTimeout(timer);
      await res.body?.cancel();
      throw new EnvironmentError(`${where}: the Hub at ${hubUrl ?? hub.HUB_URL} ignored a range request (${url.split('/').pop()})`);
    }
    if (!res.body) {
      clearTimeout(timer);
      return res;
    }
    // File bodies only count: not the API's JSON, not the size probes (Range: bytes=0-0).
    // Xet-backed files arrive as compressed chunks: approximate until each file's end sets
    // the exact count.
    const counted = !url.includes('/api/') && range !== 'bytes=0-0' && res.ok;
    arm(`no data for ${timeoutS} s`);
    const watch = new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, ctl) {
        arm(`no data for ${timeoutS} s`);
        if (counted) {
          done += chunk.byteLength;
          fetched += chunk.byteLength;
          opts.onProgress?.({ bytesDone: done, bytesTotal: total, file: current });
        }
        ctl.enqueue(chunk);
      },
      flush() {
        clearTimeout(timer);
      },
    });
    return new Response(res.body.pipeThrough(watch), { status: res.status, statusText: res.statusText, headers: res.headers });
  };
  const common = { repo, hubUrl, accessToken, fetch: countingFetch };

  // The library logs each download on stdout (console.debug/info), which would break --json.
  const { debug, info } = console;
  console.debug = () => {};
  console.info = () => {};
  try {
    const meta = await hub.modelInfo({ name: repo, revision, hubUrl, accessToken, fetch: countingFetch, additionalFields: ['sha'] });
    const commit = String((meta as { sha?: unknown }).sha ?? '');
    if (!/^[0-9a-f]{40}$/.test(commit)) throw new EnvironmentError(`${where}: the Hub returned no commit for this revision`);
    if (revision !== commit) {
      const ref = join(storage, 'refs', revision);
      await mkdir(dirname(ref), { recursive: true });
      await writeFile(ref, commit);
    }

    const listed = new Map<string, Entry>();
    for await (const e of hub.listFiles({ ...common, revision: commit })) {
      if (e.type === 'file' && !e.path.includes('/')) listed.set(e.path, { path: e.path, size: e.lfs?.size ?? e.size, sha256: e.lfs?.oid });
    }
    if (!listed.has('config.json')) throw new InputError(`${where}: the repo has no config.json (not a transformers model)`);
    const lfsSha256 = Object.fromEntries([...listed.values()].filter((e) => e.sha256).map((e) => [e.path, e.sha256!]));
    const get = async (e: Entry): Promise<string> => {
      current = e.path;
      const before = done;
      const path = await hub.downloadFileToCacheDir({ ...common, path: e.path, revision: commit, cacheDir });
      done = before + e.size; // cached files count as done too
      opts.onProgress?.({ bytesDone: done, bytesTotal: total, file: e.path });
      return path;
    };
    const dir = join(storage, 'snapshots', commit);
    const source = (files: Entry[]): HubSource => ({
      repo,
      revision,
      commit,
      files: files.map((e) => e.path).sort(),
      bytes: files.reduce((a, e) => a + e.size, 0),
      downloaded_bytes: fetched,
      lfs_sha256: lfsSha256,
    });

    if (opts.headersOnly) {
      const small = ['config.json', 'hf_quant_config.json', INDEX_FILE, ...(opts.extraFiles ?? [])].flatMap((f) => listed.get(f) ?? []);
      total = small.reduce((a, e) => a + e.size, 0);
      for (const e of small) await get(e);
      const files = new Map<string, RangeFile>();
      const remote: RemoteShards = {
        files: [...listed.keys()].sort(),
        open: async (path) => {
          try {
            const blob = await hub.downloadFile({ ...common, path, revision: commit });
            if (!blob) throw new InputError(`${where}: ${path}: not in the repo`);
            const file = new RangeFile(blob, `${repo}/${path}`, (e) => hubError(e, where, hubUrl ?? hub.HUB_URL, hub));
            files.set(path, file);
            return file;
          } catch (e) {
            throw hubError(e, where, hubUrl ?? hub.HUB_URL, hub);
          }
        },
        opened: async (path, header) => {
          const scalars = [...header.tensors.values()].filter((t) => t.end - t.begin <= SCALAR_BYTES);
          await files.get(path)?.prefetch(scalars.map((t) => [header.dataStart + t.begin, header.dataStart + t.end]));
        },
        fetched: () => fetched,
      };
      return { dir, source: source(small), remote };
    }

    // With an index, only the shards it names (repos often also hold e.g. a consolidated copy).
    let wanted = [...listed.values()].filter((e) => neededFile(e.path) || carriedFile(e.path));
    const index = listed.get(INDEX_FILE);
    if (index) {
      total = index.size;
      const text = await readFile(await get(index), 'utf8');
      let shards: Set<string>;
      try {
        shards = new Set(Object.values((JSON.parse(text) as { weight_map: Record<string, string> }).weight_map));
      } catch {
        throw new InputError(`${where}: ${INDEX_FILE} has no valid weight_map`);
      }
      wanted = wanted.filter((e) => !e.path.endsWith('.safetensors') || shards.has(e.path));
      for (const s of shards) {
        if (!listed.has(s)) throw new InputError(`${where}: ${INDEX_FILE} names shard ${s}, which the repo does not have`);
      }
    } else if (!wanted.some((e) => e.path.endsWith('.safetensors'))) {
      throw new InputError(`${where}: the repo has no *.safetensors files`);
    }
    total = wanted.reduce((a, e) => a + e.size, 0);
    // Custom code: the files auto_map names (config and tokenizer), then what they import.
    const code = new Set<string>();
    const pending: string[] = [];
    const addCode = (files: string[]) => {
      for (const f of files) {
        const e = listed.get(f);
        if (e && !code.has(f)) {
          code.add(f);
          pending.push(f);
          total += e.size;
        }
      }
    };
    for (const f of ['config.json', 'tokenizer_config.json']) {
      const e = wanted.find((w) => w.path === f);
      if (e) addCode(autoMapFiles(JSON.parse(await readFile(await get(e), 'utf8').catch(() => '{}'))));
    }
    while (pending.length) addCode(relativeImports(await readFile(await get(listed.get(pending.shift()!)!), 'utf8')));
    const fetchedFiles = new Set([INDEX_FILE, 'config.json', 'tokenizer_config.json', ...code]);
    for (const e of wanted) if (!fetchedFiles.has(e.path)) await get(e);
    return { dir, source: source([...wanted, ...[...code].map((f) => listed.get(f)!)]) };
  } catch (e) {
    // Only an abort or a broken fetch is ours: a stale timer of a body nobody read must not
    // relabel another error.
    const aborted = e instanceof TypeError || (e as Error)?.name === 'AbortError' || String((e as Error)?.message).includes(timedOut ?? '\0');
    if (timedOut && aborted) {
      throw new EnvironmentError(
        `${where}: the Hub at ${hubUrl ?? hub.HUB_URL} stopped answering (${timedOut}); MARLIN_FP4_HUB_TIMEOUT=<seconds> sets the limit`,
      );
    }
    throw hubError(e, where, hubUrl ?? hub.HUB_URL, hub);
  } finally {
    console.debug = debug;
    console.info = info;
  }
}

async function offlineSnapshot(repo: string, revision: string, storage: string, where: string): Promise<Downloaded> {
  const commit = /^[0-9a-f]{40}$/.test(revision)
    ? revision
    : (await readFile(join(storage, 'refs', revision), 'utf8').catch(() => '')).trim();
  const dir = commit ? join(storage, 'snapshots', commit) : '';
  if (!commit || !(await stat(join(dir, 'config.json')).catch(() => undefined))) {
    throw new EnvironmentError(`${where}: HF_HUB_OFFLINE is set and this revision is not in the Hugging Face cache (${storage})`);
  }
  return { dir, source: { repo, revision, commit, files: [], bytes: 0, downloaded_bytes: 0, lfs_sha256: await cachedLfsSha256(dir) } };
}

/**
 * The cache names an LFS file's blob by the sha256 the Hub announced for it (its ETag), and the
 * snapshot links to that blob: so offline, the expected checksums are still known.
 */
async function cachedLfsSha256(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of await readdir(dir).catch(() => [] as string[])) {
    if (!f.endsWith('.safetensors')) continue;
    const target = basename(await readlink(join(dir, f)).catch(() => ''));
    if (/^[0-9a-f]{64}$/.test(target)) out[f] = target;
  }
  return out;
}

const NETWORK: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'host not found (DNS lookup failed)',
  ETIMEDOUT: 'timed out',
  UND_ERR_CONNECT_TIMEOUT: 'timed out',
  ECONNRESET: 'connection broken',
  UND_ERR_SOCKET: 'connection broken',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
};

/** One line and the right exit code: 2 for a bad or unknown repo id, 3 for the network. */
export function hubError(e: unknown, where: string, hubUrl: string, hub: Hub): unknown {
  if (e instanceof InputError || e instanceof EnvironmentError) return e;
  if (e instanceof hub.HubApiError) {
    const detail = (e.data as { error?: unknown } | undefined)?.error;
    const said = typeof detail === 'string' && detail ? `: ${detail}` : '';
    switch (e.statusCode) {
      case 401:
        return new InputError(`${where}: not found on the Hub, or private (HTTP 401${said}); for a private repo set HF_TOKEN`);
      case 403:
        return new InputError(`${where}: access denied (HTTP 403${said}); for a gated repo accept its terms on the Hub and set HF_TOKEN`);
      case 404:
        return new InputError(`${where}: not found on the Hub (HTTP 404${said})`);
      default:
        if (e.statusCode === 429 || e.statusCode >= 500) return new EnvironmentError(`${where}: the Hub at ${hubUrl} answered HTTP ${e.statusCode}${said}; try again later`);
        return new InputError(`${where}: the Hub refused the request (HTTP ${e.statusCode}${said})`);
    }
  }
  if (e instanceof hub.InvalidApiResponseFormatError) return new EnvironmentError(`${where}: unexpected answer from the Hub at ${hubUrl}: ${e.message}`);
  const err = e as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
  if (err?.code && err.syscall) return e; // the cache's disk: the CLI reports it (exit 3)
  if (e instanceof TypeError && /repo|slash|namespace/i.test(e.message)) return new InputError(`${where}: not a valid Hub repo id (${e.message})`);
  if (e instanceof TypeError || typeof e === 'string' || err?.name === 'AbortError') {
    // fetch failed (DNS, refused, reset, TLS) or a body stream aborted mid-download.
    const code = err?.cause?.code;
    const what = code ? NETWORK[code] : undefined;
    const why = what ? `${what} (${code})` : (code ?? err?.cause?.message ?? (typeof e === 'string' ? e : err?.message));
    return new EnvironmentError(`${where}: cannot download from ${hubUrl}: ${why}`);
  }
  return e;
}
