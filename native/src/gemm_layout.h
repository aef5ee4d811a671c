// What a GEMM needs to read the Marlin FP4 layout directly (FORMAT.md sections 2-4): where each
// nibble of a packed word comes from, what a processed scale byte and a processed global scale
// are worth. Host/device, shared by gemm_cpu.cc and gemm_cuda.cu; the scale permutation itself
// is layout.h's scale_source.
#pragma once
#include <cstdint>

#include "fp_formats.h"
#include "layout.h"

namespace mfp4 {

// Nibble i (bits 4i..4i+3) of word wi (0..127) of one 64-column chunk of one K/16 row: the code
// of column 64c + dn and row 16r + dk. This is unpack_marlin_word read element by element: word
// wi = (n8*4 + q)*4 + j belongs to thread t = wi/4 = 4*n8 + q of the mma.sync m16n8k16 B
// fragment of the 16-column block j, which owns n in {n8, n8+8} and k in {2q, 2q+1, 2q+8, 2q+9};
// the word holds (n,2q) (n,2q+8) (n+8,2q) (n+8,2q+8) then the same with k+1.
MFP4_HD void marlin_nibble_source(int wi, int i, int& dn, int& dk) {
  const int j = wi & 3, q = (wi >> 2) & 3, n8 = wi >> 4;
  dn = 16 * j + n8 + 8 * ((i >> 1) & 1);
  dk = 2 * q + 8 * (i & 1) + (i >> 2);
}

// Value of a processed (S0E5M3) scale byte: v * sf, with v the E4M3 block scale it encodes
// (FORMAT.md section 3, step 5: v = half_from_bits(B << 7) / 128). v2's zeroed scales give 0.
MFP4_HD float marlin_scale_value(uint8_t b) { return half_bits_to_float((uint16_t)((uint32_t)b << 7)) * (1.0f / 128.0f); }

// The multiplier the processed global scale stands for once the kernel's 2^(bias-7) is taken
// out: v1 gives weight_scale_2 rounded to the activation dtype, v2 gives weight_scale_2 / sf.
// bits: the stored bytes (F16/BF16 under v1, F32 under v2), little-endian.
MFP4_HD float marlin_global_value(uint32_t bits, Layout layout, ActDtype dt) {
  float v;
  if (layout == Layout::V2) v = bits_float(bits);
  else v = dt == ActDtype::F16 ? half_bits_to_float((uint16_t)bits) : bf16_bits_to_float((uint16_t)bits);
  // 2^-(bias-7) as an exact power of two: 2^-7 (float16) or 2^-119 (bfloat16).
  const float inv = dt == ActDtype::F16 ? bits_float((127u - 7u) << 23) : bits_float((127u - 119u) << 23);
  return v * inv;
}

// An activation element (raw float16 / bfloat16 bits) as float.
MFP4_HD float act_value(uint16_t bits, ActDtype dt) {
  return dt == ActDtype::F16 ? half_bits_to_float(bits) : bf16_bits_to_float(bits);
}

}  // namespace mfp4
