// A literal, slow transcription of FORMAT.md sections 2 and 3 (tile, permute, pack; transpose,
// permute, interleave, reorder, encode). It shares no code with the native addon, so tests can
// check the addon on shapes the golden files do not cover.

function marlinPerm(): number[] {
  const perm: number[] = [];
  for (let t = 0; t < 32; t++) {
    const col = Math.floor(t / 4);
    const rows = [2 * (t % 4), 2 * (t % 4) + 1, 2 * (t % 4) + 8, 2 * (t % 4) + 9];
    const list: number[] = [];
    for (const block of [0, 1]) for (const row of rows) list.push(16 * row + col + 8 * block);
    for (const add of [0, 256, 512, 768]) perm.push(...list.map((v) => v + add));
  }
  const order = [0, 2, 4, 6, 1, 3, 5, 7];
  const out: number[] = [];
  for (let i = 0; i < perm.length; i += 8) for (const o of order) out.push(perm[i + o]!);
  return out;
}

const PERM = marlinPerm();

/** Code (n, k) of an NVFP4 weight U8 [n, k/2]; zero outside [n, k] (padding). */
function code(w: Uint8Array, n: number, k: number, N: number, K: number): number {
  if (n >= N || k >= K) return 0;
  const byte = w[n * (K / 2) + (k >> 1)]!;
  return k % 2 === 0 ? byte & 0xf : byte >> 4;
}

export function specRepack(w: Uint8Array, N: number, K: number, Np: number, Kp: number): Buffer {
  const rows = Kp / 16;
  const out = Buffer.alloc(rows * 2 * Np * 4);
  for (let r = 0; r < rows; r++) {
    const tiled = new Array<number>(16 * Np);
    for (let kk = 0; kk < 16; kk++) {
      for (let n = 0; n < Np; n++) {
        tiled[Math.floor(n / 16) * 256 + kk * 16 + (n % 16)] = code(w, n, 16 * r + kk, N, K);
      }
    }
    const permuted = new Array<number>(16 * Np);
    for (let c = 0; c < Np / 64; c++) for (let i = 0; i < 1024; i++) permuted[c * 1024 + i] = tiled[c * 1024 + PERM[i]!]!;
    for (let wd = 0; wd < 2 * Np; wd++) {
      let word = 0;
      for (let t = 0; t < 8; t++) word |= permuted[8 * wd + t]! << (4 * t);
      out.writeUInt32LE(word >>> 0, (r * 2 * Np + wd) * 4);
    }
  }
  return out;
}

function e4m3(b: number): number {
  const sign = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 0xf;
  const m = b & 7;
  return sign * (e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7));
}

/** float16 bit pattern of v (exact for the values the tests use). */
function halfBits(v: number): number {
  const f = new Float32Array([v]);
  const x = new Uint32Array(f.buffer)[0]!;
  const e = ((x >> 23) & 0xff) - 127 + 15;
  const m = x & 0x7fffff;
  if (v === 0) return 0;
  if (e <= 0) return Math.round((m | 0x800000) * 2 ** (e - 1 - 23 + 10));
  return (e << 10) | (m >> 13);
}

export function specScales(
  s: Uint8Array,
  N: number,
  K: number,
  Np: number,
  Kp: number,
  layout: 'v1' | 'v2',
  sf: number,
): Buffer {
  const G = K / 16;
  const Gp = Kp / 16;
  // 1. transpose (+ zero padding)
  let m: number[][] = [];
  for (let g = 0; g < Gp; g++) {
    const row: number[] = [];
    for (let n = 0; n < Np; n++) row.push(g < G && n < N ? e4m3(s[n * G + g]!) : 0);
    m.push(row);
  }
  // 2. permute within 64 columns
  m = m.map((row) => row.map((_, col) => row[Math.floor(col / 64) * 64 + (Math.floor((col % 64) / 8) + 8 * (col % 8))]!));
  // 3. v1 pair interleave
  let flat: number[] = [];
  if (layout === 'v1') {
    for (let h = 0; h < Gp / 2; h++)
      for (let b = 0; b < Np / 8; b++) for (let sr = 0; sr < 2; sr++) for (let e = 0; e < 8; e++) flat.push(m[2 * h + sr]![8 * b + e]!);
  } else {
    flat = m.flat();
  }
  // 4. reorder by 4
  const order = [0, 2, 1, 3];
  const re = flat.map((_, i) => flat[4 * Math.floor(i / 4) + order[i % 4]!]!);
  // 5. encode
  return Buffer.from(
    re.map((v) => {
      const x = v * sf * 128;
      if (layout === 'v2' && x < 2) return 0;
      return ((halfBits(x) << 1) >> 8) & 0xff;
    }),
  );
}

/** FORMAT.md section 4, v2 under bfloat16: the largest power of two with max(v) * sf <= 448 over the whole tensor; 1 otherwise. */
export function specScaleFactor(s: Uint8Array, layout: 'v1' | 'v2', dtype: 'float16' | 'bfloat16'): number {
  if (layout !== 'v2' || dtype !== 'bfloat16') return 1;
  let max = 0;
  for (const b of s) max = Math.max(max, e4m3(b));
  if (max === 0) return 1; // all-zero scales: nothing to rescale
  let sf = 1;
  while (max * sf * 2 <= 448) sf *= 2;
  return sf;
}

/** FORMAT.md section 4, v2: the processed global scale float32(ws2) * 2^(bias-7) / sf, as F32 bytes. */
export function specGlobalV2(ws2: number, dtype: 'float16' | 'bfloat16', sf: number): Buffer {
  const bias = dtype === 'float16' ? 14 : 126;
  const b = Buffer.alloc(4);
  b.writeFloatLE((Math.fround(ws2) * 2 ** (bias - 7)) / sf);
  return b;
}

/**
 * FORMAT.md section 8: a block scale re-encoded onto another global, s * own / shared rounded to
 * the nearest E4M3 value, ties to the even byte; found by trying every byte.
 */
export function specReencode(s: Uint8Array, own: number, shared: number): Buffer {
  return Buffer.from(
    Array.from(s, (b) => {
      const x = (e4m3(b) * own) / shared;
      let best = 0;
      for (let c = 1; c < 0x7f; c++) {
        const d = Math.abs(e4m3(c) - x);
        const bd = Math.abs(e4m3(best) - x);
        if (d < bd || (d === bd && c % 2 === 0 && best % 2 === 1)) best = c;
      }
      return best;
    }),
  );
}
