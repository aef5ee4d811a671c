// Convert vs copy: time `marlin-fp4 convert` of a generated NVFP4 checkpoint against `cp -r`
// of the same directory, in the same run, both with a warm page cache.
// Usage: npm run build && node bench/convert.mjs [--preset llama-8b] [--shards 4] [--reps 3]
//        [--variants="--device cpu;--device cuda"]   (convert options per variant, ";"-separated;
//        leading NAME=value words set environment variables for that variant's runs, e.g.
//        "MARLIN_FP4_SHARDS_AT_ONCE=4 --device cuda")
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir, availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { generateModel } from '../build/tools/fixture-generator/generate.js';

const { values } = parseArgs({
  options: {
    preset: { type: 'string', default: 'llama-8b' },
    shards: { type: 'string', default: '4' },
    reps: { type: 'string', default: '3' },
    dir: { type: 'string' },
    variants: { type: 'string', default: '' },
    keep: { type: 'boolean', default: false },
  },
});
const bin = fileURLToPath(new URL('../bin/marlin-fp4.js', import.meta.url));
const work = values.dir ?? mkdtempSync(join(tmpdir(), 'marlin-fp4-bench-'));
const model = join(work, 'model');
const size = (d) => readdirSync(d).reduce((a, f) => a + statSync(join(d, f)).size, 0);

if (!existsSync(model)) {
  const t0 = performance.now();
  await generateModel(model, { preset: values.preset, flavour: 'modelopt', shards: Number(values.shards) });
  console.log(`generated ${values.preset} (${(size(model) / 1e9).toFixed(2)} GB) in ${((performance.now() - t0) / 1e3).toFixed(1)} s`);
}
// Every command starts from the same state: no earlier outputs (their pages freed), nothing
// dirty (sync), and the input in the page cache. The cache is not dropped: on a VM that
// returns freed memory to its host, dropping it makes the next writes fault on the host and
// measures the VM, not the program.
function resetState(outputs) {
  for (const o of outputs) rmSync(o, { recursive: true, force: true });
  execFileSync('sync');
  for (const f of readdirSync(model)) execFileSync('cat', [join(model, f)], { stdio: ['ignore', 'ignore', 'inherit'] });
}

// Each command starts with no dirty pages of the other's pending (sync first), and is timed
// both as it returns and until its data reached the disk (sync included): writeback of
// several GB dominates on a slow disk, and it must not leak into the next command's time.
function timed(cmd, args, env = {}) {
  execFileSync('sync');
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, ...env } });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status})`);
  const t1 = performance.now();
  execFileSync('sync');
  return [(t1 - t0) / 1e3, (performance.now() - t0) / 1e3];
}

const reps = Number(values.reps);
const variants = (values.variants || '').split(';').map((v) => v.trim().split(/\s+/).filter(Boolean));
const isEnv = (w) => /^[A-Za-z_][A-Za-z0-9_]*=/.test(w);
const envOf = (words) => Object.fromEntries(words.filter(isEnv).map((w) => [w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1)]));
const argsOf = (words) => words.filter((w) => !isEnv(w));
const a = join(work, 'copy');
const b = join(work, 'converted');
const cpTimes = [];
const convTimes = variants.map(() => []);
for (let i = 0; i < reps; i++) {
  resetState([a, b]);
  cpTimes.push(timed('cp', ['-r', model, a]));
  for (const [v, extra] of variants.entries()) {
    resetState([a, b]);
    const profiling = process.env.MARLIN_FP4_PROFILE === '1';
    if (profiling) process.stderr.write(`[bench] run ${i + 1}: convert ${extra.join(' ')}\n`);
    convTimes[v].push(timed(process.execPath, [bin, 'convert', model, '-o', b, '-q', ...argsOf(extra)], envOf(extra)));
    if (profiling) process.stderr.write(`[bench] run ${i + 1}: ${convTimes[v].at(-1)[0].toFixed(2)} s (with sync ${convTimes[v].at(-1)[1].toFixed(2)} s)\n`);
  }
}
resetState([a, b]);
const best = (xs, i) => Math.min(...xs.map((x) => x[i]));
const gb = size(model) / 1e9;
const row = (label, xs) =>
  `${label.padEnd(28)} ${best(xs, 0).toFixed(2).padStart(7)} s ${(gb / best(xs, 0)).toFixed(2).padStart(6)} GB/s ${best(xs, 1).toFixed(2).padStart(9)} s   ${xs.map((x) => x[0].toFixed(2)).join(' ')}`;
console.log(`input ${gb.toFixed(2)} GB (${values.preset}, ${values.shards} shards), ${availableParallelism()} cores, node ${process.version}, best of ${reps}, warm page cache`);
console.log(`${'command'.padEnd(28)} ${'time'.padStart(9)} ${'rate'.padStart(11)} ${'with sync'.padStart(11)}   runs`);
console.log(row('cp -r', cpTimes));
for (const [v, extra] of variants.entries()) {
  const label = `convert${extra.length ? ` ${extra.join(' ')}` : ''}`;
  console.log(row(label, convTimes[v]));
  console.log(`  ${label} / cp = ${(best(convTimes[v], 0) / best(cpTimes, 0)).toFixed(2)} (with sync: ${(best(convTimes[v], 1) / best(cpTimes, 1)).toFixed(2)})`);
}
if (!values.keep && !values.dir) rmSync(work, { recursive: true, force: true });
