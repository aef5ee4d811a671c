// Bias vectors as Marlin takes them (FORMAT.md section 4's bias row, section 5.1 step 5):
// cast to bfloat16 where MXFP4 wants it, zero-padded to the padded N and permuted within
// chunks of 32 (vLLM's marlin_permute_bias).
import type { Dtype } from '../safetensors/index.js';

/** Output element i of every 32 takes input element BIAS_PERM[i] of the same chunk. */
export const BIAS_PERM: readonly number[] = Object.freeze([0, 1, 2, 3].flatMap((i) => [0, 1, 8, 9, 16, 17, 24, 25].map((j) => 2 * i + j)));

/**
 * The permuted, zero-padded bias of `n` elements of `size` bytes each, `np` long (np a
 * multiple of 32), written into `out` at element offset `at`.
 */
export function permuteBias(src: Uint8Array, n: number, np: number, size: number, out: Uint8Array, at = 0): void {
  for (let i = 0; i < np; i++) {
    const from = Math.floor(i / 32) * 32 + BIAS_PERM[i % 32]!;
    const to = (at + i) * size;
    // Elements past N are padding: zero.
    if (from < n) out.set(src.subarray(from * size, (from + 1) * size), to);
    else out.fill(0, to, to + size);
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function halfToFloat(h: number): number {
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  const v = e === 0 ? m * 2 ** -24 : e === 31 ? (m ? NaN : Infinity) : (1 + m / 1024) * 2 ** (e - 15);
  return h & 0x8000 ? -v : v;
}

/** bfloat16 bits of an fp32 value, rounded to nearest even (torch's `.to(torch.bfloat16)`); NaN stays NaN. */
function bf16Bits(v: number): number {
  if (Number.isNaN(v)) return 0x7fc0;
  f32[0] = v;
  const x = u32[0]!;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** A BF16, F16 or F32 vector as bfloat16 bytes (BF16 is returned as it is). */
export function toBf16(src: Uint8Array, dtype: Dtype): Uint8Array {
  if (dtype === 'BF16') return src;
  const view = Buffer.from(src.buffer, src.byteOffset, src.byteLength);
  const count = dtype === 'F32' ? src.length / 4 : src.length / 2;
  const out = Buffer.alloc(2 * count);
  for (let i = 0; i < count; i++) {
    const v = dtype === 'F32' ? view.readFloatLE(4 * i) : halfToFloat(view.readUInt16LE(2 * i));
    out.writeUInt16LE(bf16Bits(v), 2 * i);
  }
  return out;
}
