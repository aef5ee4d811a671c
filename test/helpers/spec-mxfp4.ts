// A literal, slow transcription of FORMAT.md section 5 (MXFP4 for 16-bit activations): the
// E8M0 scale bytes padded with 0x00, transposed, read as E8M0 (PyTorch's rule), converted to
// bfloat16, permuted in chunks of 64 columns (or, for a single group, chunks of 32 with the
// single permutation), reordered by 4 and converted back to E8M0 (PyTorch's round-to-nearest-
// even rule on the fp32 bits). It goes through the floating-point values step by step, as vLLM
// does, and shares no code with the native addon (which treats the result as a byte
// permutation). Also section 5.1 step 4 (what the kernel reads) and the gpt-oss padding of 5.2.

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const bitsOf = (v: number) => ((f32[0] = v), u32[0]!);
const fromBits = (b: number) => ((u32[0] = b >>> 0), f32[0]!);

/** PyTorch Float8_e8m0fnu -> float: byte 0 is 2^-127 (fp32 0x00400000), 0xFF NaN, else b << 23. */
export function e8m0ToFloat(b: number): number {
  if (b === 0) return fromBits(0x00400000);
  if (b === 0xff) return fromBits(0x7f800001);
  return fromBits(b << 23);
}

/** float -> bfloat16 bits, round to nearest even (NaN stays a NaN). */
export function floatToBf16Bits(v: number): number {
  const x = bitsOf(v);
  if (Number.isNaN(v)) return 0x7fc0;
  const lsb = (x >>> 16) & 1;
  return ((x + 0x7fff + lsb) >>> 16) & 0xffff;
}

export const bf16BitsToFloat = (h: number): number => fromBits(h << 16);

/** PyTorch fp8e8m0fnu_from_fp32_value: exponent field, RNE on guard/round/sticky, NaN/inf -> 0xFF. */
export function floatToE8m0(v: number): number {
  const x = bitsOf(v);
  let exponent = (x >>> 23) & 0xff;
  if (exponent === 0xff) return 0xff;
  const g = (x & 0x400000) !== 0;
  const r = (x & 0x200000) !== 0;
  const s = (x & 0x1fffff) !== 0;
  const lsb = exponent > 0;
  if (g && (r || s || lsb)) exponent++;
  return exponent;
}

/** The single permutation (chunks of 32) of vLLM's marlin_permute_scales / the bias rule. */
const SINGLE = [0, 1, 2, 3].flatMap((i) => [0, 1, 8, 9, 16, 17, 24, 25].map((j) => 2 * i + j));

/**
 * Processed MXFP4 scales (FORMAT.md 5.1 step 2) of one linear: input U8 [N, K/32], output
 * [Kp/32, Np] bytes. Kp and Np are the padded sizes; padding is byte 0x00.
 */
export function specMxfp4Scales(s: Uint8Array, N: number, K: number, Np: number, Kp: number): Buffer {
  const G = K / 32;
  const Gp = Kp / 32;
  // Pad with zero bytes, transpose to [Gp, Np], read as E8M0, convert to bfloat16.
  const m: number[][] = [];
  for (let g = 0; g < Gp; g++) {
    const row: number[] = [];
    for (let n = 0; n < Np; n++) row.push(floatToBf16Bits(e8m0ToFloat(g < G && n < N ? s[n * G + g]! : 0)));
    m.push(row);
  }
  // Permute: group_size (32) < size_k (Kp) -> 64-column 8x8 transpose; else the single permutation.
  let flat: number[];
  if (32 < Kp) {
    flat = m.flatMap((row) => row.map((_, col) => row[Math.floor(col / 64) * 64 + (Math.floor((col % 64) / 8) + 8 * (col % 8))]!));
  } else {
    flat = m.flat();
    flat = flat.map((_, i) => flat[Math.floor(i / 32) * 32 + SINGLE[i % 32]!]!);
  }
  // Reorder by 4, then back to E8M0 from the bfloat16 value.
  const order = [0, 2, 1, 3];
  return Buffer.from(flat.map((_, i) => floatToE8m0(bf16BitsToFloat(flat[4 * Math.floor(i / 4) + order[i % 4]!]!))));
}

/** What Marlin's bfloat16 E8M0 decoder makes of a stored byte (5.1 step 4): bits b << 7. */
export function kernelScaleValue(b: number): number {
  return bf16BitsToFloat(b << 7);
}

/** Bias of one linear or one expert (5.1 step 5): cast (already bf16 bits here), zero-padded to Np, permuted in chunks of 32. */
export function specBias(bias: Uint16Array, N: number, Np: number): Uint16Array {
  const padded = new Uint16Array(Np);
  padded.set(bias.subarray(0, N));
  return padded.map((_, i) => padded[Math.floor(i / 32) * 32 + SINGLE[i % 32]!]!);
}

/** gpt-oss Marlin padding (5.2): Ip = roundup(I, 128), Hp = roundup(H, 256). */
export function gptOssPadded(hidden: number, intermediate: number): { hp: number; ip: number } {
  return { hp: Math.ceil(hidden / 256) * 256, ip: Math.ceil(intermediate / 128) * 128 };
}

/**
 * The top-left-corner copy of 5.2: rows [N, cols] of `bytesPerCol`-byte elements into a zero
 * [Np, colsP] matrix (weights: cols = K/2 bytes; scales: K/32).
 */
export function padCorner(src: Uint8Array, rows: number, cols: number, rowsP: number, colsP: number): Buffer {
  const out = Buffer.alloc(rowsP * colsP);
  for (let r = 0; r < rows; r++) out.set(src.subarray(r * cols, (r + 1) * cols), r * colsP);
  return out;
}
