// Byte-level comparisons behind verify's messages: how many bytes differ and where first,
// a byte as hex.

export function diffBytes(a: Uint8Array, b: Uint8Array): { count: number; first: number } {
  const n = Math.min(a.length, b.length);
  if (a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length))) {
    return { count: 0, first: -1 };
  }
  let count = Math.abs(a.length - b.length);
  let first = -1;
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) {
      if (first < 0) first = i;
      count++;
    }
  }
  if (first < 0) first = n;
  return { count, first };
}

export const hex = (v: number | undefined) => (v === undefined ? 'none' : `0x${v.toString(16).padStart(2, '0')}`);
