// CPU implementation of the MXFP4 scale transform (FORMAT.md 5.1) and its inverse, over
// mxfp4_layout.h's index math. Parts are concatenated along N, each zero-padded to its np.
#pragma once
#include <cstdint>
#include <vector>

#include "transforms_cpu.h"

namespace mfp4 {

struct Mxfp4ScalePart {
  const uint8_t* data;  // U8 E8M0 [n, k/32]
  int64_t n;
  int64_t np;  // padded rows, a multiple of 64
};

// Shape rules shared by both backends; throw InvalidInput with the reason.
void check_mxfp4_shapes(int64_t n, int64_t np, int64_t k, int64_t kp);

// Processed scales of parts concatenated along N: rows [row_begin, row_end) of kp/32 rows of
// sum(np) bytes each, the first at dst. Padding is byte 0x00.
void process_mxfp4_scales(const std::vector<Mxfp4ScalePart>& parts, int64_t k, int64_t kp, uint8_t* dst, int threads,
                          int64_t row_begin = 0, int64_t row_end = -1);

// Inverse for one part that starts at column col_offset of src (rows total_np wide): U8
// [n, k/32] into dst. Returns the non-zero bytes found in this part's padding.
int64_t decode_mxfp4_scales(const uint8_t* src, int64_t total_np, int64_t col_offset, int64_t n, int64_t np, int64_t k,
                            int64_t kp, uint8_t* dst, int threads);

}  // namespace mfp4
