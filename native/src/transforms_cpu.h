// CPU implementation of the Marlin FP4 transforms (FORMAT.md). Pure C++: no Node, no CUDA.
// A "part" is one source tensor of a fused output (gate and up of an MoE expert); parts are
// concatenated along N, each zero-padded to its own padded width.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>
#include "layout.h"

namespace mfp4 {

struct InvalidInput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct WeightPart {
  const uint8_t* data;  // U8 [n, k/2]
  int64_t n;            // rows (output features) in the source
  int64_t np;           // padded rows, a multiple of 64
};

struct ScalePart {
  const uint8_t* data;  // F8_E4M3 [n, k/16]
  int64_t n;
  int64_t np;
};

// A negative or NaN block scale and where it is: Marlin stores scales without a sign. The
// bindings turn it into a JS error carrying these fields; its one message is written in
// TypeScript (src/transform/block-scales.ts), for the CPU and the CUDA paths alike.
struct BadBlockScale : InvalidInput {
  int64_t expert = 0, experts = 1;  // expert of the stack, and how many the stack has
  int64_t part = 0;                 // part (gate, up) of that expert
  int64_t row_offset = 0;           // rows of the earlier parts: the part's first row in the fused tensor
  int64_t row = 0, group = 0;       // position within the part
  uint8_t byte = 0;                 // the E4M3 byte
  BadBlockScale() : InvalidInput("negative or NaN block scale") {}
};

// The BadBlockScale for scale `index` (row * k/16 + group) of part p of expert e of a stack.
BadBlockScale locate_bad_scale(const std::vector<std::vector<ScalePart>>& experts, int64_t k, int64_t e, int64_t p,
                               int64_t index, uint8_t byte);

struct ScaleStats {
  int64_t histogram[256] = {};  // how often each E4M3 byte occurs
  uint8_t max_byte = 0;         // byte of the largest non-negative scale
  int64_t bad_index = -1;       // first negative or NaN scale, or -1
  uint8_t bad_byte = 0;
};

// Shape rules shared by every backend; throw InvalidInput with the reason.
void check_weight_shapes(int64_t n, int64_t np, int64_t k, int64_t kp);
void check_scale_shapes(int64_t n, int64_t np, int64_t k, int64_t kp, Layout layout);

// Writes Marlin words for parts concatenated along N into dst: kp/16 rows of
// 2*sum(np) words each, rows `dst_row_words` apart.
// With a row range, only output rows [row_begin, row_end) are written, the first at dst: a
// big tensor can be produced in slices small enough to stay in cache until they are written.
void repack_weight(const std::vector<WeightPart>& parts, int64_t k, int64_t kp, uint32_t* dst,
                   int64_t dst_row_words, int threads, int64_t row_begin = 0, int64_t row_end = -1);

// Inverse of repack_weight for one part that starts at column word offset 0 of src.
// Returns the number of non-zero codes found in the padding (should be 0).
int64_t unpack_weight(const uint32_t* src, int64_t src_row_words, int64_t n, int64_t np, int64_t k,
                      int64_t kp, uint8_t* dst, int threads);

ScaleStats scan_scales(const uint8_t* data, int64_t count, int threads);

struct StackScaleStats {
  uint8_t max_byte = 0;
  int64_t histogram[256] = {};
};

// Validates every part of every expert (throws BadBlockScale for the first negative or NaN
// scale in (expert, part, row, group) order); returns the largest scale byte and the histogram.
StackScaleStats scan_scale_stack(const std::vector<std::vector<ScalePart>>& experts, int64_t k, int threads);

// How many non-zero block scales of this histogram v2's clamp turns into 0.
int64_t count_lost_scales(const int64_t histogram[256], Layout layout, float sf);

// v2/bfloat16: largest power of two keeping max*sf <= 448; otherwise 1.
float scale_factor(uint8_t max_byte, Layout layout, ActDtype dt);

// Processed scales of parts concatenated along N: (kp/16) rows of sum(np) bytes.
// Likewise for units (rows under v2, row pairs under v1) [unit_begin, unit_end).
void process_scales(const std::vector<ScalePart>& parts, int64_t k, int64_t kp, Layout layout, float sf,
                    uint8_t* dst, int threads, int64_t unit_begin = 0, int64_t unit_end = -1);

struct StackScaleResult {
  float sf = 1.0f;
  int64_t zeroed = -1;  // non-zero scales v2's clamp turned into 0; -1 for a row range (not scanned)
};

// Processed scales of every expert of a stack: [E, kp/16, sum(np)] bytes at dst, after
// scan_scale_stack (sf, when not given, spans every expert). A row range [row_begin, row_end)
// of K/16 rows (multiples of scale_unit_rows) is a slice of one expert whose caller has scanned
// the whole tensor and passes sf: it is neither scanned again nor counted.
StackScaleResult process_scales_stack(const std::vector<std::vector<ScalePart>>& experts, int64_t k, int64_t kp,
                                      Layout layout, ActDtype dt, bool has_sf, float sf, uint8_t* dst, int threads,
                                      int64_t row_begin = 0, int64_t row_end = -1);

// Inverse: recovers E4M3 [n, k/16] of one part starting at column 0 of src whose full
// width is total_np. Bytes that no E4M3 value encodes to decode as 0x7F (NaN) so that a
// comparison with the source fails. Returns non-zero bytes found in the padding.
int64_t decode_scales(const uint8_t* src, int64_t total_np, int64_t n, int64_t np, int64_t k,
                      int64_t kp, Layout layout, float sf, uint8_t* dst, int threads);

// Processed global scale; returns its global_scale_bytes(layout) bytes in out.
void process_global_scale(float ws2, Layout layout, ActDtype dt, float sf, uint8_t out[4],
                          int& nbytes);

}  // namespace mfp4
