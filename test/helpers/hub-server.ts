// A local stand-in for the Hugging Face Hub, serving model repos with the endpoints
// @huggingface/hub 2.17 calls, so that no test reaches the network:
// downloads into the cache, and range requests
//   GET  /api/models/{repo}/revision/{rev}            model info (its `sha`)
//   GET  /api/models/{repo}/tree/{rev}?recursive=…     file listing (LFS files with their sha256 oid)
//   POST /api/models/{repo}/paths-info/{rev}           per-file oid / lfs / lastCommit
//   GET  /{repo}/resolve/{rev}/{path}                  the file; `Range: bytes=a-b` answers 206 with those bytes
// uploads (the plain LFS protocol: the library's `useXet: false`)
//   GET  /api/models/{repo}                            repo exists (repoExists)
//   POST /api/repos/create                             createRepo (409 when it exists)
//   POST /api/models/{repo}/branch/{name}              createBranch (from main's head)
//   POST /api/models/{repo}/preupload/{branch}         which files go by LFS (*.safetensors here)
//   POST /{repo}.git/info/lfs/objects/batch            LFS batch: an upload action per object the store
//                                                      lacks, none for one it has (that is what makes an
//                                                      interrupted upload resumable); multipart when
//                                                      `multipartChunk` is set
//   PUT  /lfs-upload/{oid}[/{part}], POST /lfs-complete/{oid}   the object store (sha256 and size checked)
//   POST /api/models/{repo}/commit/{branch}            NDJSON commit: header, file (base64), lfsFile, deletedFile
// Files may be Buffers or files on disk (DiskFile: served in pieces, for models of many GB).
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

/** A file served from disk instead of memory (sha256 computed once, when first needed). */
export interface DiskFile {
  disk: string;
  size: number;
  sha256?: string;
}
export type HubFile = Buffer | DiskFile;

export interface HubRepo {
  /** Files of main's head by path (relative, may contain '/'). */
  files: Map<string, HubFile>;
  sha: string;
  /** Answer 401 unless this token is sent. */
  token?: string;
  /** Break the connection halfway through this file's body. */
  breakFile?: string;
  /** Send half of this file's body, then nothing more (the connection stays open). */
  stallFile?: string;
  /** Answer every request with this status. */
  status?: number;
  /** Branches other than main: name -> commit. */
  branches?: Map<string, string>;
  /** Every commit's files, for reads by commit or branch (main's head is `files`). */
  commits?: Map<string, Map<string, HubFile>>;
  /** Answer the next commit call with this status (an upload interrupted before its commit). */
  failCommit?: number;
  /** Commit titles, oldest first. */
  log?: string[];
}

export interface HubRequest {
  method: string;
  path: string;
  range?: string;
  auth?: string;
  /** Body bytes received. */
  received: number;
  /** Body bytes sent back. */
  sent: number;
}

export interface HubOptions {
  /** Token that may create repos and commit (default: none can). */
  writeToken?: string;
  /** Offer multipart LFS uploads in parts of this size. */
  multipartChunk?: number;
}

export interface FakeHub {
  url: string;
  repos: Map<string, HubRepo>;
  requests: HubRequest[];
  /** LFS objects received, by sha256. */
  lfs: Map<string, Buffer>;
  close(): Promise<void>;
}

/** A repo from a model directory, plus extra files (e.g. ones a conversion does not need). */
export function repoFromDir(dir: string, extra: Record<string, Buffer> = {}, sha = 'a'.repeat(40)): HubRepo {
  const files = new Map<string, HubFile>();
  for (const f of readdirSync(dir).sort()) files.set(f, readFileSync(join(dir, f)));
  for (const [k, v] of Object.entries(extra)) files.set(k, v);
  return { files, sha };
}

/** The same, with *.safetensors served from disk (for generated models of many GB). */
export function repoFromDirOnDisk(dir: string, sha = 'd'.repeat(40)): HubRepo {
  const files = new Map<string, HubFile>();
  for (const f of readdirSync(dir).sort()) {
    const p = join(dir, f);
    files.set(f, f.endsWith('.safetensors') ? { disk: p, size: statSync(p).size } : readFileSync(p));
  }
  return { files, sha };
}

const isDisk = (f: HubFile): f is DiskFile => !Buffer.isBuffer(f);
const sizeOf = (f: HubFile) => (isDisk(f) ? f.size : f.length);
const isLfs = (path: string) => path.endsWith('.safetensors');

async function sha256Of(f: HubFile): Promise<string> {
  if (!isDisk(f)) return createHash('sha256').update(f).digest('hex');
  if (!f.sha256) {
    const h = createHash('sha256');
    for await (const c of createReadStream(f.disk, { highWaterMark: 8 << 20 })) h.update(c as Buffer);
    f.sha256 = h.digest('hex');
  }
  return f.sha256;
}

const gitOid = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
/** An LFS file's git oid is its pointer file's, as on the Hub. */
const pointer = (sha: string, size: number) => Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha}\nsize ${size}\n`);

async function entry(sha: string, path: string, f: HubFile) {
  const size = sizeOf(f);
  if (isLfs(path)) {
    const oid = await sha256Of(f);
    const p = pointer(oid, size);
    return { type: 'file', path, size, oid: gitOid(p), lfs: { oid, size, pointerSize: p.length }, lastCommit: { id: sha, title: 'upload', date: '2025-01-01T00:00:00.000Z' } };
  }
  return { type: 'file', path, size, oid: gitOid(f as Buffer), lastCommit: { id: sha, title: 'upload', date: '2025-01-01T00:00:00.000Z' } };
}

async function readBody(req: IncomingMessage, log: HubRequest): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const b = Buffer.concat(chunks);
  log.received += b.length;
  return b;
}

export async function startHub(repos: Map<string, HubRepo>, options: HubOptions = {}): Promise<FakeHub> {
  const requests: HubRequest[] = [];
  const lfs = new Map<string, Buffer>();
  /** Multipart uploads in progress: oid -> parts. */
  const parts = new Map<string, Map<number, Buffer>>();
  let base = '';

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const path = decodeURIComponent(url.pathname);
    const log: HubRequest = { method: req.method ?? '', path, range: req.headers.range, auth: req.headers.authorization, received: 0, sent: 0 };
    requests.push(log);
    const json = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      const text = JSON.stringify(body);
      log.sent += Buffer.byteLength(text);
      res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', ...headers });
      res.end(text);
    };
    const writer = () => !!options.writeToken && req.headers.authorization === `Bearer ${options.writeToken}`;

    // The LFS object store (no auth: the hrefs are the credentials, as presigned URLs are).
    const put = /^\/lfs-upload\/([0-9a-f]{64})(?:\/(\d+))?$/.exec(path);
    if (put && req.method === 'PUT') {
      const body = await readBody(req, log);
      if (put[2]) {
        const m = parts.get(put[1]!) ?? new Map<number, Buffer>();
        m.set(Number(put[2]), body);
        parts.set(put[1]!, m);
        res.writeHead(200, { ETag: `"${createHash('md5').update(body).digest('hex')}"` });
        return res.end();
      }
      if (createHash('sha256').update(body).digest('hex') !== put[1]) return json(400, { error: 'sha256 mismatch' });
      lfs.set(put[1]!, body);
      res.writeHead(200);
      return res.end();
    }
    const complete = /^\/lfs-complete\/([0-9a-f]{64})$/.exec(path);
    if (complete && req.method === 'POST') {
      const { parts: done } = JSON.parse((await readBody(req, log)).toString()) as { parts: { partNumber: number; etag: string }[] };
      const got = parts.get(complete[1]!);
      if (!got || done.some((p) => !got.has(p.partNumber) || !p.etag)) return json(400, { error: 'missing part' });
      const body = Buffer.concat(done.sort((a, b) => a.partNumber - b.partNumber).map((p) => got.get(p.partNumber)!));
      if (createHash('sha256').update(body).digest('hex') !== complete[1]) return json(400, { error: 'sha256 mismatch' });
      lfs.set(complete[1]!, body);
      parts.delete(complete[1]!);
      return json(200, { success: true });
    }

    if (path === '/api/repos/create' && req.method === 'POST') {
      if (!writer()) return json(401, { error: 'Invalid username or password.' });
      const b = JSON.parse((await readBody(req, log)).toString()) as { name: string; organization: string; visibility?: string; type: string };
      const id = `${b.organization}/${b.name}`;
      if (repos.has(id)) return json(409, { error: 'You already created this model repo', url: `${base}/${id}` });
      const sha = createHash('sha1').update(`init ${id}`).digest('hex');
      repos.set(id, { files: new Map([['.gitattributes', Buffer.from('*.safetensors filter=lfs diff=lfs merge=lfs -text\n')]]), sha, token: b.visibility === 'private' ? options.writeToken : undefined, log: ['initial commit'] });
      return json(200, { url: `${base}/${id}`, id });
    }

    const lfsBatch = /^\/([^/]+\/[^/]+)\.git\/info\/lfs\/objects\/batch$/.exec(path);
    const api = /^\/api\/models\/([^/]+\/[^/]+)(?:\/(revision|tree|paths-info|preupload|commit|branch)\/([^/]+)(?:\/.*)?)?$/.exec(path);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    const id = api?.[1] ?? resolve?.[1] ?? lfsBatch?.[1];
    const repo = id ? repos.get(id) : undefined;
    if (!repo) return json(404, { error: 'Repository not found' }, { 'X-Error-Code': 'RepoNotFound' });
    if (repo.status) return json(repo.status, { error: `status ${repo.status}` });
    const reading = !lfsBatch && !['preupload', 'commit', 'branch'].includes(api?.[2] ?? '');
    if (reading ? repo.token && req.headers.authorization !== `Bearer ${repo.token}` && !writer() : !writer()) {
      return json(401, { error: 'Invalid username or password.' }, { 'X-Error-Code': 'RepoNotFound' });
    }

    if (api && !api[2]) return json(200, { _id: `id-${id}`, id, private: !!repo.token, likes: 0 });

    if (lfsBatch) {
      const b = JSON.parse((await readBody(req, log)).toString()) as { operation: string; transfers: string[]; objects: { oid: string; size: number }[] };
      if (b.operation !== 'upload' || !b.transfers.includes('basic')) return json(422, { error: 'unsupported' });
      const chunk = options.multipartChunk;
      const objects = b.objects.map((o) => {
        if (lfs.has(o.oid)) return { oid: o.oid, size: o.size };
        if (chunk && o.size > chunk) {
          const n = Math.ceil(o.size / chunk);
          const header: Record<string, string> = { chunk_size: String(chunk) };
          for (let i = 1; i <= n; i++) header[String(i).padStart(5, '0')] = `${base}/lfs-upload/${o.oid}/${i}`;
          return { oid: o.oid, size: o.size, authenticated: true, actions: { upload: { href: `${base}/lfs-complete/${o.oid}`, header } } };
        }
        return { oid: o.oid, size: o.size, authenticated: true, actions: { upload: { href: `${base}/lfs-upload/${o.oid}` } } };
      });
      return json(200, { transfer: 'basic', objects });
    }

    // Revisions: main (or its head), another branch, or any earlier commit.
    const rev = api?.[3] ?? resolve?.[2] ?? 'main';
    const writing = api?.[2] === 'preupload' || api?.[2] === 'commit' || api?.[2] === 'branch';
    const branchSha = rev === 'main' ? repo.sha : repo.branches?.get(rev);
    const commitSha = branchSha ?? (rev === repo.sha || repo.commits?.has(rev) ? rev : undefined);
    const files = commitSha === repo.sha ? repo.files : commitSha ? repo.commits?.get(commitSha) : undefined;
    if (!writing && !files) return json(404, { error: `Invalid rev id: ${rev}` }, { 'X-Error-Code': 'RevisionNotFound' });

    if (api?.[2] === 'branch') {
      await readBody(req, log);
      repo.branches ??= new Map();
      if (!repo.branches.has(rev)) {
        repo.branches.set(rev, repo.sha);
        repo.commits ??= new Map();
        repo.commits.set(repo.sha, new Map(repo.files));
      }
      return json(200, {});
    }
    if (api?.[2] === 'preupload') {
      const b = JSON.parse((await readBody(req, log)).toString()) as { files: { path: string; size: number }[] };
      return json(200, { files: b.files.map((f) => ({ path: f.path, uploadMode: isLfs(f.path) ? 'lfs' : 'regular', shouldIgnore: false })) });
    }
    if (api?.[2] === 'commit') {
      const lines = (await readBody(req, log)).toString().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { key: string; value: Record<string, unknown> });
      if (repo.failCommit) {
        const status = repo.failCommit;
        repo.failCommit = undefined;
        return json(status, { error: `status ${status}` });
      }
      if (rev !== 'main' && !repo.branches?.has(rev)) return json(404, { error: `Invalid rev id: ${rev}` }, { 'X-Error-Code': 'RevisionNotFound' });
      const parent = rev === 'main' ? repo.sha : repo.branches!.get(rev)!;
      const next = new Map(rev === 'main' ? repo.files : repo.commits!.get(parent)!);
      let title = '';
      for (const { key, value } of lines) {
        if (key === 'header') title = String(value.summary);
        else if (key === 'file') next.set(String(value.path), Buffer.from(String(value.content), 'base64'));
        else if (key === 'deletedFile') next.delete(String(value.path));
        else if (key === 'lfsFile') {
          const obj = lfs.get(String(value.oid));
          if (!obj || obj.length !== value.size) return json(422, { error: `LFS object ${String(value.oid)} was not uploaded` });
          next.set(String(value.path), obj);
        } else return json(400, { error: `unknown key ${key}` });
      }
      const sha = createHash('sha1').update(parent).update(randomBytes(8)).digest('hex');
      repo.commits ??= new Map();
      repo.commits.set(parent, new Map(rev === 'main' ? repo.files : repo.commits.get(parent)!));
      repo.commits.set(sha, next);
      if (rev === 'main') {
        repo.files = next;
        repo.sha = sha;
      } else repo.branches!.set(rev, sha);
      (repo.log ??= []).push(title);
      return json(200, { success: true, commitOid: sha, commitUrl: `${base}/${id}/commit/${sha}`, hookOutput: '' });
    }

    if (api?.[2] === 'revision') {
      return json(200, {
        _id: `id-${id}`,
        id,
        sha: commitSha,
        private: !!repo.token,
        gated: false,
        downloads: 0,
        likes: 0,
        lastModified: '2025-01-01T00:00:00.000Z',
        siblings: [...files!.keys()].map((rfilename) => ({ rfilename })),
      });
    }
    if (api?.[2] === 'tree') {
      const recursive = url.searchParams.get('recursive') === 'true';
      const out: unknown[] = [];
      const dirs = new Set<string>();
      for (const [p, f] of files!) {
        if (p.includes('/') && !recursive) dirs.add(p.slice(0, p.indexOf('/')));
        else out.push(await entry(commitSha!, p, f));
      }
      for (const d of dirs) out.push({ type: 'directory', path: d, size: 0, oid: gitOid(Buffer.from(d)) });
      return json(200, out);
    }
    if (api?.[2] === 'paths-info') {
      const { paths } = JSON.parse((await readBody(req, log)).toString()) as { paths: string[] };
      return json(200, await Promise.all(paths.filter((p) => files!.has(p)).map((p) => entry(commitSha!, p, files!.get(p)!))));
    }
    if (resolve) {
      const file = files!.get(resolve[3]!);
      if (!file) return json(404, { error: 'Entry not found' }, { 'X-Error-Code': 'EntryNotFound' });
      const size = sizeOf(file);
      const etag = `"${isLfs(resolve[3]!) ? await sha256Of(file) : gitOid(file as Buffer)}"`;
      const headers = { 'Content-Type': 'application/octet-stream', ETag: etag, 'Accept-Ranges': 'bytes' };
      const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      const send = (start: number, end: number) => {
        log.sent += end - start + 1;
        if (!isDisk(file)) return res.end(file.subarray(start, end + 1));
        if (end < start) return res.end();
        createReadStream(file.disk, { start, end }).pipe(res);
      };
      if (range) {
        const start = Number(range[1]);
        const end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
        res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${end}/${size}`, 'Content-Length': String(end - start + 1) });
        return send(start, end);
      }
      res.writeHead(200, { ...headers, 'Content-Length': String(size) });
      if (repo.stallFile === resolve[3] && !isDisk(file)) {
        res.write(file.subarray(0, file.length >> 1));
        log.sent += file.length >> 1;
        return;
      }
      if (repo.breakFile === resolve[3] && !isDisk(file)) {
        res.write(file.subarray(0, file.length >> 1));
        log.sent += file.length >> 1;
        setTimeout(() => res.destroy(), 20);
        return;
      }
      return send(0, size - 1);
    }
    return json(404, { error: 'not found' });
  };
  const server: Server = createServer((req, res) => {
    handle(req, res).catch((e) => {
      res.writeHead(500);
      res.end(String(e));
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const port = (server.address() as AddressInfo).port;
  base = `http://127.0.0.1:${port}`;
  return {
    url: base,
    repos,
    requests,
    lfs,
    close: () =>
      new Promise<void>((ok) => {
        server.closeAllConnections();
        server.close(() => ok());
      }),
  };
}
