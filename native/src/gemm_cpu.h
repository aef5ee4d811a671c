// Reference GEMMs on the CPU, Y[M, N] = X[M, K] @ W^T in fp32 accumulation, for `verify`:
//  - gemm_marlin_cpu reads a Marlin FP4 linear as converted (packed weight, processed scales,
//    processed global scale) and decodes every element with gemm_layout.h / layout.h;
//  - gemm_reference_cpu dequantizes the NVFP4 source (FORMAT.md section 1) and multiplies.
// Both take the activations as raw float16 / bfloat16 bits and write float32. Pure C++.
#pragma once
#include <cstdint>

#include "layout.h"

namespace mfp4 {

struct MarlinGemmArgs {
  const uint16_t* x = nullptr;      // [m, k] activation bits (dt)
  int64_t m = 0, k = 0;             // k: real input features (rows >= k/16 of the weight are padding)
  int64_t n = 0;                    // output columns wanted: the first n of np
  int64_t np = 0, kp = 0;           // padded shape of the converted tensor
  Layout layout = Layout::V2;
  ActDtype dt = ActDtype::BF16;
  const uint32_t* weight = nullptr;  // I32 [kp/16, 2*np]
  const uint8_t* scales = nullptr;   // processed F8 [kp/16, np]
  uint32_t global_bits = 0;          // stored global scale (F16/BF16 bits under v1, F32 bits under v2)
  bool mxfp4 = false;                // MXFP4 (FORMAT.md 5): scales are E8M0 [kp/32, np], no global scale
  float* y = nullptr;                // [m, n]
};

// Throws InvalidInput (transforms_cpu.h) for shapes the layout cannot have.
void check_marlin_gemm(const MarlinGemmArgs& a);
// simple: the plain dot-product tile kernel (the test reference) instead of the fast one.
void gemm_marlin_cpu(const MarlinGemmArgs& a, int threads, bool simple = false);

struct ReferenceGemmArgs {
  const uint16_t* x = nullptr;      // [m, k]
  int64_t m = 0, n = 0, k = 0;
  ActDtype dt = ActDtype::BF16;
  const uint8_t* weight = nullptr;  // U8 [n, k/2], even k in the low nibble
  const uint8_t* scale = nullptr;   // F8_E4M3 [n, k/16]
  float ws2 = 1.0f;                 // weight_scale_2
  bool mxfp4 = false;               // MXFP4: scale is E8M0 [n, k/32], ws2 unused
  float* y = nullptr;               // [m, n]
};

void check_reference_gemm(const ReferenceGemmArgs& a);
void gemm_reference_cpu(const ReferenceGemmArgs& a, int threads, bool simple = false);

}  // namespace mfp4
