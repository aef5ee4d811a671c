// Device state of the CUDA backend (cuda_device.cuh): the once-per-process probe of the driver
// and device, context creation, the memory pool, errors and copies; and the host-level entry
// points that only ask about the device (cuda_available, device_info, compiled_archs,
// set_memory_limit, warm_up).
#include "cuda_device.cuh"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

#ifndef MFP4_CUDA_ARCHS
#define MFP4_CUDA_ARCHS "80;86;89;90"
#endif

namespace mfp4 {
namespace cuda {
namespace detail {

std::string cuda_text(cudaError_t e) { return std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ")"; }

void check(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clears a non-sticky error so that later launches are not blamed for it
  throw CudaError("CUDA error: " + cuda_text(e) + " while " + what);
}

void check_launch(const char* kernel) { check(cudaGetLastError(), std::string("launching the ") + kernel + " kernel"); }

std::string mb(int64_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", (double)bytes / 1e6);
  return buf;
}

std::atomic<int64_t> g_memory_limit{0};

namespace {

int min_compiled_arch() {
  int best = 0;
  std::string s = MFP4_CUDA_ARCHS;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find_first_of(";, ", i);
    if (j == std::string::npos) j = s.size();
    const int a = std::atoi(s.substr(i, j - i).c_str());
    if (a > 0 && (best == 0 || a < best)) best = a;
    i = j + 1;
  }
  return best;
}

std::string version_text(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }

Availability probe() {
  Availability a;
  int driver = 0;
  cudaError_t e = cudaDriverGetVersion(&driver);
  if (e != cudaSuccess || driver == 0) {
    (void)cudaGetLastError();
    a.why = "no CUDA driver (libcuda.so.1 was not found)";
    return a;
  }
  int runtime = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  int count = 0;
  e = cudaGetDeviceCount(&count);
  if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
    (void)cudaGetLastError();
    a.why = "no CUDA device";
    return a;
  }
  if (e == cudaErrorInsufficientDriver) {
    (void)cudaGetLastError();
    a.why = "the CUDA driver (CUDA " + version_text(driver) + ") is older than this build's runtime (CUDA " +
            version_text(runtime) + ")";
    return a;
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    a.why = "CUDA error: " + cuda_text(e);
    return a;
  }
  a.info.devices = count;
  const char* env = std::getenv("MARLIN_FP4_CUDA_DEVICE");
  a.info.ordinal = env && *env ? std::atoi(env) : 0;
  if (a.info.ordinal < 0 || a.info.ordinal >= count) {
    a.why = "MARLIN_FP4_CUDA_DEVICE=" + std::string(env ? env : "") + " but there are " + std::to_string(count) +
            " CUDA devices";
    return a;
  }
  cudaDeviceProp prop;
  e = cudaGetDeviceProperties(&prop, a.info.ordinal);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    a.why = "CUDA error: " + cuda_text(e);
    return a;
  }
  a.info.name = prop.name;
  a.info.major = prop.major;
  a.info.minor = prop.minor;
  a.info.total_memory = (int64_t)prop.totalGlobalMem;
  const int cc = prop.major * 10 + prop.minor, need = min_compiled_arch();
  if (cc < need) {
    a.why = std::string(prop.name) + " has compute capability " + std::to_string(prop.major) + "." +
            std::to_string(prop.minor) + "; this build needs sm_" + std::to_string(need) + " or newer";
    return a;
  }
  a.ok = true;
  return a;
}

}  // namespace

const Availability& availability() {
  static const Availability a = [] {
    const auto t0 = std::chrono::steady_clock::now();
    Availability r = probe();
    r.probe_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }();
  return a;
}

std::atomic<double> g_context_ms{0};  // creation of the primary context (the first require_device)

cudaMemPool_t g_pool = nullptr;  // the device's default pool, when it supports stream-ordered allocation

// Selects the device on this thread and returns it; throws when there is none.
void require_device() {
  const Availability& a = availability();
  if (!a.ok) throw CudaError("CUDA unavailable: " + a.why);
  static std::once_flag context_once;
  std::call_once(context_once, [&] {
    // The first use creates the device's primary context, which takes a while (warm_up does
    // it early, on a pool thread); other threads wait here rather than inside the driver.
    const auto t0 = std::chrono::steady_clock::now();
    if (cudaSetDevice(a.info.ordinal) == cudaSuccess) (void)cudaFree(nullptr);
    (void)cudaGetLastError();
    g_context_ms.store(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  });
  check(cudaSetDevice(a.info.ordinal), "selecting CUDA device " + std::to_string(a.info.ordinal));
  static std::once_flag once;
  static cudaError_t pool_error = cudaSuccess;
  std::call_once(once, [&] {
    int pools = 0;
    pool_error = cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, a.info.ordinal);
    if (pool_error != cudaSuccess || !pools) return;  // plain cudaMalloc then
    cudaMemPool_t pool = nullptr;
    pool_error = cudaDeviceGetDefaultMemPool(&pool, a.info.ordinal);
    if (pool_error != cudaSuccess) return;
    // Keep freed memory cached between tensors (up to a quarter of the device, 8 GiB at
    // most) instead of returning it to the driver at every synchronization.
    uint64_t keep = std::min<uint64_t>((uint64_t)a.info.total_memory / 4, 8ull << 30);
    pool_error = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
    if (pool_error == cudaSuccess) g_pool = pool;
  });
  check(pool_error, "configuring the device memory pool");
}

// Rows of `width` bytes, host <-> device; one flat copy when the rows are contiguous.
void copy_rows(void* dst, int64_t dpitch, const void* src, int64_t spitch, int64_t width, int64_t height,
               cudaMemcpyKind kind, cudaStream_t s, const char* what) {
  if (width <= 0 || height <= 0) return;
  cudaError_t e;
  if (height == 1 || (width == dpitch && width == spitch)) {
    e = cudaMemcpyAsync(dst, src, (size_t)(width * height), kind, s);
  } else {
    e = cudaMemcpy2DAsync(dst, (size_t)dpitch, src, (size_t)spitch, (size_t)width, (size_t)height, kind, s);
  }
  check(e, std::string("copying ") + what + (kind == cudaMemcpyHostToDevice ? " to the device" : " from the device"));
}

void sync(cudaStream_t s, const char* what) { check(cudaStreamSynchronize(s), what); }

}  // namespace detail

using namespace detail;

bool cuda_available(std::string& why) {
  const Availability& a = availability();
  why = a.why;
  return a.ok;
}

bool device_info(DeviceInfo& info) {
  const Availability& a = availability();
  info = a.info;
  return a.ok;
}

const char* compiled_archs() {
  static const std::string s = [] {
    std::string in = MFP4_CUDA_ARCHS, out;
    size_t i = 0;
    while (i < in.size()) {
      size_t j = in.find_first_of(";, ", i);
      if (j == std::string::npos) j = in.size();
      if (j > i) out += (out.empty() ? "sm_" : ",sm_") + in.substr(i, j - i);
      i = j + 1;
    }
    return out;
  }();
  return s.c_str();
}

void set_memory_limit(int64_t bytes) { g_memory_limit.store(bytes < 0 ? 0 : bytes); }

bool warm_up() {
  if (!availability().ok) return false;
  require_device();
  return true;
}

}  // namespace cuda
}  // namespace mfp4
