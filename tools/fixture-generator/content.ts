// Tensor content of the synthetic checkpoints: deterministic byte streams (AES-128-CTR
// keyed by the seed, one IV per tensor label) and the packed codes, block scales and BF16
// values drawn from them, generated chunk by chunk so that a tensor of any size streams.
import { createCipheriv, createHash } from 'node:crypto';

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error('the fixture generator assumes a little-endian machine');

export const GROUP_SIZE = 16;
/** A (row, group) block is a "zero block" when its mask byte is below this: 13/256 ≈ 5.1%. */
export const ZERO_BLOCK_THRESHOLD = 13;

/** What a quantized linear's content depends on (never the chunk size: that only splits it). */
export interface LinearContent {
  seed: number;
  label: string;
  n: number;
  k: number;
  zeroBlocks: boolean;
  chunkBytes: number;
}

export type Bf16Kind = 'weight' | 'norm';

// ---------------------------------------------------------------------------------------
// Deterministic byte streams

const ZEROS = { buf: Buffer.alloc(0) };

function zeros(n: number): Buffer {
  if (ZEROS.buf.length < n) ZEROS.buf = Buffer.alloc(Math.max(n, 1 << 16));
  return ZEROS.buf.subarray(0, n);
}

function seedKey(seed: number): Buffer {
  return createHash('sha256').update(`marlin-fp4 fixtures/seed=${seed}`).digest().subarray(0, 16);
}

/** A keystream of pseudo-random bytes, identified by (seed, label); read front to back. */
export function byteStream(seed: number, label: string): { next(n: number): Buffer } {
  const iv = createHash('sha256').update(label).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', seedKey(seed), iv);
  return { next: (n: number) => cipher.update(zeros(n)) };
}

export function seedOffset(seed: number, len: number): number {
  return createHash('sha256').update(`marlin-fp4 fixtures/scales/seed=${seed}`).digest().readUInt32LE(0) % len;
}

// ---------------------------------------------------------------------------------------
// Tensor content

/** Packed E2M1 codes [N, K/2]; zero blocks get all-zero codes. */
export function* codeChunks({ seed, label, n, k, zeroBlocks, chunkBytes }: LinearContent): Generator<Buffer> {
  const rowBytes = k / 2;
  const groups = k / GROUP_SIZE;
  const rowsPer = Math.max(1, Math.floor(chunkBytes / rowBytes));
  const codes = byteStream(seed, `${label}/codes`);
  const mask = zeroBlocks ? byteStream(seed, `${label}/zero-blocks`) : null;
  for (let r = 0; r < n; r += rowsPer) {
    const rows = Math.min(rowsPer, n - r);
    const buf = codes.next(rows * rowBytes);
    if (mask) {
      // Block b of the chunk (row b/groups, group b%groups) is bytes [8b, 8b+8): a row is
      // exactly `groups` blocks of 8 bytes.
      const m = mask.next(rows * groups);
      for (let b = 0; b < m.length; b++) if (m[b]! < ZERO_BLOCK_THRESHOLD) buf.fill(0, 8 * b, 8 * b + 8);
    }
    yield buf;
  }
}

/** E4M3 block scales [N, K/16]: bytes 0x20..0x5F (2^-3 .. 30), or 0x00 for zero blocks. */
export function* blockScaleChunks({ seed, label, n, k, zeroBlocks, chunkBytes }: LinearContent): Generator<Buffer> {
  const groups = k / GROUP_SIZE;
  const rowsPer = Math.max(1, Math.floor(chunkBytes / groups));
  const scales = byteStream(seed, `${label}/block-scales`);
  const mask = zeroBlocks ? byteStream(seed, `${label}/zero-blocks`) : null;
  for (let r = 0; r < n; r += rowsPer) {
    const rows = Math.min(rowsPer, n - r);
    const buf = scales.next(rows * groups);
    const m = mask ? mask.next(rows * groups) : null;
    for (let i = 0; i < buf.length; i++) buf[i] = m && m[i]! < ZERO_BLOCK_THRESHOLD ? 0 : 0x20 + (buf[i]! & 0x3f);
    yield buf;
  }
}

/**
 * BF16 values, little-endian. 'weight': random sign, magnitude 2^-9 .. 2^-3 (embedding /
 * router-like); 'norm': positive, 0.5 .. 2 (RMSNorm-like). Each element takes a random
 * 16-bit word u: the table maps its high byte to sign and exponent, its low 7 bits stay
 * as the mantissa.
 */
const BF16_TABLES = (() => {
  const make = (kind: Bf16Kind) => {
    const t = new Uint16Array(256);
    for (let r = 0; r < 256; r++) {
      const exp = kind === 'norm' ? 126 + (r & 1) : 118 + ((r & 0x7f) % 6);
      const sign = kind === 'norm' ? 0 : (r & 0x80) << 8;
      t[r] = sign | (exp << 7);
    }
    return t;
  };
  return { weight: make('weight'), norm: make('norm') };
})();

export function* bf16Chunks({ seed, label, elements, kind, chunkBytes }: { seed: number; label: string; elements: number; kind: Bf16Kind; chunkBytes: number }): Generator<Buffer> {
  const per = Math.max(1, Math.floor(chunkBytes / 2));
  const table = BF16_TABLES[kind];
  const s = byteStream(seed, `${label}/bf16`);
  for (let done = 0; done < elements; done += per) {
    let buf = s.next(2 * Math.min(per, elements - done));
    if (buf.byteOffset % 2 !== 0) buf = Buffer.from(buf); // a Uint16Array view needs alignment
    // Native byte order is little-endian (checked at load), so the view is the file layout.
    const u = new Uint16Array(buf.buffer, buf.byteOffset, buf.length / 2);
    for (let i = 0; i < u.length; i++) {
      const w = u[i]!;
      u[i] = table[w >> 8]! | (w & 0x7f);
    }
    yield buf;
  }
}

export function* f32Scalar(value: number): Generator<Buffer> {
  const b = Buffer.alloc(4);
  b.writeFloatLE(value, 0);
  yield b;
}

