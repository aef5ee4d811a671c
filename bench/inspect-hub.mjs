// `marlin-fp4 inspect <repo-id>` against the local fake Hub (test/helpers/hub-server.ts, compiled
// here with tsc) serving a generated model from disk: wall time, requests, bytes the Hub sent.
//   node bench/inspect-hub.mjs <model-dir> [extra inspect args...]
// The Hub's sha256 of the shards (needed for its file listing) is computed before timing.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [dir, ...extra] = process.argv.slice(2);
if (!dir) throw new Error('usage: node bench/inspect-hub.mjs <model-dir> [inspect args]');
const root = resolve(import.meta.dirname, '..');
const build = mkdtempSync(join(tmpdir(), 'fake-hub-'));
const tsc = spawnSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), join(root, 'test/helpers/hub-server.ts'), '--outDir', build, '--module', 'nodenext', '--target', 'es2022', '--skipLibCheck', '--types', 'node'], { stdio: 'inherit' });
if (tsc.status !== 0) process.exit(1);
const { repoFromDirOnDisk, startHub } = await import(pathToFileURL(join(build, 'hub-server.js')).href);
const repo = repoFromDirOnDisk(resolve(dir));
const hub = await startHub(new Map([['bench/model', repo]]));
await fetch(`${hub.url}/api/models/bench/model/tree/main`).then((r) => r.arrayBuffer()); // hashes the shards once
hub.requests.length = 0;

const home = mkdtempSync(join(tmpdir(), 'hf-home-'));
// spawnSync blocks this process, and the Hub runs in it: run the CLI asynchronously instead.
const runAsync = (args) =>
  new Promise((ok) => {
    const t0 = performance.now();
    const c = spawn(process.execPath, [join(root, 'bin/marlin-fp4.js'), ...args], { env: { ...process.env, HF_HOME: home, HF_ENDPOINT: hub.url } });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('close', (status) => ok({ status, stdout, stderr, seconds: (performance.now() - t0) / 1000 }));
  });

const r = await runAsync(['inspect', 'bench/model', ...extra]);
const total = [...repo.files.values()].reduce((a, f) => a + (Buffer.isBuffer(f) ? f.length : f.size), 0);
const sent = hub.requests.reduce((a, q) => a + q.sent, 0);
const shardReqs = hub.requests.filter((q) => q.path.endsWith('.safetensors'));
process.stdout.write(r.stdout);
process.stderr.write(r.stderr);
console.log(`\nexit ${r.status}; ${r.seconds.toFixed(2)} s wall (process start to exit)`);
console.log(`repo: ${repo.files.size} files, ${(total / 1e9).toFixed(2)} GB`);
console.log(`requests: ${hub.requests.length} (${shardReqs.length} to shards, all ranged: ${shardReqs.every((q) => q.range)})`);
console.log(`bytes sent by the Hub: ${sent} (${(sent / 1e6).toFixed(2)} MB, ${((100 * sent) / total).toFixed(4)}% of the repo); shard ranges ${shardReqs.reduce((a, q) => a + q.sent, 0)} B`);
await hub.close();
rmSync(build, { recursive: true, force: true });
rmSync(home, { recursive: true, force: true });
