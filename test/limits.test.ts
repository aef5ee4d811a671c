// Edges (issue 15): every user-input problem exits 2 and every I/O problem 3, each in one line
// without a stack trace or a temporary path; limits on JSON depth, tensor count and number
// literals in safetensors headers.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, cp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_TENSORS } from '../src/safetensors/header.js';
import { BIN, cli, MODELS, tempDir } from './helpers/models.js';

const LLAMA = join(MODELS, 'llama-tiny-modelopt');
let work: string;
beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function copy(name: string): Promise<string> {
  const dir = join(work, name);
  await cp(LLAMA, dir, { recursive: true });
  return dir;
}

/** A safetensors file from header text (padded) and data bytes. */
async function rawShard(path: string, header: string, data = Buffer.alloc(0)): Promise<void> {
  const h = Buffer.from(header + ' '.repeat((8 - (Buffer.byteLength(header) % 8)) % 8));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(h.length));
  await writeFile(path, Buffer.concat([prefix, h, data]));
}

describe('limits, with one line and exit code 2', () => {
  it('a config.json nested 10,000 deep', async () => {
    const model = await copy('deep');
    const text = await readFile(join(model, 'config.json'), 'utf8');
    await writeFile(join(model, 'config.json'), text.replace(/}\s*$/, `, "deep": ${'['.repeat(10_000)}${']'.repeat(10_000)}}`));
    const r = cli(['convert', model, '-o', join(work, 'deep-out')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`error: ${join(model, 'config.json')}: nested deeper than 64 levels\n`);
  });

  it('data_offsets written as floats (or -0, or with an exponent)', async () => {
    for (const [offsets, literal] of [['[0.0, 4]', '0.0'], ['[0, 4e0]', '4e0'], ['[-0, 4]', '-0']] as const) {
      const dir = await copy(`float-${literal}`);
      await rawShard(join(dir, 'model.safetensors'), `{"w":{"dtype":"F32","shape":[1],"data_offsets":${offsets}}}`, Buffer.alloc(4));
      const r = cli(['inspect', dir]);
      expect(r.code).toBe(2);
      const index = offsets.indexOf(literal) < 3 ? 0 : 1;
      expect(r.stderr).toBe(
        `error: ${join(dir, 'model.safetensors')}: tensor w: data_offsets[${index}] must be a non-negative safe integer, got ${literal} (written as a non-integer number)\n`,
      );
    }
  });

  it(`a header with a million tensors is refused quickly (the limit is ${MAX_TENSORS})`, async () => {
    const dir = await copy('million');
    const parts = ['{'];
    for (let i = 0; i < 1_000_000; i++) parts.push(`${i ? ',' : ''}"t.${i}":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`);
    parts.push('}');
    await rawShard(join(dir, 'model.safetensors'), parts.join(''));
    // Bounded: killed after 60 s (it took 30 s and 1.7 GB before the limit; now about 2 s).
    const r = spawnSync(process.execPath, [BIN, 'inspect', dir], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, NO_COLOR: '1' } });
    expect(r.status).toBe(2);
    expect(r.stderr).toBe(`error: ${join(dir, 'model.safetensors')}: header lists more than ${MAX_TENSORS} tensors (the limit of this reader)\n`);
  });

  it('MARLIN_FP4_SHARDS_AT_ONCE=0 (and other non-numbers) is a usage error', () => {
    for (const v of ['0', 'two', '-1']) {
      const out = join(work, `lanes-${v}`);
      const r = cli(['convert', LLAMA, '-o', out], { MARLIN_FP4_SHARDS_AT_ONCE: v });
      expect(r.code).toBe(2);
      expect(r.stderr).toBe(`error: MARLIN_FP4_SHARDS_AT_ONCE=${v}: must be a whole number from 1 to 64\n`);
      expect(existsSync(out)).toBe(false);
    }
  });
});

describe('I/O problems exit 3, the same for config.json and a shard; no temporary path in messages', () => {
  const asUser = process.getuid?.() === 0 ? ['runuser', '-u', 'nobody', '--'] : [];
  const canDrop = asUser.length === 0 || spawnSync('runuser', ['-u', 'nobody', '--', 'true']).status === 0;
  it.skipIf(!canDrop)('an unreadable config.json and an unreadable shard (permission denied)', async () => {
    await chmod(work, 0o755);
    for (const file of ['config.json', 'model.safetensors']) {
      const model = await copy(`noperm-${file}`);
      for (const f of await readdir(model)) await chmod(join(model, f), 0o644);
      await chmod(join(model, file), 0o000);
      const [cmd, ...args] = [...asUser, process.execPath, BIN, 'inspect', model];
      const r = spawnSync(cmd!, args, { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
      expect(r.status, r.stderr).toBe(3);
      expect(r.stderr).toBe(`error: ${join(model, file)}: cannot read: permission denied (EACCES)\n`);
    }
  });

  it.skipIf(!existsSync('/bin/bash'))('a write failing on a copied side file names it in the output directory, not the temporary one', async () => {
    const model = await copy('bigside');
    await writeFile(join(model, 'tokenizer.json'), Buffer.alloc(400 * 1024, 0x20));
    const out = join(work, 'bigside-out');
    // ulimit -f is in 1024-byte blocks: room for the 172 KB shard, not for the 400 KB file.
    const r = spawnSync('/bin/bash', ['-c', `ulimit -f 300; exec "${process.execPath}" "${BIN}" convert "${model}" -o "${out}"`], {
      encoding: 'utf8',
      env: { ...process.env, NO_COLOR: '1' },
    });
    expect(r.status).toBe(3);
    expect(r.stderr).toBe(`error: ${out}/tokenizer.json: cannot write: file too large for this file system or process limit (EFBIG)\n`);
    expect(r.stderr).not.toMatch(/marlin-fp4-tmp/);
    expect(existsSync(out)).toBe(false);
  });
});
