// Index math and scale values of MXFP4 for Marlin (FORMAT.md section 5), host/device, shared
// by the CPU and CUDA transforms (mxfp4_cpu.cc, mxfp4_cuda.cu) and both GEMMs, so that every
// backend is derived from one statement of the rule. The weights are NVFP4's (layout.h).
#pragma once
#include <cstdint>

#include "fp_formats.h"
#include "layout.h"

namespace mfp4 {

constexpr int64_t kMxGroup = 32;  // MXFP4 group size along K: one E8M0 scale per 32 weights

// marlin_permute_scales uses its "single" permutation (chunks of 32) when the group is not
// smaller than K, i.e. for a single group (FORMAT.md 5.1 step 2); kp is the padded K.
MFP4_HD bool mxfp4_single(int64_t kp) { return kp <= kMxGroup; }

// The single permutation (also the bias permutation of FORMAT.md section 4): position p of a
// 32-chunk takes element 2*(p/8) + {0,1,8,9,16,17,24,25}[p%8].
MFP4_HD int64_t perm_single32(int64_t p) {
  const int64_t off[8] = {0, 1, 8, 9, 16, 17, 24, 25};
  return 2 * (p / 8) + off[p % 8];
}

// Which column of a transposed scale row lands at position i of the processed row (both
// within one part): reorder by 4 ([0, 2, 1, 3]) after the 64-column 8x8 transpose (or the
// single permutation). The processed scales are a pure byte permutation of the source
// (5.1 step 3), so this is the whole transform.
MFP4_HD int64_t mxfp4_scale_column(int64_t i, bool single) {
  const int64_t reorder4[4] = {0, 2, 1, 3};
  const int64_t i4 = (i & ~int64_t(3)) + reorder4[i & 3];
  return single ? (i4 / 32) * 32 + perm_single32(i4 % 32) : (i4 / kTileN) * kTileN + scale_perm64(i4 % kTileN);
}

// What Marlin's bfloat16 E8M0 decoder makes of a stored byte (5.1 step 4): bfloat16 bits
// b << 7, so 0x00 is +0.0, 0xFF is +inf, anything else 2^(b-127).
MFP4_HD float mxfp4_kernel_scale(uint8_t b) { return bits_float((uint32_t)b << 23); }

// The source's value of an E8M0 byte (PyTorch's Float8_e8m0fnu): 2^(b-127), byte 0 is
// 2^-127 (an fp32 subnormal), 0xFF NaN.
MFP4_HD float e8m0_to_float(uint8_t b) {
  if (b == 0) return bits_float(0x00400000u);
  if (b == 0xFF) return bits_float(0x7FC00000u);
  return bits_float((uint32_t)b << 23);
}

}  // namespace mfp4
