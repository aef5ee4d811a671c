import { expect } from 'vitest';

/** Byte-for-byte equality; on mismatch reports the first differing offset (toEqual on MBs is slow). */
export function expectBytes(actual: Uint8Array, expected: Uint8Array, what = 'bytes'): void {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (a.equals(b)) return;
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  expect.fail(`${what}: lengths ${a.length} vs ${b.length}, first difference at byte ${i} (0x${a[i]?.toString(16)} vs 0x${b[i]?.toString(16)})`);
}
