// fixtures/golden is a committed copy of ../shared/golden (so a fresh clone can test);
// where ../shared is present, the copy must be identical to it.
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { GOLDEN_DIR } from './helpers/golden.js';

const SHARED = join(GOLDEN_DIR, '..', '..', '..', 'shared', 'golden');
const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

describe('fixtures/golden', () => {
  it('holds the three golden files and their README', () => {
    expect(readdirSync(GOLDEN_DIR).sort()).toEqual([
      'README.md',
      'dense_large.safetensors',
      'dense_small.safetensors',
      'moe.safetensors',
    ]);
  });

  it.skipIf(!existsSync(SHARED))('is identical to ../shared/golden (skipped: no ../shared beside this clone)', () => {
    for (const f of readdirSync(SHARED)) expect(sha(join(GOLDEN_DIR, f)), f).toBe(sha(join(SHARED, f)));
    expect(readdirSync(GOLDEN_DIR).sort()).toEqual(readdirSync(SHARED).sort());
  });
});
