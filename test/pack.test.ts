// The published package works: `npm pack` (its `prepare` builds dist/) on a copy of the
// repository, then an install of the tarball into an empty project — offline, from the npm
// cache that `npm ci` filled — whose `install` script builds the addon from the shipped native/
// sources (CPU-only here: MARLIN_FP4_CUDA=OFF), then `npx marlin-fp4 --help` and a conversion
// with the installed package, byte-identical to the repository's own.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { cp, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, MODELS, readModel, ROOT, tempDir } from './helpers/models.js';

const npm = spawnSync('npm', ['--version'], { encoding: 'utf8' });
const hasNpm = npm.status === 0;
const skipWhy = hasNpm ? '' : ' (skipped: npm is not on PATH)';

/** The environment for child npm runs: none of the parent npm's lifecycle variables, but its cache and registry settings. */
function npmEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const keep = new Set(['npm_config_cache', 'npm_config_userconfig', 'npm_config_registry', 'npm_config_globalconfig']);
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k) || keep.has(k.toLowerCase())) env[k] = v;
  return { ...env, NO_COLOR: '1', npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false', ...extra };
}

function run(cmd: string, args: string[], cwd: string, env = npmEnv()): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd, env, encoding: 'utf8', maxBuffer: 64 << 20 });
}

/** The repository's files as a clean clone has them (git's list; else everything but build outputs). */
function sourceFiles(): string[] {
  const git = spawnSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '-z'], { cwd: ROOT, encoding: 'utf8' });
  if (git.status === 0 && git.stdout) return git.stdout.split('\0').filter((f) => f && existsSync(join(ROOT, f)) && statSync(join(ROOT, f)).isFile());
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const d of readdirSync(join(ROOT, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${d.name}` : d.name;
      if (['node_modules', 'dist', '.git', 'build'].includes(d.name)) continue;
      if (d.isDirectory()) walk(p);
      else if (d.isFile()) out.push(p);
    }
  };
  walk('');
  return out;
}

/** Source files native/CMakeLists.txt names (relative to native/). */
function cmakeSources(): string[] {
  const text = readFileSync(join(ROOT, 'native', 'CMakeLists.txt'), 'utf8');
  return [...new Set([...text.matchAll(/(?:^|[\s(])((?:src|test)\/[\w./-]+\.(?:cc|cu|cpp|c|h|cuh|hpp))\b/gm)].map((m) => m[1]!))];
}

/**
 * An empty project depending on the tarball, with a lockfile that pins the package's runtime
 * dependencies (not the dev ones) exactly as the repository's package-lock.json does.
 */
async function pinnedProject(dir: string, spec: string): Promise<void> {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as Record<string, unknown>;
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean; link?: boolean }> };
  const name = 'marlin-fp4-pack-test';
  const packages: Record<string, unknown> = {
    '': { name, version: '1.0.0', dependencies: { 'marlin-fp4': spec } },
    'node_modules/marlin-fp4': {
      version: pkg.version,
      resolved: spec,
      hasInstallScript: true,
      license: pkg.license,
      dependencies: pkg.dependencies,
      bin: pkg.bin,
      engines: pkg.engines,
    },
  };
  for (const [path, entry] of Object.entries(lock.packages)) if (path && !entry.dev && !entry.link) packages[path] = entry;
  await writeFile(join(dir, 'package.json'), JSON.stringify({ name, version: '1.0.0', private: true, dependencies: { 'marlin-fp4': spec } }, null, 2));
  await writeFile(join(dir, 'package-lock.json'), JSON.stringify({ name, version: '1.0.0', lockfileVersion: 3, requires: true, packages }, null, 2));
}

describe.skipIf(!hasNpm)(`npm pack, install from the tarball, run${skipWhy}`, () => {
  let work: string;
  let tarball: string;
  let packed: string[];

  beforeAll(async () => {
    work = await tempDir('marlin-fp4-pack-');
    const copy = join(work, 'repo');
    for (const f of sourceFiles()) {
      await mkdir(dirname(join(copy, f)), { recursive: true });
      await cp(join(ROOT, f), join(copy, f));
    }
    // `prepare` (tsc) needs the dev dependencies: borrow the repository's.
    await symlink(join(ROOT, 'node_modules'), join(copy, 'node_modules'), 'dir');
    await mkdir(join(work, 'dest'));
    const r = run('npm', ['pack', '--json', '--pack-destination', join(work, 'dest')], copy);
    if (r.status !== 0) throw new Error(`npm pack failed:\n${r.stdout}\n${r.stderr}`);
    const info = JSON.parse(r.stdout.slice(r.stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
    tarball = join(work, 'dest', info[0]!.filename);
    packed = info[0]!.files.map((f) => f.path);
  }, 300_000);

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('the tarball holds dist/ (built by prepare), bin/, and every native source CMake names', () => {
    expect(existsSync(tarball)).toBe(true);
    for (const f of ['package.json', 'README.md', 'bin/marlin-fp4.js', 'dist/cli/main.js', 'dist/inspect/inspect.js', 'dist/checkpoint/resolve-model.js', 'native/CMakeLists.txt']) {
      expect(packed, f).toContain(f);
    }
    const sources = cmakeSources();
    expect(sources.length).toBeGreaterThan(4);
    for (const s of sources) expect(packed, `native/${s} (named in native/CMakeLists.txt)`).toContain(`native/${s}`);
    // Nor more than that: no tests, fixtures, TypeScript sources or build outputs.
    expect(packed.filter((f) => /^(test|fixtures|src|bench|docs)\/|^native\/build\/|\.ts$/.test(f))).toEqual([]);
  });

  it('installs offline into an empty project, builds the addon, and runs', async (ctx) => {
    const proj = join(work, 'project');
    await mkdir(proj);
    const env = npmEnv({ MARLIN_FP4_CUDA: 'OFF' });
    // `npm install --offline <tarball>` resolves the dependencies' version ranges, which needs
    // registry metadata that `npm ci` never caches (it fetches only the locked tarballs). So the
    // empty project gets a lockfile pinning the tarball's dependencies to the repository's
    // locked versions, and `npm ci --offline` installs them from the tarballs `npm ci` cached.
    await pinnedProject(proj, `file:../dest/${tarball.slice(tarball.lastIndexOf('/') + 1)}`);
    let r = run('npm', ['ci', '--offline', '--no-audit', '--no-fund'], proj, env);
    if (r.status !== 0 && /ENOTCACHED/.test(r.stderr + r.stdout)) {
      // The cache lacks something: the registry may fill the gap, if it is reachable.
      // (No retries and a short timeout: an unreachable registry must not hold the suite for minutes.)
      r = run('npm', ['install', '--prefer-offline', '--fetch-retries=0', '--fetch-timeout=20000', '--no-audit', '--no-fund', '--no-package-lock', tarball], proj, env);
      if (r.status !== 0 && /ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ENETUNREACH|ECONNRESET|network/i.test(r.stderr + r.stdout)) {
        const why = 'skipped: the dependencies are not all in the npm cache and the registry is unreachable (run `npm ci` online once to fill the cache)';
        console.warn(`pack test ${why}`);
        ctx.skip(why);
      }
    }
    expect(r.status, `npm install failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
    const installed = join(proj, 'node_modules', 'marlin-fp4');
    expect(existsSync(join(installed, 'native', 'build', 'Release', 'marlin_fp4.node'))).toBe(true);

    const help = run('npx', ['--no-install', 'marlin-fp4', '--help'], proj, env);
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/^Usage: marlin-fp4 /m);
    expect(help.stdout).toMatch(/^ {2}convert \[options\] <model>/m);
    expect(help.stdout).toMatch(/^ {2}inspect \[options\] <model>/m);

    const out = join(work, 'converted');
    const conv = run('npx', ['--no-install', 'marlin-fp4', 'convert', join(MODELS, 'llama-tiny-modelopt'), '-o', out, '--json'], proj, env);
    expect(conv.status, conv.stderr).toBe(0);
    expect(JSON.parse(conv.stdout).output).toBe(out);
    // The same bytes as the repository's own build.
    const ref = join(work, 'converted-here');
    expect(cli(['convert', join(MODELS, 'llama-tiny-modelopt'), '-o', ref]).code).toBe(0);
    const [a, b] = await Promise.all([readModel(out), readModel(ref)]);
    expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
    for (const [name, t] of a) expect(t.data.equals(b.get(name)!.data), name).toBe(true);
  }, 300_000);
});
