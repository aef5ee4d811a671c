// What the binding files share: each JS API area registers its exports (addon.cc's Init calls
// every Register*), and a heavy call runs on one of two backends with the same arguments and
// results (the gpu* twins). Brings promise_worker.h and with it napi_args.h and transforms_cpu.h.
#pragma once
#include <napi.h>

#include "promise_worker.h"

namespace mfp4::bindings {

void RegisterTransforms(Napi::Env env, Napi::Object exports);  // addon_transforms.cc
void RegisterInverses(Napi::Env env, Napi::Object exports);    // addon_inverses.cc
void RegisterGpu(Napi::Env env, Napi::Object exports);         // addon_gpu.cc
void RegisterGemm(Napi::Env env, Napi::Object exports);        // addon_gemm.cc
void RegisterMxfp4(Napi::Env env, Napi::Object exports);       // addon_mxfp4.cc
void RegisterIo(Napi::Env env, Napi::Object exports);          // addon_io.cc
void RegisterSha256(Napi::Env env, Napi::Object exports);      // addon_sha256.cc

enum class Backend { Cpu, Cuda };

#if defined(MFP4_WITH_CUDA)
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

// What a GPU call answers in a build without CUDA.
constexpr const char* kNoCuda = "built without CUDA support";

// A heavy call written once for both backends, as its two exports: the CPU call, and its gpu*
// twin (same arguments and results, computed on the CUDA device), which rejects with "CUDA
// unavailable: <reason>" without a usable device and with kNoCuda in a CPU-only build.
using BackendCall = Napi::Value (*)(const Napi::CallbackInfo&, Backend);
template <BackendCall Call>
Napi::Value OnCpu(const Napi::CallbackInfo& info) {
  return Call(info, Backend::Cpu);
}
template <BackendCall Call>
Napi::Value OnGpu(const Napi::CallbackInfo& info) {
  return kWithCuda ? Call(info, Backend::Cuda) : rejected(info.Env(), kNoCuda);
}

}  // namespace mfp4::bindings
