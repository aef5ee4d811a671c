// Node-API bindings of the inverse transforms, which verify and inspect use to read a converted
// checkpoint back (transforms_cpu.h, transforms_cuda.h):
//
//   unpackWeight(data, {n, np?, k, kp?, rowWords?, wordOffset?}) -> Promise<{weight, paddingNonzero}>
//   decodeScales(data, {n, np?, k, kp?, layout, sf?, totalNp?, colOffset?}) -> Promise<{scales, paddingNonzero}>
//   gpuUnpackWeight, gpuDecodeScales: the same on the CUDA device
#include <napi.h>

#include <memory>
#include <string>

#include "addon.h"
#include "napi_args.h"
#include "promise_worker.h"
#include "transforms_cpu.h"
#if defined(MFP4_WITH_CUDA)
#include "transforms_cuda.h"
#endif

using namespace mfp4;
using namespace mfp4::napi_args;

namespace mfp4::bindings {
namespace {

// unpackWeight(data, {n, np, k, kp, rowWords?, wordOffset?}) -> Promise<{weight, paddingNonzero}>.
// rowWords/wordOffset select one part of a concatenated (w13) tensor.
Napi::Value UnpackWeightOn(const Napi::CallbackInfo& info, Backend backend) {
  Napi::Env env = info.Env();
  Napi::Object opt = options(env, info, 1, "unpackWeight(data, {n, np, k, kp, rowWords?, wordOffset?})");
  const int64_t n = get_int(env, opt, "n"), np = get_int_or(env, opt, "np", n);
  const int64_t k = get_int(env, opt, "k"), kp = get_int_or(env, opt, "kp", k);
  const int64_t row_words = get_int_or(env, opt, "rowWords", 2 * np), word_off = get_int_or(env, opt, "wordOffset", 0);
  const Bytes src = get_bytes(env, info[0], "data");
  if (k % kGroup != 0 || kp % kGroup != 0) throw Napi::RangeError::New(env, "K must be a multiple of 16");
  if ((int64_t)src.size != (kp / kGroup) * row_words * 4)
    throw Napi::RangeError::New(env, "packed weight holds " + std::to_string(src.size) + " bytes, expected " +
                                         std::to_string((kp / kGroup) * row_words * 4));
  if (word_off + 2 * np > row_words) throw Napi::RangeError::New(env, "part lies outside the packed row");
  WorkerGuard g(env);
  g.w->Keep(info[0]);
  Napi::Buffer<uint8_t> out = new_output(env, g.w, n * k / 2);
  uint8_t* dst = out.Data();
  auto ref = std::make_shared<Napi::Reference<Napi::Buffer<uint8_t>>>(Napi::Persistent(out));
  auto stray = std::make_shared<int64_t>(0);
  const uint32_t* in = reinterpret_cast<const uint32_t*>(src.data) + word_off;
  const int threads = g_pool_threads;
  return g.Start(
      [=]() {
        if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
          *stray = cuda::run_unpack_weight(in, row_words, n, np, k, kp, dst);
#endif
          return;
        }
        *stray = unpack_weight(in, row_words, n, np, k, kp, dst, threads);
      },
      [ref, stray](Napi::Env env) -> Napi::Value {
        Napi::Object r = Napi::Object::New(env);
        r.Set("weight", ref->Value());
        r.Set("paddingNonzero", (double)*stray);
        return r;
      });
}

// decodeScales(data, {n, np, k, kp, layout, sf, totalNp?, colOffset?}) -> Promise<{scales, paddingNonzero}>.
Napi::Value DecodeScalesOn(const Napi::CallbackInfo& info, Backend backend) {
  Napi::Env env = info.Env();
  Napi::Object opt = options(env, info, 1, "decodeScales(data, {n, np, k, kp, layout, sf, totalNp?, colOffset?})");
  const int64_t n = get_int(env, opt, "n"), np = get_int_or(env, opt, "np", n);
  const int64_t k = get_int(env, opt, "k"), kp = get_int_or(env, opt, "kp", k);
  const int64_t tnp = get_int_or(env, opt, "totalNp", np), col_off = get_int_or(env, opt, "colOffset", 0);
  const Layout layout = get_layout(env, opt);
  const float sf = get_float_or(opt, "sf", 1.0f);
  const Bytes src = get_bytes(env, info[0], "data");
  if (k % kGroup != 0 || kp % kGroup != 0) throw Napi::RangeError::New(env, "K must be a multiple of 16");
  if ((int64_t)src.size != (kp / kGroup) * tnp)
    throw Napi::RangeError::New(env, "processed scales hold " + std::to_string(src.size) + " bytes, expected " +
                                         std::to_string((kp / kGroup) * tnp));
  if (col_off + np > tnp) throw Napi::RangeError::New(env, "part lies outside the processed scales");
  const int64_t unit = scale_unit_rows(layout);
  WorkerGuard g(env);
  g.w->Keep(info[0]);
  Napi::Buffer<uint8_t> out = new_output(env, g.w, n * (k / kGroup));
  uint8_t* dst = out.Data();
  auto ref = std::make_shared<Napi::Reference<Napi::Buffer<uint8_t>>>(Napi::Persistent(out));
  auto stray = std::make_shared<int64_t>(0);
  const uint8_t* in = src.data + unit * col_off;
  const int threads = g_pool_threads;
  return g.Start(
      [=]() {
        if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
          *stray = cuda::run_decode_scales(in, tnp, n, np, k, kp, layout, sf, dst);
#endif
          return;
        }
        *stray = decode_scales(in, tnp, n, np, k, kp, layout, sf, dst, threads);
      },
      [ref, stray](Napi::Env env) -> Napi::Value {
        Napi::Object r = Napi::Object::New(env);
        r.Set("scales", ref->Value());
        r.Set("paddingNonzero", (double)*stray);
        return r;
      });
}


Napi::Value UnpackWeight(const Napi::CallbackInfo& info) { return UnpackWeightOn(info, Backend::Cpu); }
Napi::Value DecodeScales(const Napi::CallbackInfo& info) { return DecodeScalesOn(info, Backend::Cpu); }

// gpu* twins (see addon_transforms.cc).
Napi::Value GpuUnpackWeight(const Napi::CallbackInfo& info) {
  return kWithCuda ? UnpackWeightOn(info, Backend::Cuda) : rejected(info.Env(), kNoCuda);
}
Napi::Value GpuDecodeScales(const Napi::CallbackInfo& info) {
  return kWithCuda ? DecodeScalesOn(info, Backend::Cuda) : rejected(info.Env(), kNoCuda);
}

}  // namespace

void RegisterInverses(Napi::Env env, Napi::Object exports) {
  exports.Set("unpackWeight", Napi::Function::New(env, UnpackWeight));
  exports.Set("decodeScales", Napi::Function::New(env, DecodeScales));
  exports.Set("gpuUnpackWeight", Napi::Function::New(env, GpuUnpackWeight));
  exports.Set("gpuDecodeScales", Napi::Function::New(env, GpuDecodeScales));
}

}  // namespace mfp4::bindings
