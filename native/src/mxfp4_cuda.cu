// CUDA twin of mxfp4_cpu.cc: one thread per processed byte, each placed by
// mxfp4_layout.h's mxfp4_scale_column (the CPU's index function), so both backends give the
// same bytes. The scales are 1/16 of the packed weights' size: simple copies in and out per
// expert are enough.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "cuda_check.cuh"
#include "mxfp4_cuda.h"
#include "mxfp4_layout.h"
#include "transforms_cuda.h"

namespace mfp4 {
namespace cuda {
namespace {

void require_device() {
  std::string why;
  if (!cuda_available(why)) throw CudaError("CUDA unavailable: " + why);
  DeviceInfo d;
  device_info(d);
  check(cudaSetDevice(d.ordinal), "selecting CUDA device " + std::to_string(d.ordinal));
}

struct DevBytes {
  uint8_t* p = nullptr;
  explicit DevBytes(size_t n, const char* what) { check(cudaMalloc(&p, n + 16), std::string("allocating ") + std::to_string(n >> 20) + " MB for " + what); }
  ~DevBytes() {
    if (p) cudaFree(p);
  }
  DevBytes(const DevBytes&) = delete;
  DevBytes& operator=(const DevBytes&) = delete;
};

// out[(r - row_begin) * total + i] for this part's np columns, rows [row_begin, row_end).
__global__ void process_kernel(const uint8_t* __restrict__ in, int64_t n, int64_t np, int64_t g, bool single, int64_t row_begin,
                               int64_t rows, int64_t total, uint8_t* __restrict__ out) {
  const int64_t count = rows * np;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < count; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t ri = t / np, i = t % np, r = row_begin + ri;
    const int64_t col = mxfp4_scale_column(i, single);
    out[ri * total + i] = col < n && r < g ? in[col * g + r] : 0;
  }
}

__global__ void decode_kernel(const uint8_t* __restrict__ in, int64_t total, int64_t n, int64_t np, int64_t g, int64_t gp,
                              bool single, uint8_t* __restrict__ out, unsigned long long* stray) {
  const int64_t count = gp * np;
  unsigned long long here = 0;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < count; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = t / np, i = t % np;
    const int64_t col = mxfp4_scale_column(i, single);
    const uint8_t b = in[r * total + i];
    if (col < n && r < g) out[col * g + r] = b;
    else here += b != 0;
  }
  if (here) atomicAdd(stray, here);
}

unsigned blocks_for(int64_t count) { return (unsigned)std::min<int64_t>((count + 255) / 256, 4096); }

}  // namespace

void process_mxfp4_scales_stack(const std::vector<std::vector<Mxfp4ScalePart>>& experts, int64_t k, int64_t kp, uint8_t* dst,
                                int64_t row_begin, int64_t row_end) {
  const int64_t g = k / kMxGroup, gp = kp / kMxGroup;
  const int64_t rows_end = row_end < 0 ? gp : row_end;
  int64_t total = 0;
  for (const auto& p : experts.at(0)) {
    check_mxfp4_shapes(p.n, p.np, k, kp);
    total += p.np;
  }
  if (row_begin < 0 || row_begin > rows_end || rows_end > gp) throw InvalidInput("row range outside the processed scales");
  const int64_t rows = rows_end - row_begin;
  require_device();
  const bool single = mxfp4_single(kp);
  DevBytes dout((size_t)(rows * total), "the processed scales");
  int64_t max_in = 0;
  for (const auto& p : experts[0]) max_in = std::max(max_in, p.n * g);
  DevBytes din((size_t)max_in, "the source scales");
  for (size_t e = 0; e < experts.size(); ++e) {
    int64_t off = 0;
    for (const auto& p : experts[e]) {
      check(cudaMemcpy(din.p, p.data, (size_t)(p.n * g), cudaMemcpyHostToDevice), "copying scales to the device");
      if (rows > 0) process_kernel<<<blocks_for(rows * p.np), 256>>>(din.p, p.n, p.np, g, single, row_begin, rows, total, dout.p + off);
      check(cudaGetLastError(), "launching the MXFP4 scale kernel");
      off += p.np;
    }
    check(cudaMemcpy(dst + e * rows * total, dout.p, (size_t)(rows * total), cudaMemcpyDeviceToHost), "running the MXFP4 scale kernel");
  }
}

int64_t decode_mxfp4_scales(const uint8_t* src, int64_t total_np, int64_t col_offset, int64_t n, int64_t np, int64_t k,
                            int64_t kp, uint8_t* dst) {
  check_mxfp4_shapes(n, np, k, kp);
  if (col_offset + np > total_np) throw InvalidInput("part outside the processed scales");
  const int64_t g = k / kMxGroup, gp = kp / kMxGroup;
  require_device();
  DevBytes din((size_t)(gp * total_np), "the processed scales"), dout((size_t)(n * g), "the decoded scales");
  DevBytes dstray(sizeof(unsigned long long), "a counter");
  check(cudaMemcpy(din.p, src, (size_t)(gp * total_np), cudaMemcpyHostToDevice), "copying scales to the device");
  check(cudaMemset(dstray.p, 0, sizeof(unsigned long long)), "clearing a counter");
  decode_kernel<<<blocks_for(gp * np), 256>>>(din.p + col_offset, total_np, n, np, g, gp, mxfp4_single(kp), dout.p,
                                               reinterpret_cast<unsigned long long*>(dstray.p));
  check(cudaGetLastError(), "launching the MXFP4 decode kernel");
  unsigned long long stray = 0;
  check(cudaMemcpy(dst, dout.p, (size_t)(n * g), cudaMemcpyDeviceToHost), "decoding MXFP4 scales");
  check(cudaMemcpy(&stray, dstray.p, sizeof stray, cudaMemcpyDeviceToHost), "reading a counter");
  return (int64_t)stray;
}

}  // namespace cuda
}  // namespace mfp4
