// `marlin-fp4 bench`'s measurements (gemm_bench_cuda.cu): the fast Marlin FP4 GEMM and cuBLAS
// (bf16/fp16 weights, x @ W^T) on the same shapes, timed with CUDA events over weights rotated
// through more than twice the L2, plus the device's copy bandwidth. Plain C++.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "gemm_fast_cuda.h"

namespace mfp4 {
namespace cuda {

struct BenchShape {
  int64_t n = 0, k = 0;
};

struct BenchOptions {
  std::vector<BenchShape> shapes;
  std::vector<int64_t> ms;
  ActDtype dt = ActDtype::BF16;
  int warmup = 5;
  int iters = 40;
  FastGemmTuning tuning;  // 0s: the kernel's own choice
  bool cublas = true;     // also time cuBLAS
  bool dense = true;      // let our GEMM take its dense route (dequantize + cuBLAS) at M >= kDenseMinM
};

struct BenchRow {
  int64_t n = 0, k = 0, m = 0, np = 0, kp = 0;
  double ours_us = 0;      // median per call (the zeroing of y included when K is split)
  double cublas_us = -1;   // median per call; -1 when cuBLAS was not timed
  double dequant_us = -1;  // launch_marlin_dequant alone (for the dense-GEMM route at large M)
  double weight_bytes = 0; // packed weight + processed scales + global
  std::string plan;        // the kernel's work split
};

struct BenchReport {
  std::string device;
  std::string cublas;      // library, or why none
  double copy_gbs = 0;     // device-to-device copy, bytes read + written per second / 1e9
  int64_t l2_bytes = 0;
  std::vector<BenchRow> rows;
};

// Throws CudaError when no device is usable.
BenchReport run_gemm_bench(const BenchOptions& o);

}  // namespace cuda
}  // namespace mfp4
