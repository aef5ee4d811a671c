// What the binding files share: each JS API area registers its exports (addon.cc's Init calls
// every Register*), and a heavy call runs on one of two backends with the same arguments and
// results (the gpu* twins).
#pragma once
#include <napi.h>

namespace mfp4::bindings {

void RegisterTransforms(Napi::Env env, Napi::Object exports);  // addon_transforms.cc
void RegisterInverses(Napi::Env env, Napi::Object exports);    // addon_inverses.cc
void RegisterGpu(Napi::Env env, Napi::Object exports);         // addon_gpu.cc
void RegisterGemm(Napi::Env env, Napi::Object exports);        // addon_gemm.cc

enum class Backend { Cpu, Cuda };

#if defined(MFP4_WITH_CUDA)
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

// What a GPU call answers in a build without CUDA.
constexpr const char* kNoCuda = "built without CUDA support";

}  // namespace mfp4::bindings
