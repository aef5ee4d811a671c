// A local stand-in for the Hugging Face Hub, serving model directories under repo ids with
// the endpoints @huggingface/hub 2.17 calls for a download into the cache:
//   GET  /api/models/{repo}/revision/{rev}            model info (its `sha`)
//   GET  /api/models/{repo}/tree/{rev}?recursive=…     file listing (Link header pagination unused)
//   POST /api/models/{repo}/paths-info/{rev}           per-file oid / lfs / lastCommit
//   GET  /{repo}/resolve/{rev}/{path}                  the file (Range: bytes=0-0 probes the size)
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

export interface HubRepo {
  /** Files by path (relative, may contain '/'). */
  files: Map<string, Buffer>;
  sha: string;
  /** Answer 401 unless this token is sent. */
  token?: string;
  /** Break the connection halfway through this file's body. */
  breakFile?: string;
  /** Send half of this file's body, then nothing more (the connection stays open). */
  stallFile?: string;
  /** Answer every request with this status. */
  status?: number;
}

export interface HubRequest {
  method: string;
  path: string;
  range?: string;
  auth?: string;
}

export interface FakeHub {
  url: string;
  repos: Map<string, HubRepo>;
  requests: HubRequest[];
  close(): Promise<void>;
}

/** A repo from a model directory, plus extra files (e.g. ones a conversion does not need). */
export function repoFromDir(dir: string, extra: Record<string, Buffer> = {}, sha = 'a'.repeat(40)): HubRepo {
  const files = new Map<string, Buffer>();
  for (const f of readdirSync(dir).sort()) files.set(f, readFileSync(join(dir, f)));
  for (const [k, v] of Object.entries(extra)) files.set(k, v);
  return { files, sha };
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const gitOid = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
const isLfs = (path: string) => path.endsWith('.safetensors');

function entry(repo: HubRepo, path: string, b: Buffer) {
  return {
    type: 'file',
    path,
    size: b.length,
    oid: gitOid(b),
    ...(isLfs(path) ? { lfs: { oid: sha256(b), size: b.length, pointerSize: 134 } } : {}),
    lastCommit: { id: repo.sha, title: 'upload', date: '2025-01-01T00:00:00.000Z' },
  };
}

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', ...headers });
  res.end(JSON.stringify(body));
}

async function body(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export async function startHub(repos: Map<string, HubRepo>): Promise<FakeHub> {
  const requests: HubRequest[] = [];
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const path = decodeURIComponent(url.pathname);
    requests.push({ method: req.method ?? '', path, range: req.headers.range, auth: req.headers.authorization });
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/(revision|tree|paths-info)\/([^/]+)(?:\/.*)?$/.exec(path);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    const id = api?.[1] ?? resolve?.[1];
    const repo = id ? repos.get(id) : undefined;
    if (!repo) return json(res, 404, { error: 'Repository not found' }, { 'X-Error-Code': 'RepoNotFound' });
    if (repo.status) return json(res, repo.status, { error: `status ${repo.status}` });
    if (repo.token && req.headers.authorization !== `Bearer ${repo.token}`) {
      return json(res, 401, { error: 'Invalid username or password.' }, { 'X-Error-Code': 'RepoNotFound' });
    }
    const rev = api?.[3] ?? resolve?.[2];
    if (rev !== 'main' && rev !== repo.sha) return json(res, 404, { error: `Invalid rev id: ${rev}` }, { 'X-Error-Code': 'RevisionNotFound' });

    if (api?.[2] === 'revision') {
      return json(res, 200, {
        _id: `id-${id}`,
        id,
        sha: repo.sha,
        private: !!repo.token,
        gated: false,
        downloads: 0,
        likes: 0,
        lastModified: '2025-01-01T00:00:00.000Z',
        siblings: [...repo.files.keys()].map((rfilename) => ({ rfilename })),
      });
    }
    if (api?.[2] === 'tree') {
      const recursive = url.searchParams.get('recursive') === 'true';
      const out: unknown[] = [];
      const dirs = new Set<string>();
      for (const [p, b] of repo.files) {
        if (p.includes('/') && !recursive) dirs.add(p.slice(0, p.indexOf('/')));
        else out.push(entry(repo, p, b));
      }
      for (const d of dirs) out.push({ type: 'directory', path: d, size: 0, oid: gitOid(Buffer.from(d)) });
      return json(res, 200, out);
    }
    if (api?.[2] === 'paths-info') {
      const { paths } = JSON.parse(await body(req)) as { paths: string[] };
      return json(res, 200, paths.filter((p) => repo.files.has(p)).map((p) => entry(repo, p, repo.files.get(p)!)));
    }
    if (resolve) {
      const file = repo.files.get(resolve[3]!);
      if (!file) return json(res, 404, { error: 'Entry not found' }, { 'X-Error-Code': 'EntryNotFound' });
      const etag = `"${isLfs(resolve[3]!) ? sha256(file) : gitOid(file)}"`;
      const headers = { 'Content-Type': 'application/octet-stream', ETag: etag, 'Accept-Ranges': 'bytes' };
      const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      if (range) {
        const start = Number(range[1]);
        const end = range[2] ? Math.min(Number(range[2]), file.length - 1) : file.length - 1;
        res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${end}/${file.length}`, 'Content-Length': String(end - start + 1) });
        return res.end(file.subarray(start, end + 1));
      }
      res.writeHead(200, { ...headers, 'Content-Length': String(file.length) });
      if (repo.stallFile === resolve[3]) {
        res.write(file.subarray(0, file.length >> 1));
        return;
      }
      if (repo.breakFile === resolve[3]) {
        res.write(file.subarray(0, file.length >> 1));
        setTimeout(() => res.destroy(), 20);
        return;
      }
      return res.end(file);
    }
    return json(res, 404, { error: 'not found' });
  };
  const server: Server = createServer((req, res) => {
    handle(req, res).catch((e) => {
      res.writeHead(500);
      res.end(String(e));
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    repos,
    requests,
    close: () =>
      new Promise<void>((ok) => {
        server.closeAllConnections();
        server.close(() => ok());
      }),
  };
}
