// Device-pointer API of the CUDA backend: kernels of FORMAT.md sections 2-3 derived from
// layout.h (pack_marlin_word, unpack_marlin_word, scale_source, encode_scale), launched on
// a caller's stream. Nothing here synchronizes or allocates; launch errors throw CudaError.
//
// Source tensors on the device are "stacks": part p of expert e is a row-major matrix of
// n rows, `pitch` bytes apart, starting at data + e * expert_stride. A source may hold only
// the first `rows_real` K-blocks of every row (a slice along K: pass the slice's first
// block as the row start); the outputs' rows [rows_real, rows) are K padding.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "layout.h"
#include "transforms_cuda.h"

namespace mfp4 {
namespace cuda {

// K-blocks (output rows) per repack and unpack tile: host code slices K in multiples of it.
constexpr int kRepackRows = 16;

struct DevPart {
  const uint8_t* data;    // row 0 of expert 0
  int64_t expert_stride;  // bytes between experts
  int64_t pitch;          // bytes between rows
  int64_t n;              // rows with data
  int64_t np;             // padded rows (a multiple of 64); rows n..np-1 read as zeros
};

// Weight repack of one part for `experts` experts: writes output rows [0, rows) of the part's
// columns. Source: U8, K-block r of row n is the 8 bytes at data + n*pitch + 8*r, for
// r < rows_real (pitch and data 8-byte aligned). Destination: expert e's row r starts at
// dst + e*dst_expert_words + r*dst_row_words; dst points at the part's first word (its
// word offset 2*sum(np of earlier parts) already added) and is 16-byte aligned.
void launch_repack(const DevPart& part, int64_t experts, int64_t rows, int64_t rows_real, uint32_t* dst,
                   int64_t dst_row_words, int64_t dst_expert_words, cudaStream_t stream);

// What the scan of the block scales collects, on the device. Reset it with
// launch_reset_stats, accumulate with launch_scan (any number of parts and slices), then
// launch_finalize computes max_byte, sf, lost and the encoding LUT.
struct DeviceScaleStats {
  unsigned long long hist[256];  // occurrences of each E4M3 byte
  unsigned long long bad_key;    // smallest key of a negative or NaN scale, ~0 if none
  unsigned long long lost;       // non-zero scales that encode to 0 (v2's clamp)
  float sf;
  uint32_t max_byte;
  uint8_t lut[256];  // E4M3 byte -> processed byte, for sf
};

// Key of the scale at (expert, part, row, group): the index it has when the stack's parts are
// laid end to end, expert after expert ([E][P][n_p][k/16]). key_part_offset is
// sum over earlier parts of n_p * groups, key_expert the same over all parts.
struct ScanKey {
  int64_t first_expert;     // expert index of this launch's expert 0
  int64_t key_expert;
  int64_t key_part_offset;
  int64_t groups;           // k/16 of the whole tensor
  int64_t first_group;      // group (K-block) of the source's column 0
};

void launch_reset_stats(DeviceScaleStats* stats, cudaStream_t stream);
// Source: E4M3, `cols` groups per row (pitch >= cols).
void launch_scan(const DevPart& part, int64_t experts, int64_t cols, const ScanKey& key, DeviceScaleStats* stats,
                 cudaStream_t stream);
// has_sf: use sf as given; otherwise v2/bfloat16 computes it from the largest scale.
void launch_finalize(DeviceScaleStats* stats, Layout layout, ActDtype dt, bool has_sf, float sf, cudaStream_t stream);

// Scale processing of one part: output rows [0, rows) (a multiple of 2 under v1) from source
// groups [0, rows_real) (pitch bytes per row), encoded with stats->lut. Expert e's unit h (row h
// under v2, rows 2h, 2h+1 under v1) starts at dst + e*dst_expert_bytes + h*dst_unit_bytes; dst
// points at the part's first byte (u * column offset) and is 4-byte aligned.
void launch_scales(const DevPart& part, int64_t experts, int64_t rows, int64_t rows_real, Layout layout,
                   const DeviceScaleStats* stats, uint8_t* dst, int64_t dst_unit_bytes, int64_t dst_expert_bytes,
                   cudaStream_t stream);

// Inverse of launch_repack for one part and one expert: src (16-byte aligned, src_row_words a
// multiple of 4) holds rows [0, rows) of the part's 2*np words. Writes K-blocks [0, rows_real)
// of rows [0, n) to dst (row pitch dst_pitch bytes, 8-byte aligned) and adds the non-zero
// 8-byte blocks of the padding to *stray.
void launch_unpack(const uint32_t* src, int64_t src_row_words, int64_t n, int64_t np, int64_t rows,
                   int64_t rows_real, uint8_t* dst, int64_t dst_pitch, unsigned long long* stray,
                   cudaStream_t stream);

// Inverse of launch_scales for one part and one expert: src (4-byte aligned) holds units
// [0, rows/u) of the part, src_unit_bytes apart (u*np bytes used). dlut (device, 256 bytes)
// maps processed bytes back to E4M3. Writes groups [0, rows_real) of rows [0, n) to dst
// (pitch dst_pitch) and adds the non-zero padding bytes to *stray.
void launch_decode(const uint8_t* src, int64_t src_unit_bytes, int64_t n, int64_t np, int64_t rows,
                   int64_t rows_real, Layout layout, const uint8_t* dlut, uint8_t* dst, int64_t dst_pitch,
                   unsigned long long* stray, cudaStream_t stream);

// Compares got with want, both [n, width] with rows pitch bytes apart, standing for bytes
// [col0, col0 + width) of rows row_bytes long: adds the differing bytes to *count and lowers
// *first_key (start at all ones) to (index << 8 | got byte) of the first one.
void launch_diff(const uint8_t* got, const uint8_t* want, int64_t n, int64_t width, int64_t pitch, int64_t row_bytes,
                 int64_t col0, unsigned long long* count, unsigned long long* first_key, cudaStream_t stream);

}  // namespace cuda
}  // namespace mfp4
