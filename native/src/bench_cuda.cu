// Kernel-only benchmark of the CUDA transforms for cuda_selftest --bench (not in the addon):
// the launches of transforms_cuda.cuh on random device-resident data, timed with CUDA events,
// against a device-to-device cudaMemcpy of the same input bytes.
#include "bench_cuda.h"

#include <functional>

#include "cuda_device.cuh"
#include "transforms_cpu.h"
#include "transforms_cuda.cuh"

namespace mfp4 {
namespace cuda {
namespace {

using namespace detail;

// Deterministic pseudo-random data for the benchmark.
__device__ __forceinline__ uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void fill_kernel(uint8_t* dst, int64_t bytes, uint64_t seed, int scales) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < bytes; i += (int64_t)gridDim.x * blockDim.x) {
    const uint64_t r = mix64(seed ^ (uint64_t)i);
    dst[i] = scales ? (uint8_t)(0x20 + r % 0x50) : (uint8_t)r;  // normal-range E4M3 scales, like real checkpoints
  }
}

}  // namespace

BenchResult bench_kernels(int64_t n, int64_t k, int reps) {
  if (n <= 0 || k <= 0 || k % kGroup != 0) throw InvalidInput("bench shape must have K a multiple of 16");
  if (reps < 1) reps = 1;
  require_device();
  int64_t np, kp;
  pad_shape_v2(n, k, np, kp);
  const int64_t rows = kp / kGroup, g = k / kGroup;
  BenchResult r;
  r.weight_bytes = n * k / 2;
  r.scale_bytes = n * g;
  const int64_t wout = rows * 2 * np * 4, sout = rows * np;
  Stream stream;
  Arena arena(stream.s);
  const int64_t total = align_up(r.weight_bytes) + align_up(wout) + align_up(r.scale_bytes) + align_up(sout) +
                        align_up(sizeof(DeviceScaleStats));
  if (!arena.reserve(total)) throw CudaError("CUDA out of memory allocating " + mb(total) + " MB for the benchmark");
  uint8_t* win = arena.take<uint8_t>(r.weight_bytes);
  uint32_t* wo = arena.take<uint32_t>(wout);
  uint8_t* sin = arena.take<uint8_t>(r.scale_bytes);
  uint8_t* so = arena.take<uint8_t>(sout);
  DeviceScaleStats* stats = arena.take<DeviceScaleStats>(sizeof(DeviceScaleStats));
  fill_kernel<<<1024, 256, 0, stream.s>>>(win, r.weight_bytes, 1, 0);
  check_launch("fill");
  fill_kernel<<<1024, 256, 0, stream.s>>>(sin, r.scale_bytes, 2, 1);
  check_launch("fill");
  const DevPart wp{win, 0, k / 2, n, np}, sp{sin, 0, g, n, np};
  cudaEvent_t t0, t1;
  check(cudaEventCreate(&t0), "creating an event");
  check(cudaEventCreate(&t1), "creating an event");
  auto time = [&](const std::function<void()>& body) {
    body();  // warm-up
    check(cudaEventRecord(t0, stream.s), "recording an event");
    for (int i = 0; i < reps; ++i) body();
    check(cudaEventRecord(t1, stream.s), "recording an event");
    check(cudaEventSynchronize(t1), "timing");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, t0, t1), "timing");
    return (double)ms / reps;
  };
  try {
    r.repack_ms = time([&] { launch_repack(wp, 1, rows, g, wo, 2 * np, 0, stream.s); });
    r.scan_ms = time([&] {
      launch_reset_stats(stats, stream.s);
      launch_scan(sp, 1, g, ScanKey{0, n * g, 0, g, 0}, stats, stream.s);
      launch_finalize(stats, Layout::V2, ActDtype::BF16, false, 1.0f, stream.s);
    });
    r.scales_ms = time([&] { launch_scales(sp, 1, rows, g, Layout::V2, stats, so, np, 0, stream.s); });
    r.copy_ms = time([&] {
      check(cudaMemcpyAsync(wo, win, r.weight_bytes, cudaMemcpyDeviceToDevice, stream.s), "copying");
      check(cudaMemcpyAsync(so, sin, r.scale_bytes, cudaMemcpyDeviceToDevice, stream.s), "copying");
    });
  } catch (...) {
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    throw;
  }
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  return r;
}

}  // namespace cuda
}  // namespace mfp4
