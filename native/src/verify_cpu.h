// verify's comparisons on the host, in C++ so that they run on a pool thread beside the GPU
// or the CPU GEMMs instead of on JavaScript's one main thread (where 4 lanes' worth of them
// queued up): the block scales a correct conversion keeps of the source's, against those
// decoded back from the output, and the per-column error of a GEMM's output against the
// reference's. Pure C++: no Node, no CUDA.
#pragma once
#include <cstdint>
#include <vector>

#include "layout.h"

namespace mfp4 {

// What a correct conversion keeps of a source block scale (an E4M3 byte): the scales v2's
// clamp loses (scale_is_lost) become 0, and so does -0 (0x80: Marlin stores scales without a
// sign, and the transform writes -0 as 0 under both layouts); every other byte is unchanged.
struct KeptScales {
  uint8_t kept[256];
  uint8_t lost[256];  // 1 where the byte is a non-zero scale the clamp turns into 0
  int below = 1;      // the lost bytes are [1, below); 0 where they are not one range
  KeptScales(Layout layout, float sf);
  // Whether any byte of src[0, count) changes.
  bool changes(const uint8_t* src, int64_t count) const;
  // dst[i] = kept[src[i]]; returns how many of them were lost.
  int64_t apply(const uint8_t* src, int64_t count, uint8_t* dst) const;
};

// Block scales decoded back from the output against the source's as kept.
struct ScaleDiff {
  int64_t count = 0;   // bytes that differ
  int64_t first = -1;  // the first of them, -1 when none
  uint8_t got = 0;     // the decoded byte there
  int64_t lost = 0;    // source scales the clamp turns into 0 (counted whether or not they match)
};
ScaleDiff compare_kept_scales(const uint8_t* decoded, const uint8_t* source, int64_t count, const KeptScales& rule);

// Where y and the reference lie in their buffers: y holds rows [row0, row0 + m) of `cols`
// columns and is judged on columns [col0, col0 + n); ref holds rows [ref_row0, ref_row0 + m)
// of `ref_cols` columns, judged on its first n.
struct ColumnShape {
  int64_t m = 0, n = 0;
  int64_t cols = 0, col0 = 0, row0 = 0;
  int64_t ref_cols = 0, ref_row0 = 0;
};

// The per-column judgement of y against ref (src/verify/gemm.ts columnErrors documents it):
// the same double arithmetic in the same order as the JavaScript it replaces, so the same
// numbers to the last bit.
struct ColumnErrors {
  double rel = 0;         // largest column error: ||y_j - ref_j|| / max(||ref_j||, ||ref||_F / sqrt(n))
  int64_t column = -1;    // where it was found (-1: no column differs)
  double max_abs = 0;     // max |y - ref|
  double frobenius = 0;   // whole-matrix relative error
  int64_t non_finite = 0; // NaN or infinite outputs (rel, max_abs, frobenius are then infinite)
};
ColumnErrors column_errors(const float* y, const float* ref, const ColumnShape& s);

}  // namespace mfp4
