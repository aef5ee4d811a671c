// A signal during convert: the handler (src/cli/main.ts) waits for the native calls in flight
// before it removes the staged output, and the conversion keeps running meanwhile. On a fast
// machine it used to reach its commit in that window (the output then stayed after an
// interrupted run) or read a file of the directory being removed (an "internal error" after
// "interrupted"). Once abandoned, no staged output may be moved into place. Its own file: the
// abandoned state is the process's, for good.
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { abandonStagedOutputs, liveStagedOutputs, stageOutput } from '../src/convert/output-dir.js';
import { EnvironmentError } from '../src/errors.js';
import { MODELS, tempDir } from './helpers/models.js';

const LLAMA = join(MODELS, 'llama-tiny-modelopt');
let work: string;
beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('staged outputs after a signal', () => {
  it('are handed to the handler, refuse to commit (with and without --force) and leave the old output alone', async () => {
    const fresh = join(work, 'fresh');
    const replaced = join(work, 'replaced');
    await mkdir(replaced);
    await writeFile(join(replaced, 'who'), 'old');
    const a = await stageOutput(fresh, [LLAMA], { force: false });
    const b = await stageOutput(replaced, [LLAMA], { force: true });
    await writeFile(join(a.tmp, 'who'), 'a');
    await writeFile(join(b.tmp, 'who'), 'b');

    const handed = abandonStagedOutputs();
    expect(new Set(handed)).toEqual(new Set([a, b]));

    await expect(a.commit()).rejects.toThrow(EnvironmentError);
    await expect(a.commit()).rejects.toThrow(`${fresh}: not moved into place: the run was interrupted`);
    await expect(b.commit()).rejects.toThrow(`${replaced}: not moved into place: the run was interrupted`);
    expect(existsSync(fresh)).toBe(false);
    expect(await readFile(join(replaced, 'who'), 'utf8')).toBe('old');

    await Promise.all(handed.map((s) => s.discard()));
    expect(liveStagedOutputs()).toEqual([]);
    expect((await readdir(work)).sort()).toEqual(['replaced']);
  });
});
