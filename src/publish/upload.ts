// `marlin-fp4 upload <dir> <repo-id>` (and `convert --push-to-hub`): publishes a converted
// checkpoint to the Hugging Face Hub in one commit, through @huggingface/hub.
//
// 1. The directory is checked against its manifest first (every file present, sizes and sha256),
//    so what is published is what convert wrote.
// 2. The repo is created when missing (public unless --private), a branch other than main when
//    missing.
// 3. One commit holds every file the manifest lists, and the manifest. The plain Git LFS
//    protocol is used (useXet: false): it is what huggingface_hub itself falls back to without
//    hf_xet, every Hub repo accepts it, and it is the protocol our fake Hub speaks in the tests,
//    so the code path tested is the one that runs. It is resumable per file: the LFS batch call
//    answers "already there" for objects a previous, interrupted run uploaded, which are then
//    not sent again.
// 4. Afterwards the Hub's paths-info at the new commit is compared with the manifest: LFS files
//    by the sha256 the Hub computed, small files by their git blob id, every file by size.
import { createHash } from 'node:crypto';
import { openAsBlob } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { hubEndpoint, hubOffline, hubToken, tokenPath } from '../checkpoint/hub-env.js';
import { hubError } from '../checkpoint/resolve-model.js';
import { MANIFEST_FILE } from '../format/manifest.js';
import { EnvironmentError, InputError } from '../errors.js';
import { checkManifest, readManifest } from '../integrity/manifest-check.js';

export interface UploadOptions {
  dir: string;
  repo: string;
  /** Branch to commit to (default main); created from main when missing. */
  branch?: string;
  /** Create the repo private (when it is created by this upload). */
  private?: boolean;
  commitMessage?: string;
  /** Default: HF_ENDPOINT, else https://huggingface.co. */
  hubUrl?: string;
  onProgress?(p: UploadProgress): void;
}

export interface UploadProgress {
  phase: 'checking' | 'hashing' | 'uploading' | 'committing';
  bytesDone: number;
  bytesTotal: number;
  file: string;
}

export interface UploadedFile {
  name: string;
  bytes: number;
  sha256?: string;
  /** Stored with Git LFS (the tensors); otherwise a regular git file. */
  lfs: boolean;
}

export interface UploadReport {
  repo: string;
  branch: string;
  /** The commit made. */
  commit: string;
  commit_url: string;
  /** True when this upload created the repo. */
  created: boolean;
  /** Set when this upload created the repo: whether it is private. */
  private?: boolean;
  files: UploadedFile[];
  bytes: number;
  /** LFS bytes sent by this run (less than the LFS total when a previous run had sent some). */
  uploaded_bytes: number;
  /** Files the Hub reports at the new commit with the manifest's size and sha256 (or git blob id). */
  verified_files: number;
  seconds: number;
}

type Hub = typeof import('@huggingface/hub');

const gitBlobOid = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');

export async function uploadCheckpoint(opts: UploadOptions): Promise<UploadReport> {
  const started = performance.now();
  const branch = opts.branch ?? 'main';
  const where = `${opts.repo}${branch === 'main' ? '' : `@${branch}`}`;
  const token = hubToken();
  if (!token) {
    throw new InputError(`${where}: uploading needs a Hugging Face token with write access: set HF_TOKEN, or log in with \`hf auth login\` (read from ${tokenPath()})`);
  }
  if (hubOffline()) throw new EnvironmentError(`${where}: HF_HUB_OFFLINE is set: cannot upload`);

  // 1. What convert wrote, unchanged.
  const manifest = await readManifest(opts.dir);
  opts.onProgress?.({ phase: 'checking', bytesDone: 0, bytesTotal: 0, file: MANIFEST_FILE });
  const check = await checkManifest(opts.dir, manifest);
  if (check.problems.length) {
    const p = check.problems[0]!;
    const more = check.problems.length > 1 ? ` (and ${check.problems.length - 1} more problems)` : '';
    throw new InputError(`${join(opts.dir, p.file)}: ${p.reason}${more}: not uploading a checkpoint that fails its manifest`);
  }
  const names = [...manifest.files.map((f) => f.name), MANIFEST_FILE];
  const manifestBytes = (await readFile(join(opts.dir, MANIFEST_FILE))).length;
  const sizes = new Map([...manifest.files.map((f) => [f.name, f.bytes] as const), [MANIFEST_FILE, manifestBytes]]);
  const total = [...sizes.values()].reduce((a, b) => a + b, 0);

  const hub: Hub = await import('@huggingface/hub');
  const hubUrl = (opts.hubUrl ?? hubEndpoint())?.replace(/\/+$/, '');
  const accessToken = token.token;
  const repo = { type: 'model' as const, name: opts.repo };
  let uploaded = 0;
  let current = '';
  // Counts LFS bytes as each PUT completes (Node's fetch gives no upload progress events).
  const countingFetch: typeof fetch = async (input, init) => {
    const res = await fetch(input, init);
    if (init?.method === 'PUT' && res.ok && init.body instanceof Blob) {
      uploaded += init.body.size;
      opts.onProgress?.({ phase: 'uploading', bytesDone: uploaded, bytesTotal: total, file: current });
    }
    return res;
  };
  const { debug, info } = console;
  console.debug = () => {};
  console.info = () => {};
  try {
    // 2. The repo (and branch).
    let created = false;
    if (!(await hub.repoExists({ repo, hubUrl, accessToken, fetch: countingFetch }))) {
      await hub.createRepo({ repo, hubUrl, accessToken, fetch: countingFetch, ...(opts.private ? { visibility: 'private' as const } : {}) });
      created = true;
    }
    if (branch !== 'main') await hub.createBranch({ repo, branch, hubUrl, accessToken, fetch: countingFetch, overwrite: true });

    // 3. One commit.
    const operations = await Promise.all(
      names.map(async (name) => ({ operation: 'addOrUpdate' as const, path: name, content: await openAsBlob(join(opts.dir, name)) })),
    );
    const iter = hub.commitIter({
      repo,
      operations,
      title: opts.commitMessage ?? `Marlin FP4 checkpoint (${manifest.layout}, ${manifest.activation_dtype}) converted by marlin-fp4 ${manifest.tool.version}`,
      branch,
      hubUrl,
      accessToken,
      useXet: false,
      fetch: countingFetch,
    });
    const hashed = new Map<string, number>();
    let step = await iter.next();
    while (!step.done) {
      const ev = step.value;
      if (ev.event === 'phase' && ev.phase === 'committing') opts.onProgress?.({ phase: 'committing', bytesDone: total, bytesTotal: total, file: '' });
      if (ev.event === 'fileProgress') {
        current = ev.path;
        if (ev.state === 'hashing') {
          hashed.set(ev.path, ev.progress * (sizes.get(ev.path) ?? 0));
          opts.onProgress?.({ phase: 'hashing', bytesDone: [...hashed.values()].reduce((a, b) => a + b, 0), bytesTotal: total, file: ev.path });
        }
      }
      step = await iter.next();
    }
    const commit = step.value?.commit;
    if (!commit?.oid) throw new EnvironmentError(`${where}: the Hub answered the commit without a commit id`);

    // 4. What the Hub now holds, against the manifest.
    const infos = await hub.pathsInfo({ repo, paths: names, revision: commit.oid, hubUrl, accessToken, fetch: countingFetch });
    const byPath = new Map(infos.map((i) => [i.path, i]));
    const files: UploadedFile[] = [];
    let verified = 0;
    for (const name of names) {
      const remote = byPath.get(name);
      const local = manifest.files.find((f) => f.name === name);
      const bytes = sizes.get(name)!;
      if (!remote) throw new EnvironmentError(`${where}: ${name}: missing on the Hub after commit ${commit.oid}`);
      const remoteSize = remote.lfs?.size ?? remote.size;
      if (remoteSize !== bytes) throw new EnvironmentError(`${where}: ${name}: the Hub holds ${remoteSize} bytes, the directory ${bytes}`);
      if (remote.lfs) {
        if (local?.sha256 && remote.lfs.oid !== local.sha256) {
          throw new EnvironmentError(`${where}: ${name}: the Hub's sha256 ${remote.lfs.oid} differs from the manifest's ${local.sha256}`);
        }
        if (local?.sha256) verified++;
      } else {
        const oid = gitBlobOid(await readFile(join(opts.dir, name)));
        if (remote.oid !== oid) throw new EnvironmentError(`${where}: ${name}: the Hub's git blob ${remote.oid} differs from the local file's ${oid}`);
        verified++;
      }
      files.push({ name, bytes, ...(local?.sha256 ? { sha256: local.sha256 } : {}), lfs: !!remote.lfs });
    }
    return {
      repo: opts.repo,
      branch,
      commit: commit.oid,
      commit_url: commit.url,
      created,
      ...(created ? { private: !!opts.private } : {}),
      files,
      bytes: total,
      uploaded_bytes: uploaded,
      verified_files: verified,
      seconds: (performance.now() - started) / 1000,
    };
  } catch (e) {
    throw uploadError(e, where, hubUrl ?? hub.HUB_URL, hub);
  } finally {
    console.debug = debug;
    console.info = info;
  }
}

/** Write refusals say so; the rest (network, 5xx, not found) as for downloads. */
function uploadError(e: unknown, where: string, hubUrl: string, hub: Hub): unknown {
  if (e instanceof hub.HubApiError && (e.statusCode === 401 || e.statusCode === 403)) {
    const detail = (e.data as { error?: unknown } | undefined)?.error;
    return new InputError(`${where}: the Hub refused the upload (HTTP ${e.statusCode}${typeof detail === 'string' ? `: ${detail}` : ''}); the token needs write access to this repo`);
  }
  return hubError(e, where, hubUrl, hub);
}
