// Device state shared by the CUDA backend's files (internal: not for the bindings): errors,
// the device and its primary context, the stream-ordered memory pool, one-allocation arenas,
// streams and host <-> device row copies. The probe runs once per process; without a driver
// or a device every entry point answers "CUDA unavailable: <why>".
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>

#include "layout.h"
#include "transforms_cuda.h"

namespace mfp4 {
namespace cuda {
namespace detail {

constexpr int64_t kAlign = 256;  // every arena piece starts on this boundary

std::string cuda_text(cudaError_t e);
// Throws CudaError("CUDA error: ... while <what>") unless e is cudaSuccess.
void check(cudaError_t e, const std::string& what);
void check_launch(const char* kernel);

inline int64_t align_up(int64_t x) { return round_up(x, kAlign); }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
std::string mb(int64_t bytes);  // "12.3" (megabytes, for messages)

extern std::atomic<int64_t> g_memory_limit;  // set_memory_limit's testing budget (0 = none)
extern cudaMemPool_t g_pool;                 // the device's default pool, when it supports stream-ordered allocation
extern std::atomic<double> g_context_ms;     // creation of the primary context (the first require_device)

struct Availability {
  bool ok = false;
  std::string why;
  DeviceInfo info;
  double probe_ms = 0;  // how long the probe took (driver initialization included)
};
// The driver and device probe, once per process.
const Availability& availability();

// Selects the device on this thread (creating its context and configuring the pool the first
// time); throws CudaError("CUDA unavailable: ...") when there is none.
void require_device();

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "creating a CUDA stream"); }
  ~Stream() {
    cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

// One device allocation per call, handed out in 256-byte aligned pieces.
class Arena {
 public:
  explicit Arena(cudaStream_t s = nullptr) : s_(s) {}
  void bind(cudaStream_t s) { s_ = s; }
  ~Arena() { release(); }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // false when the device (or the testing limit) cannot give `bytes`.
  bool reserve(int64_t bytes) {
    release();
    const int64_t limit = g_memory_limit.load();
    if (limit > 0 && bytes > limit) return false;
    void* p = nullptr;
    const size_t size = (size_t)std::max<int64_t>(bytes, 1);
    const cudaError_t e = g_pool ? cudaMallocAsync(&p, size, s_) : cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      return false;
    }
    check(e, "allocating " + mb(bytes) + " MB of device memory");
    base_ = static_cast<uint8_t*>(p);
    size_ = bytes;
    used_ = 0;
    return true;
  }
  template <typename T>
  T* take(int64_t bytes) {
    const int64_t at = used_;
    used_ += align_up(bytes);
    if (used_ > size_) throw CudaError("internal error: device arena overflow");
    return reinterpret_cast<T*>(base_ + at);
  }
  void release() {
    if (base_) {
      if (g_pool) {
        cudaFreeAsync(base_, s_);
      } else {
        cudaStreamSynchronize(s_);
        cudaFree(base_);
      }
    }
    base_ = nullptr;
    size_ = used_ = 0;
  }

 private:
  cudaStream_t s_;
  uint8_t* base_ = nullptr;
  int64_t size_ = 0, used_ = 0;
};

// One piece of `bytes` that cannot be sliced (a GEMM's operands): reserved in the arena, after
// the pool's cached memory is given back if that is what is missing; else CudaError("CUDA out
// of memory allocating … MB for <what>").
inline void reserve_whole(Arena& arena, cudaStream_t s, int64_t bytes, const std::string& what) {
  if (arena.reserve(bytes)) return;
  if (g_memory_limit.load() == 0 && g_pool) {
    cudaStreamSynchronize(s);
    cudaMemPoolTrimTo(g_pool, 0);
    if (arena.reserve(bytes)) return;
  }
  throw CudaError("CUDA out of memory allocating " + mb(bytes) + " MB for " + what);
}

// Rows of `width` bytes, host <-> device; one flat copy when the rows are contiguous.
void copy_rows(void* dst, int64_t dpitch, const void* src, int64_t spitch, int64_t width, int64_t height,
               cudaMemcpyKind kind, cudaStream_t s, const char* what);

void sync(cudaStream_t s, const char* what);

}  // namespace detail
}  // namespace cuda
}  // namespace mfp4
