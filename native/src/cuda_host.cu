// Pinned host memory (pin_host / unpin_host and the registry host_is_pinned reads) and the
// profile of the host-level calls (set_profiling, profile), for cuda_host.cuh.
#include "cuda_host.cuh"

#include <chrono>
#include <map>
#include <mutex>

namespace mfp4 {
namespace cuda {
namespace detail {
namespace {

std::mutex g_pin_mutex;
std::map<uintptr_t, size_t> g_pinned;  // base -> bytes of every live pin_host registration
std::mutex g_profile_mutex;
Profile g_profile;

}  // namespace

bool host_is_pinned(const void* p, int64_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(g_pin_mutex);
  auto it = g_pinned.upper_bound(a);
  if (it == g_pinned.begin()) return false;
  --it;
  return a + (uintptr_t)bytes <= it->first + it->second;
}

std::atomic<bool> g_profiling{false};

void add_to_profile(const Profile& delta) {
  std::lock_guard<std::mutex> lock(g_profile_mutex);
  g_profile.calls += 1;
  g_profile.h2d_ms += delta.h2d_ms;
  g_profile.kernel_ms += delta.kernel_ms;
  g_profile.d2h_ms += delta.d2h_ms;
  g_profile.wall_ms += delta.wall_ms;
  g_profile.h2d_bytes += delta.h2d_bytes;
  g_profile.d2h_bytes += delta.d2h_bytes;
  g_profile.pageable_bytes += delta.pageable_bytes;
  g_profile.pieces += delta.pieces;
}

}  // namespace detail

using namespace detail;

bool pin_host(void* data, size_t bytes) {
  if (!data || bytes == 0 || !availability().ok) return false;
  const auto t0 = std::chrono::steady_clock::now();
  bool ok = false;
  try {
    require_device();
    const cudaError_t e = cudaHostRegister(data, bytes, cudaHostRegisterPortable);
    if (e == cudaSuccess) {
      std::lock_guard<std::mutex> lock(g_pin_mutex);
      g_pinned[reinterpret_cast<uintptr_t>(data)] = bytes;
      ok = true;
    } else {
      (void)cudaGetLastError();
    }
  } catch (const CudaError&) {
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(g_profile_mutex);
  if (ok) {
    g_profile.pinned += 1;
    g_profile.pinned_bytes += (int64_t)bytes;
  } else {
    g_profile.pin_failures += 1;
  }
  g_profile.pin_ms += ms;
  return ok;
}

bool unpin_host(void* data) {
  {
    std::lock_guard<std::mutex> lock(g_pin_mutex);
    if (!g_pinned.erase(reinterpret_cast<uintptr_t>(data))) return false;
  }
  const cudaError_t e = cudaHostUnregister(data);
  if (e != cudaSuccess) (void)cudaGetLastError();
  return e == cudaSuccess;
}

void set_profiling(bool on, bool reset) {
  std::lock_guard<std::mutex> lock(g_profile_mutex);
  if (reset) g_profile = Profile{};
  g_profiling.store(on);
}

bool profiling() { return g_profiling.load(); }

Profile profile() {
  std::lock_guard<std::mutex> lock(g_profile_mutex);
  Profile p = g_profile;
  p.probe_ms = availability().probe_ms;
  p.context_ms = g_context_ms.load();
  return p;
}

}  // namespace cuda
}  // namespace mfp4
