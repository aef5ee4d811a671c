// The MXFP4 scale transform and its inverse on the CUDA device (host buffers in and out),
// the same bytes as mxfp4_cpu.h: both take every byte's place from mxfp4_layout.h. Plain
// C++ declarations, so the bindings compile with the host compiler alone.
#pragma once
#include <cstdint>
#include <vector>

#include "mxfp4_cpu.h"

namespace mfp4 {
namespace cuda {

// experts[e] = the parts of expert e; dst receives [E][rows][sum(np)] for rows
// [row_begin, row_end) of kp/32.
void process_mxfp4_scales_stack(const std::vector<std::vector<Mxfp4ScalePart>>& experts, int64_t k, int64_t kp, uint8_t* dst,
                                int64_t row_begin, int64_t row_end);

int64_t decode_mxfp4_scales(const uint8_t* src, int64_t total_np, int64_t col_offset, int64_t n, int64_t np, int64_t k,
                            int64_t kp, uint8_t* dst);

}  // namespace cuda
}  // namespace mfp4
