// Model directories for convert tests: the committed fixtures, copies with one thing broken,
// and single-layer models built from the golden vectors.
import { spawn, spawnSync } from 'node:child_process';
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SafetensorsReader, SafetensorsWriter, type Dtype } from '../../src/safetensors/index.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const MODELS = join(ROOT, 'fixtures', 'models');
export const BIN = join(ROOT, 'bin', 'marlin-fp4.js');

export async function tempDir(prefix = 'marlin-fp4-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the real command line (bin/ -> dist/), as users and CI do. */
export function cli(args: string[], env: Record<string, string> = {}): CliResult {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1', ...env } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/**
 * The same, in a child process that does not block this one (a test's fake Hub answers from
 * this process). env is laid over this process's; a key set to undefined is removed.
 */
export function cliAsync(args: string[], env: Record<string, string | undefined> = {}, cwd?: string): Promise<CliResult> {
  return new Promise((ok, fail) => {
    const merged: Record<string, string | undefined> = { ...process.env, NO_COLOR: '1', ...env };
    for (const [k, v] of Object.entries(merged)) if (v === undefined) delete merged[k];
    const child = spawn(process.execPath, [BIN, ...args], { cwd, env: merged as NodeJS.ProcessEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', fail);
    child.on('close', (code) => ok({ code: code ?? -1, stdout, stderr }));
  });
}

export interface TensorData {
  dtype: Dtype;
  shape: number[];
  data: Buffer;
}

/**
 * Copies a model directory, passing every tensor through `edit` (return it changed, or
 * undefined to drop it). Non-tensor files are copied as they are.
 */
export async function mutateModel(
  src: string,
  dst: string,
  edit: (name: string, t: TensorData) => TensorData | undefined,
): Promise<void> {
  await cp(src, dst, { recursive: true });
  for (const f of await readdir(src)) {
    if (!f.endsWith('.safetensors')) continue;
    const reader = await SafetensorsReader.open(join(src, f));
    const out: [string, TensorData][] = [];
    for (const name of reader.names()) {
      const e = reader.entry(name);
      const t = edit(name, { dtype: e.dtype, shape: e.shape, data: await reader.read(name) });
      if (t) out.push([name, t]);
    }
    const metadata = reader.header.metadata;
    await reader.close();
    await rm(join(dst, f));
    await writeTensors(join(dst, f), out, metadata);
  }
}

export async function writeTensors(path: string, tensors: [string, TensorData][], metadata: Record<string, string> = { format: 'pt' }): Promise<void> {
  const w = await SafetensorsWriter.create(
    path,
    tensors.map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape })),
    metadata,
  );
  for (const [name, t] of tensors) await w.write(name, t.data);
  await w.close();
}

/** An F32 scalar tensor (a global or input scale). */
export function f32Scalar(v: number): TensorData {
  const data = Buffer.alloc(4);
  data.writeFloatLE(v);
  return { dtype: 'F32', shape: [], data };
}

export async function editJson(path: string, edit: (v: Record<string, unknown>) => void): Promise<void> {
  const v = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  edit(v);
  await writeFile(path, JSON.stringify(v, null, 2));
}

/** A minimal ModelOpt NVFP4 model directory holding the given tensors. */
export async function modeloptModel(dir: string, tensors: [string, TensorData][], torchDtype = 'bfloat16'): Promise<void> {
  await writeFile(
    join(dir, 'config.json'),
    JSON.stringify({
      architectures: ['LlamaForCausalLM'],
      torch_dtype: torchDtype,
      quantization_config: { quant_method: 'modelopt', quant_algo: 'NVFP4', group_size: 16, exclude_modules: ['lm_head'] },
    }),
  );
  await writeTensors(join(dir, 'model.safetensors'), tensors);
}

export async function readAll(path: string): Promise<Map<string, TensorData>> {
  const r = await SafetensorsReader.open(path);
  const out = new Map<string, TensorData>();
  for (const name of r.names()) {
    const e = r.entry(name);
    out.set(name, { dtype: e.dtype, shape: e.shape, data: await r.read(name) });
  }
  await r.close();
  return out;
}

/** All tensors of a model directory (every shard). */
export async function readModel(dir: string): Promise<Map<string, TensorData & { file: string }>> {
  const out = new Map<string, TensorData & { file: string }>();
  for (const f of (await readdir(dir)).sort()) {
    if (!f.endsWith('.safetensors')) continue;
    for (const [name, t] of await readAll(join(dir, f))) out.set(name, { ...t, file: f });
  }
  return out;
}
