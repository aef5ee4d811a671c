// Verify vs convert: time `marlin-fp4 verify` (default checks: integrity, structure, GEMMs on
// every layer at M = 1, 16, 128, 4 experts per stack) against `marlin-fp4 convert` of the same
// generated checkpoint, on the GPU and on the CPU, with verify's peak RSS and its time per
// stage (from --json). Built to run unattended: every command has a time limit, a failure
// becomes a row saying so, and a short table ends the output.
//
// Usage: npm run build && node bench/verify.mjs [--models llama-8b,moe] [--devices cuda,cpu]
//        [--reps 1] [--layers N] [--timeout 900] [--dir DIR] [--keep]
//   llama-8b: the fixture generator's --preset llama-8b (6.0 GB, 4 shards)
//   moe:      --preset qwen3-moe-small --set hiddenSize=2048 --set intermediateSize=768
//             --set experts=128 --layers 24 (8.6 GB)
//   --layers N generates N layers instead (quick runs on small machines); --devices defaults
//   to cuda,cpu when a GPU is usable, else cpu.
// Goals (issue 13): verify <= 2x convert with --device cuda, <= 5x with --device cpu, peak RSS < 1 GB.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const { values } = parseArgs({
  options: {
    models: { type: 'string', default: 'llama-8b,moe' },
    devices: { type: 'string' },
    reps: { type: 'string', default: '1' },
    layers: { type: 'string' },
    timeout: { type: 'string', default: '900' },
    dir: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});
const bin = fileURLToPath(new URL('../bin/marlin-fp4.js', import.meta.url));
const work = values.dir ?? mkdtempSync(join(tmpdir(), 'marlin-fp4-bench-verify-'));
const timeoutMs = Number(values.timeout) * 1000;
const reps = Math.max(1, Number(values.reps));
const layers = values.layers === undefined ? undefined : Number(values.layers);

const MODELS = {
  'llama-8b': { preset: 'llama-8b', flavour: 'modelopt', shards: 4 },
  moe: { preset: 'qwen3-moe-small', flavour: 'modelopt', hiddenSize: 2048, intermediateSize: 768, experts: 128, layers: 24 },
};

function gpuUsable() {
  try {
    const r = spawnSync(process.execPath, ['-e', "import('./dist/transform/addon.js').then(m => console.log(m.addon().cudaStatus().available))"], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      encoding: 'utf8',
      timeout: 60_000,
    });
    return r.stdout.trim() === 'true';
  } catch {
    return false;
  }
}
const devices = (values.devices ?? (gpuUsable() ? 'cuda,cpu' : 'cpu')).split(',').filter(Boolean);
const size = (d) => readdirSync(d).reduce((a, f) => a + statSync(join(d, f)).size, 0);

/** Runs the CLI with --json under the time limit: { seconds, report } or { error }. */
function run(args) {
  try {
    execFileSync('sync');
  } catch {}
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [bin, ...args, '--json'], { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 1 << 30 });
  const seconds = (performance.now() - t0) / 1e3;
  if (r.error) return { seconds, error: r.error.code === 'ETIMEDOUT' ? `timed out after ${values.timeout} s` : r.error.message };
  let report;
  try {
    report = JSON.parse(r.stdout);
  } catch {
    return { seconds, error: `exit ${r.status}: ${(r.stderr || '').trim().split('\n').at(-1)}` };
  }
  if (r.status !== 0 && !(args[0] === 'verify' && r.status === 1)) return { seconds, error: `exit ${r.status}: ${(r.stderr || '').trim().split('\n').at(-1)}` };
  return { seconds, report };
}

const rows = [];
const { generateModel } = await import('../build/tools/fixture-generator/generate.js');
for (const name of values.models.split(',').filter(Boolean)) {
  const spec = MODELS[name];
  if (!spec) {
    rows.push({ model: name, error: `unknown model (choose from ${Object.keys(MODELS).join(', ')})` });
    continue;
  }
  const model = join(work, name);
  try {
    if (!existsSync(join(model, 'config.json'))) {
      const t0 = performance.now();
      await generateModel(model, { ...spec, ...(layers ? { layers } : {}) });
      console.log(`generated ${name}${layers ? ` (${layers} layers)` : ''}: ${(size(model) / 1e9).toFixed(2)} GB in ${((performance.now() - t0) / 1e3).toFixed(1)} s`);
    }
  } catch (e) {
    rows.push({ model: name, error: `generation failed: ${e.message}` });
    continue;
  }
  const gb = size(model) / 1e9;
  for (const device of devices) {
    const out = join(work, `${name}-${device}-marlin`);
    const best = { convert: Infinity, verify: Infinity };
    let last;
    let error;
    for (let i = 0; i < reps && !error; i++) {
      rmSync(out, { recursive: true, force: true });
      const c = run(['convert', model, '-o', out, '--device', device]);
      if (c.error) {
        error = `convert: ${c.error}`;
        break;
      }
      best.convert = Math.min(best.convert, c.seconds);
      const v = run(['verify', out, '--device', device]);
      if (v.error) {
        error = `verify: ${v.error}`;
        break;
      }
      best.verify = Math.min(best.verify, v.seconds);
      last = v.report;
      console.log(
        `${name} --device ${device} run ${i + 1}: convert ${c.seconds.toFixed(2)} s, verify ${v.seconds.toFixed(2)} s (${v.report.passed ? 'PASS' : 'FAIL'}), ` +
          `verify peak RSS ${(v.report.peak_rss_bytes / 1e6).toFixed(0)} MB, stages ${JSON.stringify(v.report.stages)}`,
      );
      if (!v.report.passed) console.log(`  verify problems: ${[...v.report.errors, ...v.report.failed_layers].slice(0, 5).join('; ')}`);
    }
    rows.push({ model: name, gb, device, ...best, report: last, error });
    if (!values.keep) rmSync(out, { recursive: true, force: true });
  }
}

const goal = { cuda: 2, cpu: 5 };
console.log('');
console.log(`verify vs convert, ${availableParallelism()} cores, node ${process.version}, best of ${reps}, warm page cache`);
const head = ['model', 'GB', 'device', 'convert s', 'verify s', 'ratio', 'goal', 'verify RSS MB', 'verdict', 'met'];
const body = rows.map((r) => {
  if (r.error) return [r.model, r.gb ? r.gb.toFixed(2) : '-', r.device ?? '-', '-', '-', '-', '-', '-', `error: ${r.error}`, 'no'];
  const ratio = r.verify / r.convert;
  const rss = r.report.peak_rss_bytes / 1e6;
  const met = ratio <= goal[r.device] && rss < 1000 && r.report.passed;
  return [r.model, r.gb.toFixed(2), r.device, r.convert.toFixed(2), r.verify.toFixed(2), ratio.toFixed(2), `<= ${goal[r.device]}`, rss.toFixed(0), r.report.passed ? 'PASS' : 'FAIL', met ? 'yes' : 'no'];
});
const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => String(b[i]).length)));
for (const line of [head, ...body]) console.log(line.map((c, i) => String(c).padEnd(widths[i])).join('  ').trimEnd());
writeFileSync(join(values.keep || values.dir ? work : tmpdir(), 'bench-verify.json'), JSON.stringify(rows.map(({ report, ...r }) => ({ ...r, stages: report?.stages, peak_rss_bytes: report?.peak_rss_bytes })), null, 2));
if (!values.keep && !values.dir) rmSync(work, { recursive: true, force: true });
