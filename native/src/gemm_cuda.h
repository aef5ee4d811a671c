// GEMMs on the CUDA device for `verify` (host buffers in, float32 out), twins of gemm_cpu.h.
// Plain C++ so that the bindings compile with the host compiler. Failures throw
// cuda::CudaError ("CUDA unavailable: ...", "CUDA error: ...").
#pragma once
#include <string>

#include "gemm_cpu.h"

namespace mfp4 {
namespace cuda {

// Y = X @ W^T reading the Marlin layout on the device (same arguments as gemm_marlin_cpu).
void gemm_marlin(const MarlinGemmArgs& a);

// The reference: the NVFP4 source dequantized on the device into float32 W [n, k], then
// cuBLAS's SGEMM (libcublas loaded with dlopen at first use), or, when no libcublas can be
// loaded, a plain CUDA kernel. Returns which one ran: "cublas" or "cuda-kernel".
std::string gemm_reference(const ReferenceGemmArgs& a);

// What the reference GEMM uses on this machine: "cublas (<library>)" or
// "cuda-kernel (<why cuBLAS could not be loaded>)". Tries to load cuBLAS once.
std::string reference_engine();

// The dlopen'ed libcublas (for dlsym) and its handle, for the bench's bf16/fp16 comparison;
// nullptr (and why) when none could be loaded. gemm_reference uses per-thread handles of its
// own, so the bench's handle is the bench's alone.
void* cublas_for_bench(void*& handle, std::string& why);

// Whether libcublas could be loaded (with cublasGemmEx and cublasSetStream_v2).
bool cublas_available();

// Enqueues y[m, n] (float32) = alpha · x[m, k] @ w[n, k]^T on a stream with cublasGemmEx, both
// inputs in the activation dtype (fp32 accumulation). Throws CudaError when cuBLAS is missing or
// fails. Serialised with the other users of the one cuBLAS handle.
void dense_gemm_cublas(const uint16_t* w, const uint16_t* x, float* y, int64_t m, int64_t n, int64_t k, ActDtype dt, float alpha,
                       void* stream);

}  // namespace cuda
}  // namespace mfp4
