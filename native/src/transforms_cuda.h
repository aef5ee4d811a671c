// Host-level entry points of the CUDA backend (FORMAT.md sections 2-3), for the addon:
// host buffers in, host buffers out, the GPU in between. Plain C++ (no CUDA headers), so
// addon.cc compiles with the host compiler alone. The device-pointer API, for callers that
// keep their data on the GPU, is in transforms_cuda.cuh.
//
// Every function produces the same bytes as its CPU twin in transforms_cpu.h (both derive
// them from layout.h) and throws InvalidInput for the same shape errors. CUDA failures
// throw CudaError ("CUDA error: ..." / "CUDA out of memory allocating X MB for ...").
// A tensor too large for the free device memory is processed in slices of K rows (every
// output row depends only on its own K-block), and MoE stacks in groups of experts.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "layout.h"

namespace mfp4 {
namespace cuda {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Whether a usable CUDA device is present. Never throws; without a driver (libcuda is
// loaded lazily by the static runtime) it returns false with why = "no CUDA driver ...".
// The answer is computed once per process.
bool cuda_available(std::string& why);

struct DeviceInfo {
  int devices = 0;       // visible CUDA devices
  int ordinal = 0;       // the one used (MARLIN_FP4_CUDA_DEVICE, default 0)
  std::string name;      // its name
  int major = 0, minor = 0;
  int64_t total_memory = 0;
};
// Fills info when cuda_available() is true.
bool device_info(DeviceInfo& info);

// The architectures this build carries code for, e.g. "sm_80,sm_86,sm_89,sm_90".
const char* compiled_archs();

// Testing hook: when > 0, device allocations larger than this many bytes are treated as
// out of memory, which exercises the sliced path on small tensors. 0 = no limit.
void set_memory_limit(int64_t bytes);

// Page-locked host memory. pin_host registers [data, data + bytes) with the driver (portable
// to every context), so that copies from and to it are DMA transfers that run asynchronously
// at full link speed instead of being staged through the driver's own pinned buffers.
// false when CUDA is unusable or the driver refuses (already registered, overlapping another
// registration, out of lockable memory): the memory then stays pageable, which is slower
// but still correct. unpin_host undoes a pin_host of that same `data` (false if none).
bool pin_host(void* data, size_t bytes);
bool unpin_host(void* data);

// Opt-in timing of the host-level calls below (run_repack_stack, run_scales_stack): when on,
// every copy and kernel launch is bracketed by CUDA events and the elapsed times are summed
// over all calls (from every thread). Off by default (no events are created).
struct Profile {
  int64_t calls = 0;
  double h2d_ms = 0, kernel_ms = 0, d2h_ms = 0;  // summed stream time of each stage
  double wall_ms = 0;                             // summed host time inside the calls
  int64_t h2d_bytes = 0, d2h_bytes = 0;
  int64_t pageable_bytes = 0;  // of those, bytes from or to host memory that was not pinned
  int64_t pieces = 0;          // pipelined pieces (repack)
  int64_t pinned = 0, pinned_bytes = 0, pin_failures = 0;  // pin_host calls (counted even when off)
  double pin_ms = 0;
  double probe_ms = 0;    // cuda_available's probe of the driver and device (once per process)
  double context_ms = 0;  // creation of the device's primary context (once per process)
};
void set_profiling(bool on, bool reset);
bool profiling();
Profile profile();

// Creates the device's primary context now (it takes a while: best started early, on a
// worker thread, beside other work). false without a usable device; throws CudaError.
bool warm_up();

struct HostPart {
  const uint8_t* data;  // weight U8 [n, k/2] or block scales F8_E4M3 [n, k/16]
  int64_t n;
  int64_t np;  // padded rows, a multiple of 64
};
// experts[e][p]: part p of expert e; every expert has the same parts (shapes checked by the caller).
using HostStack = std::vector<std::vector<HostPart>>;

// Marlin words of every expert: I32 [E, kp/16, 2*sum(np)] written to dst (host). With a row
// range, only output rows [row_begin, row_end) of every expert, the first at dst (as the CPU's
// repack_weight row range). Pipelined: the tensor goes in pieces of about 4 MB of output
// (column blocks of one part, or groups of small experts) over three streams, so that the
// upload of one piece, the kernel of the previous one and the download of the one before
// that overlap. They only overlap when the source and dst are pinned (pin_host): copies from
// or to pageable memory are synchronous.
void run_repack_stack(const HostStack& experts, int64_t k, int64_t kp, uint32_t* dst, int64_t row_begin = 0,
                      int64_t row_end = -1);

struct ScaleRunResult {
  float sf = 1.0f;
  int64_t zeroed = 0;  // non-zero block scales that v2's clamp turned into 0
  uint8_t max_byte = 0;
  // First negative or NaN block scale in (expert, part, row, group) order; nothing is
  // written to dst when one is found.
  int64_t bad_expert = -1, bad_part = -1, bad_index = -1;  // bad_index = row * (k/16) + group within the part
  uint8_t bad_byte = 0;
};

// Processed scales of every expert: [E, kp/16, sum(np)] bytes written to dst (host). Without
// has_sf, v2's scale factor is computed on the device over the whole stack. With a row range
// (rows of K/16, multiples of 2 under v1), only output rows [row_begin, row_end), the first at
// dst; scan = false skips the validation and counting pass (zeroed is then 0), as the CPU path
// does for a slice of a tensor whose caller has scanned it and passes sf.
ScaleRunResult run_scales_stack(const HostStack& experts, int64_t k, int64_t kp, Layout layout, ActDtype dt,
                                bool has_sf, float sf, uint8_t* dst, int64_t row_begin = 0, int64_t row_end = -1,
                                bool scan = true);

// Inverse of the repack for one part: src points at the part's first word of row 0, rows
// are src_row_words apart. dst: U8 [n, k/2]. Returns the non-zero 8-byte padding blocks
// (same count as mfp4::unpack_weight).
int64_t run_unpack_weight(const uint32_t* src, int64_t src_row_words, int64_t n, int64_t np, int64_t k, int64_t kp,
                          uint8_t* dst);

// What unpacking a part gave against the source it should give back, counted on the device.
struct UnpackDiff {
  int64_t count = 0;    // bytes of U8 [n, k/2] that differ from the source
  int64_t first = -1;   // the first of them (row * k/2 + byte), -1 when none
  uint8_t got = 0;      // the unpacked byte there
  int64_t stray = 0;    // non-zero 8-byte padding blocks (as run_unpack_weight)
};

// run_unpack_weight and the comparison with want (U8 [n, k/2], the source) on the device, in
// pieces: only the counts come back, not the unpacked weight.
UnpackDiff run_unpack_compare(const uint32_t* src, int64_t src_row_words, int64_t n, int64_t np, int64_t k, int64_t kp,
                              const uint8_t* want);

// Inverse of the scale processing for one part: src points at the part's first byte of unit 0
// (unit = one row under v2, a row pair under v1) of processed scales total_np columns wide.
// dst: E4M3 [n, k/16]. Returns the non-zero padding bytes (same as mfp4::decode_scales).
int64_t run_decode_scales(const uint8_t* src, int64_t total_np, int64_t n, int64_t np, int64_t k, int64_t kp,
                          Layout layout, float sf, uint8_t* dst);

}  // namespace cuda
}  // namespace mfp4
