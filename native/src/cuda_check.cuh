// One CUDA error check for the GEMM, GEMM-bench and MXFP4 code: a failed call becomes a
// CudaError naming what was being done ("CUDA out of memory …" for allocations, so the
// user reads the cause and not an error code). The transforms' device code has its own in
// cuda_device.cuh, whose out-of-memory message also says how the work was already sliced.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "transforms_cuda.h"

namespace mfp4 {
namespace cuda {

inline void check(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();
  if (e == cudaErrorMemoryAllocation) throw CudaError("CUDA out of memory " + what);
  throw CudaError("CUDA error: " + std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ") while " + what);
}

}  // namespace cuda
}  // namespace mfp4
