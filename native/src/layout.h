// Index math of the Marlin FP4 layout (FORMAT.md sections 2-4), shared by the CPU and
// CUDA backends so that both are derived from one statement of the contract.
#pragma once
#include <cstdint>
#include "fp_formats.h"

namespace mfp4 {

enum class Layout : int { V1 = 1, V2 = 2 };
enum class ActDtype : int { F16 = 0, BF16 = 1 };

constexpr int64_t kTileN = 64;       // columns of N in one permutation chunk
constexpr int64_t kGroup = 16;       // NVFP4 group size along K
constexpr int64_t kWordsPerChunk = 128;  // one chunk of one K/16 row: 1024 codes = 128 words

MFP4_HD int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// K/16 rows of block scales in one "unit" of processed scales (FORMAT.md section 3): layout v1
// pairs scale rows (so its K must be a multiple of 32 and its row ranges even), v2 takes them
// one at a time.
MFP4_HD constexpr int scale_unit_rows(Layout layout) { return layout == Layout::V1 ? 2 : 1; }

// Bytes of the processed global scale (FORMAT.md section 4): F16/BF16 under v1, F32 under v2.
MFP4_HD constexpr int global_scale_bytes(Layout layout) { return layout == Layout::V1 ? 2 : 4; }

// (Np, Kp) of layout v2 for an N x K weight (FORMAT.md section 4): N padded to 64 and K to
// 128, or N to 128 and K to 64, whichever pads less (the smaller sum on a tie).
MFP4_HD void pad_shape_v2(int64_t n, int64_t k, int64_t& np, int64_t& kp) {
  const int64_t n1 = round_up(n, 64), k1 = round_up(k, 128);
  const int64_t n2 = round_up(n, 128), k2 = round_up(k, 64);
  const int64_t a1 = n1 * k1, a2 = n2 * k2;
  if (a1 < a2 || (a1 == a2 && n1 + k1 <= n2 + k2)) {
    np = n1, kp = k1;
  } else {
    np = n2, kp = k2;
  }
}

// Builds Marlin word (t, j) of a 16x64 tile from the four bytes that hold its eight codes:
// a/b = bytes (t%4) and 4+(t%4) of row n (k = 2q,2q+1 and 2q+8,2q+9), c/d = same of row n+8.
// Nibble order of the word: (n,2q) (n,2q+8) (n+8,2q) (n+8,2q+8) then the odd k's likewise.
MFP4_HD uint32_t pack_marlin_word(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  const uint32_t x = a | (b << 8) | (c << 16) | (d << 24);
  uint32_t lo = x & 0x0F0F0F0Fu, hi = (x >> 4) & 0x0F0F0F0Fu;
  lo = (lo | (lo >> 4)) & 0x00FF00FFu;
  hi = (hi | (hi >> 4)) & 0x00FF00FFu;
  lo = (lo | (lo >> 8)) & 0xFFFFu;
  hi = (hi | (hi >> 8)) & 0xFFFFu;
  return lo | (hi << 16);
}

// Inverse of pack_marlin_word: recovers the four source bytes.
MFP4_HD void unpack_marlin_word(uint32_t w, uint32_t& a, uint32_t& b, uint32_t& c, uint32_t& d) {
  const uint32_t lo = w & 0xFFFFu, hi = w >> 16;
  a = (lo & 0xF) | ((hi & 0xF) << 4);
  b = ((lo >> 4) & 0xF) | (((hi >> 4) & 0xF) << 4);
  c = ((lo >> 8) & 0xF) | (((hi >> 8) & 0xF) << 4);
  d = ((lo >> 12) & 0xF) | (((hi >> 12) & 0xF) << 4);
}

// Scale permutation inside a 64-column chunk (an 8x8 transpose).
MFP4_HD int64_t scale_perm64(int64_t p) { return p / 8 + 8 * (p % 8); }

// For byte i of one "unit" of processed scales (a row under v2, a row pair under v1, of a
// part that is np columns wide), which transposed scale (row dg of the unit, column n)
// lands there. Composes steps 2-4 of FORMAT.md section 3.
MFP4_HD void scale_source(int64_t i, int64_t np, Layout layout, int64_t& dg, int64_t& n) {
  const int64_t reorder4[4] = {0, 2, 1, 3};
  const int64_t i4 = (i & ~int64_t(3)) + reorder4[i & 3];
  int64_t col;
  if (layout == Layout::V1) {
    dg = (i4 % 16) / 8;
    col = (i4 / 16) * 8 + (i4 % 8);
  } else {
    dg = 0;
    col = i4;
  }
  (void)np;
  n = (col / kTileN) * kTileN + scale_perm64(col % kTileN);
}

MFP4_HD int exponent_bias(ActDtype dt) { return dt == ActDtype::BF16 ? 126 : 14; }

// One processed scale byte (S0E5M3) from an E4M3 byte that is known non-negative and not NaN.
// v2 zeroes values whose scaled half is below 2 (E4M3 below 2^-6 when sf = 1).
MFP4_HD uint8_t encode_scale(uint8_t e4m3, Layout layout, float sf) {
  const float v = e4m3_to_float(e4m3) * sf * 128.0f;
  if (layout == Layout::V2 && v < 2.0f) return 0;
  const uint32_t h = float_to_half_bits(v);
  return (uint8_t)(((h << 1) >> 8) & 0xFF);
}

// v2's scale factor (FORMAT.md section 4): under bfloat16, the largest power of two with
// max * sf <= 448 for the largest block scale (its E4M3 byte); otherwise 1.
MFP4_HD float scale_factor_for(uint8_t max_byte, Layout layout, ActDtype dt) {
  if (layout != Layout::V2 || dt != ActDtype::BF16) return 1.0f;
  const float mx = e4m3_to_float(max_byte);
  if (!(mx > 0.0f)) return 1.0f;  // all-zero scales: nothing to rescale
  float sf = 1.0f;
  while (mx * sf * 2.0f <= 448.0f) sf *= 2.0f;
  return sf;
}

// Whether a non-zero, non-negative block scale (E4M3 byte b) becomes 0 in the output.
MFP4_HD bool scale_is_lost(uint8_t b, Layout layout, float sf) {
  return b < 0x80 && e4m3_to_float(b) > 0.0f && encode_scale(b, layout, sf) == 0;
}

}  // namespace mfp4
