// Convert vs copy: time `marlin-fp4 convert` of a generated NVFP4 checkpoint against `cp -r`
// of the same directory, in the same run, both with a warm page cache; then a short table
// (time, ratio to cp, with sync, peak RSS), optionally the profile of each variant and
// whether every variant wrote the same bytes. Generated data is deleted at the end.
//
// Usage: npm run build && node bench/convert.mjs [--preset NAME[,NAME…]] [--shards 4] [--reps 3]
//        [--layers N] [--set key=value …]   (the fixture generator's dimensions, as its CLI takes them)
//        [--variants="--device cpu;--device cuda"]   (convert options per variant, ";"-separated;
//        leading NAME=value words set environment variables for that variant's runs, e.g.
//        "MARLIN_FP4_SHARDS_AT_ONCE=4 --device cuda"; BENCH_BIN=path runs another build's
//        bin/marlin-fp4.js, e.g. the code before a change, for a before/after in one run)
//        [--profile]   (one more run per variant with MARLIN_FP4_PROFILE=1, its breakdown printed)
//        [--same-bytes]   (sha256 of every variant's output shards, which must all be equal)
//        [--dir D] [--keep]
//
// Presets: the generator's (llama-8b, qwen3-moe-small, …) and these MoE shapes:
//   qwen3-moe-128x24     128 experts x 24 layers, hidden 2048, intermediate 768 (8.6 GB, 37,371 tensors)
//   deepseek-v3-2layers  DeepSeek-V3's MoE layer shape (hidden 7168, expert intermediate 2048,
//                        256 experts, vocabulary 129,280), 2 layers: about 16.5 GB, so that the
//                        input, one output and the copy fit a 64 GB disk (outputs are removed
//                        between commands).
//   gpt-oss-20b          MXFP4 (tools/fixture-generator/mxfp4.ts): gpt-oss-20b's shapes, 24 layers of 32
//                        experts, hidden = intermediate = 2880, full vocabulary: about 13.8 GB
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir, availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { generateModel } from '../build/tools/fixture-generator/generate.js';
import { generateMxfp4Model, isMxfp4Preset } from '../build/tools/fixture-generator/mxfp4.js';

const BENCH_PRESETS = {
  'qwen3-moe-128x24': { preset: 'qwen3-moe-small', hiddenSize: 2048, intermediateSize: 768, experts: 128, layers: 24 },
  'deepseek-v3-2layers': {
    preset: 'qwen3-moe-small',
    hiddenSize: 7168,
    intermediateSize: 2048,
    experts: 256,
    expertsPerTok: 8,
    layers: 2,
    heads: 56,
    kvHeads: 8,
    headDim: 128,
    vocabSize: 129280,
  },
};

const { values } = parseArgs({
  options: {
    preset: { type: 'string', default: 'llama-8b' },
    shards: { type: 'string', default: '4' },
    layers: { type: 'string' },
    set: { type: 'string', multiple: true },
    reps: { type: 'string', default: '3' },
    dir: { type: 'string' },
    variants: { type: 'string', default: '' },
    profile: { type: 'boolean', default: false },
    'same-bytes': { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
  },
});

/** Generator options of a preset name, with --layers and --set applied. */
function modelOptions(name) {
  const opts = { ...(BENCH_PRESETS[name] ?? { preset: name }), flavour: 'modelopt', shards: Number(values.shards) };
  if (values.layers !== undefined) opts.layers = Number(values.layers);
  for (const kv of values.set ?? []) {
    const m = /^([A-Za-z]+)=(\d+)$/.exec(kv);
    if (!m) throw new Error(`--set wants key=number, got ${JSON.stringify(kv)}`);
    opts[m[1]] = Number(m[2]);
  }
  return opts;
}

const defaultBin = fileURLToPath(new URL('../bin/marlin-fp4.js', import.meta.url));
const reps = Number(values.reps);
const variants = (values.variants || '').split(';').map((v) => v.trim().split(/\s+/).filter(Boolean));
const isEnv = (w) => /^[A-Za-z_][A-Za-z0-9_]*=/.test(w);
const envOf = (words) => Object.fromEntries(words.filter(isEnv).map((w) => [w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1)]));
const argsOf = (words) => words.filter((w) => !isEnv(w));
const binOf = (words) => resolve(envOf(words).BENCH_BIN ?? defaultBin);
const size = (d) => readdirSync(d).reduce((a, f) => a + statSync(join(d, f)).size, 0);

// Each command starts with no dirty pages of the other's pending (sync first), and is timed
// both as it returns and until its data reached the disk (sync included): writeback of
// several GB dominates on a slow disk, and it must not leak into the next command's time.
function timed(cmd, args, env = {}) {
  execFileSync('sync');
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env }, encoding: 'utf8', maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status})`);
  const t1 = performance.now();
  execFileSync('sync');
  return { time: (t1 - t0) / 1e3, synced: (performance.now() - t0) / 1e3, stdout: r.stdout };
}

/** sha256 of every .safetensors file of a directory (several files hashed at once). */
function shardDigests(dir) {
  const files = readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
  const out = execFileSync('sh', ['-c', 'printf "%s\\0" "$@" | xargs -0 -P 8 -n 1 sha256sum', 'sh', ...files], { cwd: dir, encoding: 'utf8', maxBuffer: 1 << 26 });
  return out.trim().split('\n').sort().join('\n');
}

async function benchPreset(name, work) {
  const model = join(work, 'model');
  if (!existsSync(model)) {
    const t0 = performance.now();
    // MXFP4 presets (gpt-oss-20b, …) come from the MXFP4 generator (--layers applies); the others are ModelOpt NVFP4.
    if (isMxfp4Preset(name)) {
      await generateMxfp4Model(model, { preset: name, shards: Number(values.shards), ...(values.layers !== undefined ? { layers: Number(values.layers) } : {}) });
    } else {
      await generateModel(model, modelOptions(name));
    }
    console.log(`generated ${name} (${(size(model) / 1e9).toFixed(2)} GB) in ${((performance.now() - t0) / 1e3).toFixed(1)} s`);
  }
  // Every command starts from the same state: no earlier outputs (their pages freed), nothing
  // dirty (sync), and the input in the page cache. The cache is not dropped: on a VM that
  // returns freed memory to its host, dropping it makes the next writes fault on the host and
  // measures the VM, not the program.
  const a = join(work, 'copy');
  const b = join(work, 'converted');
  const resetState = () => {
    for (const o of [a, b]) rmSync(o, { recursive: true, force: true });
    execFileSync('sync');
    for (const f of readdirSync(model)) execFileSync('cat', [join(model, f)], { stdio: ['ignore', 'ignore', 'inherit'] });
  };
  const convertArgs = (extra) => [binOf(extra), 'convert', model, '-o', b, '--json', ...argsOf(extra)];
  const cpRuns = [];
  const convRuns = variants.map(() => []);
  const digests = variants.map(() => undefined);
  for (let i = 0; i < reps; i++) {
    resetState();
    cpRuns.push(timed('cp', ['-r', model, a]));
    for (const [v, extra] of variants.entries()) {
      resetState();
      const r = timed(process.execPath, convertArgs(extra), envOf(extra));
      convRuns[v].push({ ...r, rss: JSON.parse(r.stdout).peak_rss_bytes });
      if (values['same-bytes'] && digests[v] === undefined) digests[v] = shardDigests(b);
    }
  }
  const profiles = [];
  if (values.profile) {
    for (const extra of variants) {
      resetState();
      const r = spawnSync(process.execPath, convertArgs(extra), { env: { ...process.env, ...envOf(extra), MARLIN_FP4_PROFILE: '1' }, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`profiled convert ${extra.join(' ')} failed (${r.status}): ${r.stderr}`);
      profiles.push(r.stderr.trim());
    }
  }
  resetState();

  const gb = size(model) / 1e9;
  const best = (runs, key) => Math.min(...runs.map((r) => r[key]));
  const cpBest = best(cpRuns, 'time');
  const cpSynced = best(cpRuns, 'synced');
  const lines = [
    `${name}: input ${gb.toFixed(2)} GB, ${values.shards} shards, ${availableParallelism()} cores, node ${process.version}, best of ${reps}, warm page cache`,
    `${'command'.padEnd(44)} ${'time'.padStart(8)} ${'rate'.padStart(11)} ${'/ cp'.padStart(6)} ${'with sync'.padStart(10)} ${'/ cp'.padStart(6)} ${'peak RSS'.padStart(10)}   runs`,
    `${'cp -r'.padEnd(44)} ${cpBest.toFixed(2).padStart(6)} s ${(gb / cpBest).toFixed(2).padStart(6)} GB/s ${''.padStart(6)} ${cpSynced.toFixed(2).padStart(8)} s ${''.padStart(6)} ${''.padStart(10)}   ${cpRuns.map((r) => r.time.toFixed(2)).join(' ')}`,
  ];
  for (const [v, extra] of variants.entries()) {
    const runs = convRuns[v];
    const t = best(runs, 'time');
    const s = best(runs, 'synced');
    const label = `convert${extra.length ? ` ${extra.join(' ')}` : ''}`;
    lines.push(
      `${label.padEnd(44)} ${t.toFixed(2).padStart(6)} s ${(gb / t).toFixed(2).padStart(6)} GB/s ${(t / cpBest).toFixed(2).padStart(6)} ${s.toFixed(2).padStart(8)} s ${(s / cpSynced).toFixed(2).padStart(6)} ${(Math.max(...runs.map((r) => r.rss)) / 1e6).toFixed(0).padStart(7)} MB   ${runs.map((r) => r.time.toFixed(2)).join(' ')}`,
    );
  }
  if (values['same-bytes']) {
    const same = digests.every((d) => d === digests[0]);
    lines.push(same ? `output shards: the same sha256 for every variant (${digests[0].split('\n').length} files)` : 'output shards DIFFER between variants:');
    if (!same) for (const [v, extra] of variants.entries()) lines.push(`  ${extra.join(' ')}:\n${digests[v]}`);
  }
  for (const [v, extra] of variants.entries()) if (profiles[v]) lines.push(`--- profile, convert ${extra.join(' ')}:`, profiles[v]);
  return lines.join('\n');
}

const tables = [];
for (const name of values.preset.split(',')) {
  const work = values.dir ? join(values.dir, name) : mkdtempSync(join(tmpdir(), 'marlin-fp4-bench-'));
  try {
    const table = await benchPreset(name, work);
    console.log(table);
    tables.push(table);
  } finally {
    // Generated data is large: gone unless asked to keep it (--dir keeps it for the next run).
    if (!values.keep && !values.dir) rmSync(work, { recursive: true, force: true });
  }
}
if (tables.length > 1) console.log(`\n=== summary ===\n${tables.join('\n\n')}`);
