// GEMMs on the CUDA device for `verify`: Y[M, N] = X[M, K] @ W^T in fp32 accumulation.
//
// gemm_marlin: a correctness-first kernel that reads the converted Marlin FP4 tensors as they
// are (packed I32 weight, processed S0E5M3 scales, processed global scale) and decodes every
// element with the same index math as the CPU (gemm_layout.h: marlin_nibble_source,
// marlin_scale_value, marlin_global_value; layout.h: scale_source). It uses plain fp32 FMAs on
// CUDA cores, not mma.sync: one 256-thread block per (32-row M tile, 64-column Marlin chunk of N)
// walks K in steps of 64 (four K/16 rows of the packed weight), dequantizes the chunk's 512 words
// and 256 scale bytes into shared memory, and each thread accumulates 8 outputs. It is meant to
// be obviously right, not fast.
//
// gemm_reference: the NVFP4 source (FORMAT.md section 1) dequantized on the device into float32
// W [N, K] and multiplied with cuBLAS's SGEMM (default math mode: no TF32), on the call's own
// stream from a stream-ordered allocation, so that verify's lanes overlap. libcublas is loaded
// with dlopen at first use, so the addon loads without it; when none can be loaded, a plain
// shared-memory SGEMM kernel stands in (reference_engine() says which and why).
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_check.cuh"
#include "cuda_device.cuh"
#include "gemm_cuda.h"
#include "gemm_layout.h"
#include "mxfp4_layout.h"
#include "transforms_cpu.h"
#include "transforms_cuda.h"

namespace mfp4 {
namespace cuda {
namespace {

using detail::require_device;  // the transforms' device selection (cuda_device.cuh)

// A device allocation freed on scope exit.
template <typename T>
struct DevBuf {
  T* p = nullptr;
  DevBuf(size_t count, const char* what) {
    check(cudaMalloc(&p, count * sizeof(T) + 16), std::string("allocating ") + std::to_string((count * sizeof(T)) >> 20) + " MB for " + what);
  }
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
};

std::vector<float> activations(const uint16_t* x, int64_t m, int64_t k, ActDtype dt) {
  std::vector<float> xf((size_t)(m * k));
  for (int64_t i = 0; i < m * k; ++i) xf[i] = act_value(x[i], dt);
  return xf;
}

constexpr int kBM = 32;       // rows of X per block
constexpr int kBG = 4;        // K/16 rows of the packed weight per step (64 k)
constexpr int kBK = kBG * 16;
constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) marlin_gemm_kernel(const float* __restrict__ x, int64_t m, int64_t k, int64_t n,
                                                               int64_t np, const uint32_t* __restrict__ weight,
                                                               const uint8_t* __restrict__ scales, Layout layout, float gval,
                                                               bool mxfp4, bool single, float* __restrict__ y) {
  __shared__ float ws[kBK][kTileN];
  __shared__ float xs[kBM][kBK + 1];
  __shared__ float sc[kBG][kTileN];
  const int tid = threadIdx.x;
  const int64_t c = blockIdx.x, m0 = (int64_t)blockIdx.y * kBM;
  const int64_t groups = k / kGroup, row_words = 2 * np;
  const int nn = tid % kTileN, mg = tid / kTileN;  // this thread's column and 8-row group
  float acc[8] = {};
  for (int64_t g0 = 0; g0 < groups; g0 += kBG) {
    // 256 scale bytes cover the step: four rows (v2) or two row pairs (v1) of this chunk.
    {
      int64_t dg, col;
      float v = 0.0f;
      int g;
      if (mxfp4) {
        // MXFP4: K/16 row g0 + unit reads scale row (g0 + unit) / 2 (FORMAT.md 5.1).
        const int unit = tid / kTileN, i = tid % kTileN;
        col = mxfp4_scale_column(i, single);
        g = unit;
        if (g0 + unit < groups) v = mxfp4_kernel_scale(scales[((g0 + unit) / 2) * np + kTileN * c + i]);
      } else if (layout == Layout::V2) {
        const int unit = tid / kTileN, i = tid % kTileN;
        scale_source(i, kTileN, layout, dg, col);
        g = unit;
        if (g0 + unit < groups) v = marlin_scale_value(scales[(g0 + unit) * np + kTileN * c + i]) * gval;
      } else {
        const int unit = tid / (2 * kTileN), i = tid % (2 * kTileN);
        scale_source(i, kTileN, layout, dg, col);
        g = 2 * unit + (int)dg;
        const int64_t h = g0 / 2 + unit;
        if (2 * h < groups) v = marlin_scale_value(scales[h * 2 * np + 2 * kTileN * c + i]) * gval;
      }
      sc[g][col] = v;
    }
    __syncthreads();
    // 512 words: four rows of the chunk's 128 words, two per thread, eight codes each.
    for (int t = tid; t < kBG * (int)kWordsPerChunk; t += kThreads) {
      const int r = t / (int)kWordsPerChunk, wi = t % (int)kWordsPerChunk;
      const uint32_t w = g0 + r < groups ? weight[(g0 + r) * row_words + kWordsPerChunk * c + wi] : 0u;
      for (int i = 0; i < 8; ++i) {
        int dn, dk;
        marlin_nibble_source(wi, i, dn, dk);
        ws[r * 16 + dk][dn] = e2m1_to_float((w >> (4 * i)) & 0xF) * sc[r][dn];
      }
    }
    for (int t = tid; t < kBM * kBK; t += kThreads) {
      const int mm = t / kBK, kk = t % kBK;
      const int64_t gm = m0 + mm, gk = g0 * kGroup + kk;
      xs[mm][kk] = gm < m && gk < k ? x[gm * k + gk] : 0.0f;
    }
    __syncthreads();
    for (int kk = 0; kk < kBK; ++kk) {
      const float w = ws[kk][nn];
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] = fmaf(xs[mg * 8 + j][kk], w, acc[j]);
    }
    __syncthreads();
  }
  const int64_t col = c * kTileN + nn;
  for (int j = 0; j < 8; ++j) {
    const int64_t gm = m0 + mg * 8 + j;
    if (gm < m && col < n) y[gm * n + col] = acc[j];
  }
}

// W[n, k] (float32) from the NVFP4 source: one thread per weight byte (two codes).
__global__ void dequant_source_kernel(const uint8_t* __restrict__ w, const uint8_t* __restrict__ s, int64_t n, int64_t k,
                                      float ws2, bool mxfp4, float* __restrict__ out) {
  const int64_t half = k / 2, total = n * half, group = mxfp4 ? kMxGroup : kGroup;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / half, kb = i % half;
    const uint8_t sb = s[row * (k / group) + (2 * kb) / group];
    const float scale = mxfp4 ? e8m0_to_float(sb) : e4m3_to_float(sb) * ws2;
    const uint8_t b = w[i];
    out[row * k + 2 * kb] = e2m1_to_float(b & 0xF) * scale;
    out[row * k + 2 * kb + 1] = e2m1_to_float(b >> 4) * scale;
  }
}

// The activations as float32 from their float16 / bfloat16 bits (act_value, as the CPU converts
// them): converted where the reference multiplies, so that no float copy is made on the host.
__global__ void activations_kernel(const uint16_t* __restrict__ x, int64_t count, ActDtype dt, float* __restrict__ out) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = act_value(x[i], dt);
}

// The stand-in for cuBLAS: Y[m, n] = X[m, k] @ W[n, k]^T with 16x16 shared-memory tiles.
__global__ void sgemm_nt_kernel(const float* __restrict__ x, const float* __restrict__ w, int64_t m, int64_t n, int64_t k,
                                float* __restrict__ y) {
  __shared__ float xs[16][17], wt[16][17];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row = blockIdx.y * 16 + ty, col = blockIdx.x * 16 + tx;
  const int64_t wrow = blockIdx.x * 16 + ty;
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < k; k0 += 16) {
    xs[ty][tx] = row < m && k0 + tx < k ? x[row * k + k0 + tx] : 0.0f;
    wt[ty][tx] = wrow < n && k0 + tx < k ? w[wrow * k + k0 + tx] : 0.0f;
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < 16; ++kk) acc = fmaf(xs[ty][kk], wt[tx][kk], acc);
    __syncthreads();
  }
  if (row < m && col < n) y[row * n + col] = acc;
}

// cuBLAS through dlopen: only the four entry points used, declared here so that nothing
// links against it.
using cublas_create_t = int (*)(void**);
using cublas_destroy_t = int (*)(void*);
using cublas_sgemm_t = int (*)(void*, int, int, int, int, int, const float*, const float*, int, const float*, int,
                               const float*, float*, int);
using cublas_set_stream_t = int (*)(void*, cudaStream_t);
constexpr int kCublasOpN = 0, kCublasOpT = 1;

struct Cublas {
  std::once_flag once;
  std::mutex lock;  // the shared handle, used by one thread at a time (the dense route)
  void* lib = nullptr;
  // The bench's and the fast GEMM's dense route's; verify's references each use their
  // thread's (thread_cublas).
  void* handle = nullptr;
  cublas_create_t create = nullptr;
  cublas_sgemm_t sgemm = nullptr;
  cublas_set_stream_t set_stream = nullptr;
  void* gemm_ex = nullptr;  // cublasGemmEx, for the fast GEMM's dense route
  std::string library, why;
};

Cublas& cublas() {
  static Cublas c;
  std::call_once(c.once, [] {
    Cublas& cb = c;
    std::vector<std::string> names;
    if (const char* env = std::getenv("MARLIN_FP4_CUBLAS"); env && *env) names.push_back(env);
    for (const char* n : {"libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so",
                          "/usr/local/cuda/lib64/libcublas.so.13", "/usr/local/cuda/lib64/libcublas.so.12",
                          "/usr/local/cuda/lib64/libcublas.so"})
      names.push_back(n);
    std::string errors;
    for (const std::string& n : names) {
      void* lib = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!lib) {
        if (errors.empty()) errors = dlerror();
        continue;
      }
      auto create = reinterpret_cast<cublas_create_t>(dlsym(lib, "cublasCreate_v2"));
      auto sgemm = reinterpret_cast<cublas_sgemm_t>(dlsym(lib, "cublasSgemm_v2"));
      auto set_stream = reinterpret_cast<cublas_set_stream_t>(dlsym(lib, "cublasSetStream_v2"));
      if (!create || !sgemm || !set_stream) {
        errors = n + " lacks cublasCreate_v2/cublasSgemm_v2/cublasSetStream_v2";
        dlclose(lib);
        continue;
      }
      void* handle = nullptr;
      const int st = create(&handle);
      if (st != 0) {
        errors = n + ": cublasCreate failed with status " + std::to_string(st);
        dlclose(lib);
        continue;
      }
      cb.lib = lib;
      cb.handle = handle;
      cb.create = create;
      cb.sgemm = sgemm;
      cb.set_stream = set_stream;
      cb.gemm_ex = dlsym(lib, "cublasGemmEx");
      cb.library = n;
      return;
    }
    cb.why = "no libcublas could be loaded (" + errors + ")";
  });
  return c;
}

// This thread's cuBLAS handle (the shared one belongs to the bench): verify's lanes run
// references side by side on their own streams, and a handle's workspace is not to be shared
// between streams running at once. Created at a thread's first reference, kept for the process.
void* thread_cublas(Cublas& cb) {
  thread_local void* handle = nullptr;
  if (!handle) {
    const int st = cb.create(&handle);
    if (st != 0) throw CudaError("cublasCreate failed with status " + std::to_string(st));
  }
  return handle;
}

}  // namespace

void gemm_marlin(const MarlinGemmArgs& a) {
  check_marlin_gemm(a);
  require_device();
  const std::vector<float> xf = activations(a.x, a.m, a.k, a.dt);
  const int64_t groups = a.k / kGroup;
  // MXFP4 has one scale row per two K/16 rows.
  const size_t wwords = (size_t)(groups * 2 * a.np), sbytes = (size_t)((a.mxfp4 ? (groups + 1) / 2 : groups) * a.np);
  DevBuf<float> dx(xf.size(), "activations"), dy((size_t)(a.m * a.n), "the output");
  DevBuf<uint32_t> dw(wwords, "the packed weight");
  DevBuf<uint8_t> ds(sbytes, "the processed scales");
  check(cudaMemcpy(dx.p, xf.data(), xf.size() * 4, cudaMemcpyHostToDevice), "copying activations to the device");
  check(cudaMemcpy(dw.p, a.weight, wwords * 4, cudaMemcpyHostToDevice), "copying the packed weight to the device");
  check(cudaMemcpy(ds.p, a.scales, sbytes, cudaMemcpyHostToDevice), "copying the processed scales to the device");
  const dim3 grid((unsigned)(a.np / kTileN), (unsigned)((a.m + kBM - 1) / kBM));
  if ((a.m + kBM - 1) / kBM > 65535) throw CudaError("M too large for one launch");
  marlin_gemm_kernel<<<grid, kThreads>>>(dx.p, a.m, a.k, a.n, a.np, dw.p, ds.p, a.layout,
                                         a.mxfp4 ? 1.0f : marlin_global_value(a.global_bits, a.layout, a.dt), a.mxfp4,
                                         mxfp4_single(a.kp), dy.p);
  check(cudaGetLastError(), "launching the Marlin GEMM kernel");
  check(cudaMemcpy(a.y, dy.p, (size_t)(a.m * a.n) * 4, cudaMemcpyDeviceToHost), "running the Marlin GEMM kernel");
}

void* cublas_for_bench(void*& handle, std::string& why) {
  Cublas& cb = cublas();
  handle = cb.handle;
  why = cb.why;
  return cb.handle ? cb.lib : nullptr;
}

bool cublas_available() {
  Cublas& cb = cublas();
  return cb.handle && cb.gemm_ex && cb.set_stream;
}

void dense_gemm_cublas(const uint16_t* w, const uint16_t* x, float* y, int64_t m, int64_t n, int64_t k, ActDtype dt, float alpha,
                       void* stream) {
  using gemm_ex_t = int (*)(void*, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                            const void*, void*, int, int, int, int);
  using set_stream_t = int (*)(void*, void*);
  constexpr int kR32F = 0, kR16F = 2, kR16BF = 14, kCompute32F = 68, kGemmDefault = -1;
  Cublas& cb = cublas();
  if (!cublas_available()) throw CudaError("cuBLAS unavailable for the dense GEMM: " + (cb.why.empty() ? "no cublasGemmEx" : cb.why));
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) throw InvalidInput("shape too large for cuBLAS");
  const float zero = 0.0f;
  const int type = dt == ActDtype::BF16 ? kR16BF : kR16F;
  std::lock_guard<std::mutex> hold(cb.lock);
  int st = reinterpret_cast<set_stream_t>(cb.set_stream)(cb.handle, stream);
  // Column-major view: y^T [n, m] = (w [k, n] col-major)^T · x^T [k, m].
  if (st == 0)
    st = reinterpret_cast<gemm_ex_t>(cb.gemm_ex)(cb.handle, kCublasOpT, kCublasOpN, (int)n, (int)m, (int)k, &alpha, w, type, (int)k, x,
                                                 type, (int)k, &zero, y, kR32F, (int)n, kCompute32F, kGemmDefault);
  if (st == 0) st = reinterpret_cast<set_stream_t>(cb.set_stream)(cb.handle, nullptr);
  if (st != 0) throw CudaError("cublasGemmEx failed with status " + std::to_string(st));
}

std::string reference_engine() {
  Cublas& cb = cublas();
  return cb.handle ? "cublas (" + cb.library + ")" : "cuda-kernel (" + cb.why + ")";
}

std::string gemm_reference(const ReferenceGemmArgs& a) {
  check_reference_gemm(a);
  require_device();
  const int64_t xhb = a.m * a.k * 2, xb = a.m * a.k * 4, yb = a.m * a.n * 4, wfb = a.n * a.k * 4;
  const int64_t wbytes = a.n * a.k / 2, sbytes = a.n * (a.k / (a.mxfp4 ? kMxGroup : kGroup));
  // One stream-ordered allocation on this call's own stream: calls from several threads
  // overlap, and nothing synchronizes the device as cudaMalloc / cudaFree would.
  detail::Stream st;
  detail::Arena arena(st.s);
  const int64_t bytes = detail::align_up(xhb) + detail::align_up(xb) + detail::align_up(yb) + detail::align_up(wfb) +
                        detail::align_up(wbytes) + detail::align_up(sbytes);
  detail::reserve_whole(arena, st.s, bytes, "the reference GEMM");
  uint16_t* dxh = arena.take<uint16_t>(xhb);
  float* dx = arena.take<float>(xb);
  float* dy = arena.take<float>(yb);
  float* dwf = arena.take<float>(wfb);
  uint8_t* dw = arena.take<uint8_t>(wbytes);
  uint8_t* ds = arena.take<uint8_t>(sbytes);
  detail::copy_rows(dxh, xhb, a.x, xhb, xhb, 1, cudaMemcpyHostToDevice, st.s, "activations");
  detail::copy_rows(dw, wbytes, a.weight, wbytes, wbytes, 1, cudaMemcpyHostToDevice, st.s, "the source weight");
  detail::copy_rows(ds, sbytes, a.scale, sbytes, sbytes, 1, cudaMemcpyHostToDevice, st.s, "the source scales");
  activations_kernel<<<256, 256, 0, st.s>>>(dxh, a.m * a.k, a.dt, dx);
  check(cudaGetLastError(), "launching the activations kernel");
  dequant_source_kernel<<<1024, 256, 0, st.s>>>(dw, ds, a.n, a.k, a.ws2, a.mxfp4, dwf);
  check(cudaGetLastError(), "launching the dequantization kernel");
  Cublas& cb = cublas();
  std::string engine;
  if (cb.handle && a.n < (1ll << 31) && a.k < (1ll << 31) && a.m < (1ll << 31)) {
    void* handle = thread_cublas(cb);
    const float one = 1.0f, zero = 0.0f;
    int rc = cb.set_stream(handle, st.s);
    if (rc != 0) throw CudaError("cublasSetStream failed with status " + std::to_string(rc));
    // Column-major view: Y^T [n, m] = (W as a k x n matrix)^T @ (X as a k x m matrix).
    rc = cb.sgemm(handle, kCublasOpT, kCublasOpN, (int)a.n, (int)a.m, (int)a.k, &one, dwf, (int)a.k, dx, (int)a.k, &zero, dy, (int)a.n);
    // The call's stream is destroyed on return: the handle goes back to the default stream.
    const int reset = cb.set_stream(handle, nullptr);
    if (rc != 0) throw CudaError("cuBLAS SGEMM failed with status " + std::to_string(rc));
    if (reset != 0) throw CudaError("cublasSetStream failed with status " + std::to_string(reset));
    engine = "cublas";
  } else {
    const dim3 grid((unsigned)((a.n + 15) / 16), (unsigned)((a.m + 15) / 16));
    sgemm_nt_kernel<<<grid, dim3(16, 16), 0, st.s>>>(dx, dwf, a.m, a.n, a.k, dy);
    check(cudaGetLastError(), "launching the reference GEMM kernel");
    engine = "cuda-kernel";
  }
  detail::copy_rows(a.y, yb, dy, yb, yb, 1, cudaMemcpyDeviceToHost, st.s, "the reference GEMM's output");
  detail::sync(st.s, "running the reference GEMM");
  return engine;
}

}  // namespace cuda
}  // namespace mfp4
