// The fixture generator's command line: arguments into generateModel's options, one summary
// line per model written. Runs from the compiled output (`npm run build:tools`):
//
//   node build/tools/fixture-generator/cli.js <out-dir> --preset NAME --flavour modelopt|compressed-tensors …
import { realpath } from 'node:fs/promises';
import { basename } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { DIMENSION_KEYS, generateModel, PRESETS, resolveOptions } from './generate.js';
import { generateMxfp4Model, isMxfp4Preset, MXFP4_PRESETS } from './mxfp4.js';
import type { GenerateOptions, ModelDims } from './types.js';

/** How the README and the usage text spell the command. */
export const COMMAND = 'node build/tools/fixture-generator/cli.js';

const USAGE = `usage: ${COMMAND} <out-dir> (--preset NAME | --arch llama|qwen3-moe) --flavour modelopt|compressed-tensors
       [--shards N] [--layers N] [--seed S] [--expert-names proj|w] [--no-zeros] [--split-globals] [--set key=value ...]
presets: ${Object.keys(PRESETS).join(', ')}
MXFP4 presets (no --flavour; --shards, --layers, --seed only): ${Object.keys(MXFP4_PRESETS).join(', ')}
--set keys: ${DIMENSION_KEYS.join(', ')}`;

/** Parses CLI arguments (without `node` and the script) into { dir, options }. */
export function parseCliArgs(argv: string[]): { dir: string; options: GenerateOptions } | { help: string } {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      preset: { type: 'string' },
      arch: { type: 'string' },
      flavour: { type: 'string' },
      shards: { type: 'string' },
      layers: { type: 'string' },
      seed: { type: 'string' },
      'expert-names': { type: 'string' },
      'no-zeros': { type: 'boolean' },
      'split-globals': { type: 'boolean' },
      set: { type: 'string', multiple: true },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return { help: USAGE };
  if (positionals.length !== 1) throw new Error(`expected exactly one output directory\n${USAGE}`);
  const int = (name: string, s: string | undefined) => {
    if (s === undefined) return undefined;
    if (!/^\d+$/.test(s)) throw new Error(`--${name} must be a non-negative integer, got ${JSON.stringify(s)}`);
    return Number(s);
  };
  const options: Record<string, unknown> = {
    preset: values.preset,
    arch: values.arch,
    flavour: values.flavour,
    shards: int('shards', values.shards) ?? 1,
    seed: int('seed', values.seed) ?? 1,
    expertNames: values['expert-names'] ?? 'proj',
    zeros: !values['no-zeros'],
    splitGlobals: values['split-globals'],
  };
  if (values.layers !== undefined) options.layers = int('layers', values.layers);
  for (const kv of values.set ?? []) {
    const m = /^([A-Za-z]+)=(.+)$/.exec(kv);
    if (!m || !DIMENSION_KEYS.includes(m[1] as keyof ModelDims)) throw new Error(`--set wants key=value with key one of ${DIMENSION_KEYS.join(', ')}, got ${JSON.stringify(kv)}`);
    const v = Number(m[2]);
    if (!Number.isFinite(v)) throw new Error(`--set ${m[1]}: not a number: ${JSON.stringify(m[2])}`);
    options[m[1]!] = v;
  }
  for (const k of Object.keys(options)) if (options[k] === undefined) delete options[k];
  return { dir: positionals[0]!, options: options as unknown as GenerateOptions };
}

function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e3).toFixed(1)} kB`;
}

export async function main(argv: string[]): Promise<void> {
  const parsed = parseCliArgs(argv);
  if ('help' in parsed) {
    console.log(parsed.help);
    return;
  }
  const t0 = performance.now();
  const preset = parsed.options.preset;
  if (preset !== undefined && isMxfp4Preset(preset)) {
    const { shards = 1, seed = 1, layers } = parsed.options;
    const r = await generateMxfp4Model(parsed.dir, { preset, shards, seed, layers });
    console.log(`${r.dir}: ${preset} MXFP4, seed ${seed}, ${shards} shard${shards === 1 ? '' : 's'}, ${r.tensorCount} tensors, ${formatBytes(r.bytes)} in ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    return;
  }
  const r = await generateModel(parsed.dir, parsed.options);
  const { model, flavour, shards, seed } = resolveOptions(parsed.options);
  const secs = ((performance.now() - t0) / 1000).toFixed(2);
  console.log(
    `${r.dir}: ${parsed.options.preset ?? model.arch} ${flavour}, ${model.layers} layers, seed ${seed}, ` +
      `${shards} shard${shards === 1 ? '' : 's'}, ${r.tensorCount} tensors, ${formatBytes(r.bytes)} in ${secs} s`,
  );
}

async function isMain(): Promise<boolean> {
  if (!process.argv[1]) return false;
  try {
    return pathToFileURL(await realpath(process.argv[1])).href === pathToFileURL(await realpath(fileURLToPath(import.meta.url))).href;
  } catch {
    return false;
  }
}

if (await isMain()) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(`${basename(process.argv[1]!)}: ${e instanceof Error ? e.message : String(e)}`);
    process.exitCode = 1;
  });
}
