// The addon's entry point: registers the exports of every JS API area, one binding file each
// (addon_transforms.cc, addon_inverses.cc, addon_gpu.cc, addon_gemm.cc, addon_mxfp4.cc, addon_io.cc,
// addon_sha256.cc). The bindings check
// arguments (napi_args.h) and marshal; heavy calls run on libuv's pool (promise_worker.h) and
// the arithmetic lives in transforms_cpu.cc / transforms_cuda.cu / gemm_*.
#include <napi.h>

#include "addon.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  using namespace mfp4::bindings;
  RegisterTransforms(env, exports);
  RegisterInverses(env, exports);
  RegisterGpu(env, exports);
  RegisterGemm(env, exports);
  RegisterMxfp4(env, exports);
  RegisterIo(env, exports);
  RegisterSha256(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(marlin_fp4, Init)
