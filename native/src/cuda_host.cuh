// Pinned host memory and the profile of the host-level calls (internal to the CUDA backend):
// which host ranges pin_host registered (copies from or to other memory are "pageable"), and
// StageTimer, which brackets a call's copies and kernels with CUDA events when profiling is on.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

#include "cuda_device.cuh"
#include "transforms_cuda.h"

namespace mfp4 {
namespace cuda {
namespace detail {

// Whether [p, p + bytes) lies inside one live pin_host registration.
bool host_is_pinned(const void* p, int64_t bytes);

extern std::atomic<bool> g_profiling;

// Adds one call's times and counts to the process's profile.
void add_to_profile(const Profile& delta);

enum class Stage { H2D, Kernel, D2H };

// Brackets the stages of one host-level call with CUDA events when profiling is on (nothing
// otherwise), and adds their elapsed times to the profile once the call's streams are idle.
// begin() and end() pairs do not nest: each stage is issued whole before the next begins.
class StageTimer {
 public:
  StageTimer() : on_(g_profiling.load(std::memory_order_relaxed)) {
    if (on_) t0_ = std::chrono::steady_clock::now();
  }
  ~StageTimer() {
    if (open_) cudaEventDestroy(open_);
    for (const Mark& m : marks_) {
      cudaEventDestroy(m.a);
      cudaEventDestroy(m.b);
    }
  }
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;

  bool on() const { return on_; }
  void begin(cudaStream_t s) {
    if (!on_) return;
    open_ = record(s);
  }
  // bytes: what the stage moved; pageable: how much of it from or to unpinned host memory.
  void end(cudaStream_t s, Stage st, int64_t bytes = 0, int64_t pageable = 0) {
    if (!on_) return;
    marks_.push_back({open_, record(s), st});
    open_ = nullptr;
    if (st == Stage::H2D) delta_.h2d_bytes += bytes;
    if (st == Stage::D2H) delta_.d2h_bytes += bytes;
    delta_.pageable_bytes += pageable;
  }
  void add_pieces(int64_t n) { delta_.pieces += n; }
  // After the streams are synchronized.
  void finish() {
    if (!on_) return;
    for (const Mark& m : marks_) {
      float ms = 0;
      if (cudaEventElapsedTime(&ms, m.a, m.b) != cudaSuccess) {
        (void)cudaGetLastError();
        continue;
      }
      (m.stage == Stage::H2D ? delta_.h2d_ms : m.stage == Stage::Kernel ? delta_.kernel_ms : delta_.d2h_ms) += ms;
    }
    delta_.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count();
    add_to_profile(delta_);
  }

 private:
  struct Mark {
    cudaEvent_t a, b;
    Stage stage;
  };
  static cudaEvent_t record(cudaStream_t s) {
    cudaEvent_t e = nullptr;
    check(cudaEventCreate(&e), "creating a timing event");
    const cudaError_t r = cudaEventRecord(e, s);
    if (r != cudaSuccess) cudaEventDestroy(e);
    check(r, "recording a timing event");
    return e;
  }
  bool on_;
  std::chrono::steady_clock::time_point t0_;
  cudaEvent_t open_ = nullptr;
  std::vector<Mark> marks_;
  Profile delta_;
};

// Whether host range [p, p + bytes) is pageable (not pinned); only asked when profiling.
inline bool pageable(const StageTimer& t, const void* p, int64_t bytes) {
  return t.on() && bytes > 0 && !host_is_pinned(p, bytes);
}

}  // namespace detail
}  // namespace cuda
}  // namespace mfp4
