// Peak memory of convert on generated checkpoints of two sizes each, dense and MoE: the bound
// must not grow with the model. Usage: npm run build && node bench/memory.mjs [--dir D] [--keep]
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { generateModel } from '../build/tools/fixture-generator/generate.js';

const { values } = parseArgs({ options: { dir: { type: 'string' }, keep: { type: 'boolean', default: false } } });
const bin = fileURLToPath(new URL('../bin/marlin-fp4.js', import.meta.url));
const work = values.dir ?? mkdtempSync(join(tmpdir(), 'marlin-fp4-mem-'));
const models = [
  ['dense 8 layers', { preset: 'llama-8b', flavour: 'modelopt', shards: 2, layers: 8 }],
  ['dense 32 layers', { preset: 'llama-8b', flavour: 'modelopt', shards: 4 }],
  ['MoE 4 layers x 32 experts', { preset: 'qwen3-moe-small', flavour: 'modelopt', shards: 2 }],
  ['MoE 16 layers x 32 experts', { preset: 'qwen3-moe-small', flavour: 'compressed-tensors', shards: 4, layers: 16 }],
];
console.log('model                          input GB   peak RSS MB   seconds');
for (const [label, opts] of models) {
  const dir = join(work, label.replace(/\W+/g, '-'));
  if (!existsSync(dir)) await generateModel(dir, opts);
  const out = `${dir}-out`;
  rmSync(out, { recursive: true, force: true });
  const r = spawnSync(process.execPath, [bin, 'convert', dir, '-o', out, '--json', '--no-checksums'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  const rep = JSON.parse(r.stdout);
  console.log(`${label.padEnd(30)} ${(rep.bytes_in / 1e9).toFixed(2).padStart(8)} ${(rep.peak_rss_bytes / 1e6).toFixed(0).padStart(13)} ${rep.seconds.toFixed(1).padStart(9)}`);
  rmSync(out, { recursive: true, force: true });
}
if (!values.keep && !values.dir) rmSync(work, { recursive: true, force: true });
