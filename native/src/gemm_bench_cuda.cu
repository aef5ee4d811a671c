// `marlin-fp4 bench`'s measurements: the fast Marlin FP4 GEMM (gemm_fast_cuda.cu) against
// cuBLAS (cublasGemmEx, bf16/fp16 W [N, K], x @ W^T, fp32 compute) on the same shapes.
// Weights, scales and activations are random, generated on the device. Each side gets enough
// weight copies that one pass over them is more than twice the L2, and every timed call uses the
// next copy, so neither is timed out of the cache. Per call: CUDA events around the launch
// (ours includes the zeroing of y when it splits K), a few warm-up calls, the median of the rest.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cuda_check.cuh"
#include "gemm_bench.h"
#include "gemm_cuda.h"
#include "transforms_cpu.h"
#include "transforms_cuda.h"

namespace mfp4 {
namespace cuda {
namespace {

struct Dev {
  void* p = nullptr;
  Dev() = default;
  Dev(size_t bytes, const std::string& what) { check(cudaMalloc(&p, bytes + 16), "allocating " + std::to_string(bytes >> 20) + " MB for " + what); }
  ~Dev() {
    if (p) cudaFree(p);
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
};

__device__ __forceinline__ uint32_t mix(uint64_t i, uint32_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (uint32_t)(z ^ (z >> 31));
}

// Random 32-bit words (every E2M1 code, both signs).
__global__ void fill_words(uint32_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = mix(i, seed);
}

// Scale bytes between 0x60 and 0x9F (block scales 2^-10 .. 2^-2 before the x128).
__global__ void fill_scales(uint8_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = (uint8_t)(0x60 + (mix(i, seed) & 0x3F));
}

// 16-bit activations / dense weights in about (-1, 1): bf16 or f16 bit patterns.
__global__ void fill_act(uint16_t* p, size_t n, uint32_t seed, int bf16) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const uint32_t r = mix(i, seed);
    const float v = ((int)(r & 0xFFFF) - 32768) / 32768.0f;
    const uint32_t fb = __float_as_uint(v);
    p[i] = bf16 ? (uint16_t)(fb >> 16) : __half_as_ushort(__float2half_rn(v));
  }
}

template <typename F>
void launch_fill(F kernel_call) {
  kernel_call();
  check(cudaGetLastError(), "filling bench data");
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// cublasGemmEx through the library gemm_cuda.cu loaded.
using gemm_ex_t = int (*)(void*, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                          const void*, void*, int, int, int, int);
constexpr int kOpN = 0, kOpT = 1, kR16F = 2, kR16BF = 14, kCompute32F = 68, kGemmDefault = -1;

// Keeps the device busy for about `us` microseconds, so that the calls queued behind it start
// back to back, unaffected by the host's launch overhead.
__global__ void spin(int64_t us) {
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < (uint64_t)us * 1000);
}

// Times `call(i)` (i = rotation index) iters times after warm-up; returns the median
// microseconds between the events around each call.
template <typename F>
double time_calls(int warmup, int iters, F call) {
  std::vector<cudaEvent_t> ev(2 * iters);
  for (auto& e : ev) check(cudaEventCreate(&e), "creating events");
  for (int i = 0; i < warmup; ++i) call(i);
  check(cudaDeviceSynchronize(), "warming up");
  spin<<<1, 1>>>(20000);
  for (int i = 0; i < iters; ++i) {
    check(cudaEventRecord(ev[2 * i]), "recording an event");
    call(warmup + i);
    check(cudaEventRecord(ev[2 * i + 1]), "recording an event");
  }
  check(cudaDeviceSynchronize(), "timing calls");
  std::vector<double> us;
  for (int i = 0; i < iters; ++i) {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]), "reading an event");
    us.push_back(ms * 1000.0);
  }
  for (auto& e : ev) cudaEventDestroy(e);
  return median(us);
}

}  // namespace

BenchReport run_gemm_bench(const BenchOptions& o) {
  std::string why;
  if (!cuda_available(why)) throw CudaError("CUDA unavailable: " + why);
  DeviceInfo di;
  device_info(di);
  check(cudaSetDevice(di.ordinal), "selecting the device");
  BenchReport rep;
  rep.device = di.name + " (sm_" + std::to_string(di.major) + std::to_string(di.minor) + ")";
  int l2 = 0;
  check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, di.ordinal), "reading the L2 size");
  rep.l2_bytes = l2;
  const size_t rotate = (size_t)std::max<int64_t>(2 * (int64_t)l2 + (16 << 20), 128 << 20);

  // Copy bandwidth: a 1 GiB device-to-device copy, read + write bytes.
  {
    const size_t bytes = (size_t)1 << 30;
    Dev a(bytes, "the copy test"), b(bytes, "the copy test");
    check(cudaMemset(a.p, 1, bytes), "filling the copy test");
    const double us = time_calls(2, 10, [&](int) { check(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice), "copying"); });
    rep.copy_gbs = 2.0 * bytes / (us * 1e3);
  }

  void* handle = nullptr;
  void* lib = o.cublas ? cublas_for_bench(handle, why) : nullptr;
  gemm_ex_t gemm_ex = lib ? reinterpret_cast<gemm_ex_t>(dlsym(lib, "cublasGemmEx")) : nullptr;
  rep.cublas = !o.cublas ? "not timed" : !lib ? why : gemm_ex ? "cublasGemmEx" : "libcublas lacks cublasGemmEx";
  const bool bf16 = o.dt == ActDtype::BF16;

  // The fast GEMM's workspace, as a caller keeps one: its counters zeroed once (every launch
  // leaves them zero).
  const int64_t wsb = fast_gemm_workspace_bytes();
  Dev ws((size_t)wsb, "the GEMM's workspace");
  check(cudaMemset(ws.p, 0, (size_t)fast_gemm_workspace_counter_bytes()), "zeroing the GEMM's workspace");
  for (const BenchShape& sh : o.shapes) {
    int64_t np = 0, kp = 0;
    pad_shape_v2(sh.n, sh.k, np, kp);
    const int64_t rows = kp / kGroup;
    const size_t wbytes = (size_t)(rows * 2 * np) * 4, sbytes = (size_t)(rows * np);
    const size_t one = (wbytes + 255) / 256 * 256 + (sbytes + 255) / 256 * 256;
    const int copies = (int)std::max<size_t>(2, (rotate + one - 1) / one);
    const int64_t mmax = *std::max_element(o.ms.begin(), o.ms.end());
    Dev quant(one * copies, "bench weights"), x((size_t)(mmax * sh.k) * 2, "bench activations"), y((size_t)(mmax * sh.n) * 4, "bench output");
    launch_fill([&] { fill_words<<<1024, 256>>>((uint32_t*)quant.p, one * copies / 4, 7); });
    for (int c = 0; c < copies; ++c)
      launch_fill([&] { fill_scales<<<256, 256>>>((uint8_t*)quant.p + c * one + (wbytes + 255) / 256 * 256, sbytes, 11 + c); });
    launch_fill([&] { fill_act<<<256, 256>>>((uint16_t*)x.p, (size_t)(mmax * sh.k), 5, bf16); });
    // cuBLAS's dense weights, rotated the same way.
    const size_t dense = (size_t)(sh.n * sh.k) * 2;
    const int dcopies = (int)std::max<size_t>(2, (rotate + dense - 1) / dense);
    std::unique_ptr<Dev> wd, yd;
    if (gemm_ex) {
      wd = std::make_unique<Dev>(dense * dcopies, "cuBLAS weights");
      yd = std::make_unique<Dev>((size_t)(mmax * sh.n) * 2, "cuBLAS output");
      launch_fill([&] { fill_act<<<1024, 256>>>((uint16_t*)wd->p, dense * dcopies / 2, 9, bf16); });
    }
    check(cudaDeviceSynchronize(), "generating bench data");
    const float gbits_v = std::ldexp(1.0f / 64, exponent_bias(o.dt) - 7);  // stored as a converter writes it
    uint32_t gbits;
    std::memcpy(&gbits, &gbits_v, 4);
    for (int64_t m : o.ms) {
      BenchRow row;
      row.n = sh.n;
      row.k = sh.k;
      row.m = m;
      row.np = np;
      row.kp = kp;
      row.weight_bytes = (double)(wbytes + sbytes + 4);
      FastGemmDevice a;
      a.x = (const uint16_t*)x.p;
      a.m = m;
      a.k = sh.k;
      a.n = sh.n;
      a.np = np;
      a.kp = kp;
      a.layout = Layout::V2;
      a.dt = o.dt;
      a.global_bits = gbits;
      a.y = (float*)y.p;
      // Our GEMM may take the dense route at large M: cuBLAS's first weight copy is its scratch.
      a.dense = wd && o.dense ? (uint16_t*)wd->p : nullptr;
      a.workspace = ws.p;
      a.workspace_bytes = wsb;
      row.plan = describe_marlin_fast(a, o.tuning);
      row.ours_us = time_calls(o.warmup, o.iters, [&](int i) {
        const char* base = (const char*)quant.p + (size_t)(i % copies) * one;
        a.weight = (const uint32_t*)base;
        a.scales = (const uint8_t*)base + (wbytes + 255) / 256 * 256;
        launch_marlin_fast(a, nullptr, o.tuning);
      });
      if (gemm_ex && m >= 128) {
        // The dense route's first half alone: the Marlin weight dequantized into cuBLAS's first weight copy.
        row.dequant_us = time_calls(2, 10, [&](int i) {
          const char* base = (const char*)quant.p + (size_t)(i % copies) * one;
          a.weight = (const uint32_t*)base;
          a.scales = (const uint8_t*)base + (wbytes + 255) / 256 * 256;
          launch_marlin_dequant(a, (uint16_t*)wd->p, nullptr);
        });
      }
      if (gemm_ex) {
        const float one_f = 1.0f, zero_f = 0.0f;
        const int type = bf16 ? kR16BF : kR16F;
        row.cublas_us = time_calls(o.warmup, o.iters, [&](int i) {
          const char* w = (const char*)wd->p + (size_t)(i % dcopies) * dense;
          const int st = gemm_ex(handle, kOpT, kOpN, (int)sh.n, (int)m, (int)sh.k, &one_f, w, type, (int)sh.k, x.p, type, (int)sh.k,
                                 &zero_f, yd->p, type, (int)sh.n, kCompute32F, kGemmDefault);
          if (st != 0) throw CudaError("cublasGemmEx failed with status " + std::to_string(st));
        });
      }
      rep.rows.push_back(row);
    }
  }
  return rep;
}

}  // namespace cuda
}  // namespace mfp4
