// The bundled command line (tools/bundle-cli.mjs -> dist/cli/main.bundle.js), which
// bin/marlin-fp4.js runs when it is not older than dist/cli/main.js: it must behave as dist/
// does (help, version, errors and exit codes, a whole conversion).
import { existsSync, statSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, MODELS, ROOT, tempDir } from './helpers/models.js';

const bundle = join(ROOT, 'dist', 'cli', 'main.bundle.js');
const unbundled = join(ROOT, 'dist', 'cli', 'main.js');
const fresh = existsSync(bundle) && existsSync(unbundled) && statSync(bundle).mtimeMs >= statSync(unbundled).mtimeMs;
const dist = { MARLIN_FP4_NO_BUNDLE: '1' };

let dir: string;
beforeAll(async () => {
  dir = await tempDir();
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe.skipIf(!fresh)(`the bundled command line${fresh ? '' : ' (skipped: no bundle newer than dist/cli/main.js; npm run build:ts makes one where esbuild is installed)'}`, () => {
  it('prints the same help, version and errors as dist/, with the same exit codes', () => {
    for (const args of [['--version'], ['--help'], ['convert', '--help'], ['verify', '--help'], ['convert', join(dir, 'nonexistent')], ['frobnicate']]) {
      const a = cli(args);
      const b = cli(args, dist);
      expect({ args, code: a.code, stdout: a.stdout, stderr: a.stderr }).toEqual({ args, code: b.code, stdout: b.stdout, stderr: b.stderr });
    }
    expect(cli(['convert', join(dir, 'nonexistent')]).code).toBe(2);
  });

  it('converts a model to the same bytes as dist/ (the addon and the package found from the bundle)', async () => {
    const model = join(MODELS, 'qwen3-moe-tiny-modelopt');
    const a = cli(['convert', model, '-o', join(dir, 'a'), '--json', '--device', 'cpu']);
    const b = cli(['convert', model, '-o', join(dir, 'b'), '--json', '--device', 'cpu'], dist);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    const files = JSON.parse(await readFile(join(dir, 'a', 'marlin_fp4_manifest.json'), 'utf8')).files;
    expect(JSON.parse(await readFile(join(dir, 'b', 'marlin_fp4_manifest.json'), 'utf8')).files).toEqual(files);
  });
});
