// Kernel-only benchmark of the CUDA transforms, built into cuda_selftest (--bench) and not into
// the addon: the production path carries no benchmark code.
#pragma once
#include <cstdint>

namespace mfp4 {
namespace cuda {

struct BenchResult {
  double repack_ms = 0;     // weight repack kernel
  double scan_ms = 0;       // scale histogram + finalize (sf, LUT) kernels
  double scales_ms = 0;     // scale processing kernel
  double copy_ms = 0;       // cudaMemcpy device-to-device of the same input bytes
  int64_t weight_bytes = 0, scale_bytes = 0;  // input bytes (the outputs are the same size)
};
// Times the kernels on random device-resident data for one N x K linear (layout v2,
// bfloat16): milliseconds per iteration, the mean over `reps` back-to-back launches.
BenchResult bench_kernels(int64_t n, int64_t k, int reps);

}  // namespace cuda
}  // namespace mfp4
