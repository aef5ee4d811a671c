// Node-API bindings of the MXFP4 scale transform (FORMAT.md 5.1); the arithmetic is in
// mxfp4_cpu.cc / mxfp4_cuda.cu. The weights go through repackWeightStack (NVFP4's repack).
//
//   processMxfp4ScalesStack(experts, {k, kp, out?, rowBegin?, rowEnd?}) -> Promise<Buffer>
//     experts: Array<Array<{data: U8 [n, k/32], n, np}>>; result U8 [E, rows, sum(np)]
//   decodeMxfp4Scales(data, {n, np, k, kp, totalNp?, colOffset?}) -> Promise<{scales, paddingNonzero}>
//   gpuProcessMxfp4ScalesStack, gpuDecodeMxfp4Scales: the same on the CUDA device
#include <memory>
#include <string>
#include <vector>

#include "addon.h"
#include "mxfp4_cpu.h"
#include "mxfp4_layout.h"
#if defined(MFP4_WITH_CUDA)
#include "mxfp4_cuda.h"
#endif

namespace mfp4::bindings {

using namespace napi_args;

namespace {

void check_shapes(Napi::Env env, int64_t n, int64_t np, int64_t k, int64_t kp) {
  try {
    check_mxfp4_shapes(n, np, k, kp);
  } catch (const InvalidInput& e) {
    throw Napi::RangeError::New(env, e.what());
  }
}

Napi::Value ProcessStack(const Napi::CallbackInfo& info, Backend backend) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsArray() || !info[1].IsObject()) type_error(env, "processMxfp4ScalesStack(experts, {k, kp, out?, rowBegin?, rowEnd?})");
  Napi::Object o = info[1].As<Napi::Object>();
  const int64_t k = get_int(env, o, "k"), kp = get_int_or(env, o, "kp", k);
  const int64_t row_begin = get_int_or(env, o, "rowBegin", 0), row_end = get_int_or(env, o, "rowEnd", kp / kMxGroup);
  WorkerGuard g(env);
  auto stack = std::make_shared<std::vector<std::vector<Mxfp4ScalePart>>>();
  Napi::Array experts = info[0].As<Napi::Array>();
  if (experts.Length() == 0) type_error(env, "experts must not be empty");
  int64_t total = 0;
  for (uint32_t e = 0; e < experts.Length(); ++e) {
    if (!experts.Get(e).IsArray()) type_error(env, "each expert must be an array of {data, n, np}");
    Napi::Array parts = experts.Get(e).As<Napi::Array>();
    std::vector<Mxfp4ScalePart> ps;
    int64_t width = 0;
    for (uint32_t p = 0; p < parts.Length(); ++p) {
      if (!parts.Get(p).IsObject()) type_error(env, "each part must be {data, n, np}");
      Napi::Object po = parts.Get(p).As<Napi::Object>();
      const Bytes b = get_bytes(env, po.Get("data"), "part.data");
      Mxfp4ScalePart part{b.data, get_int(env, po, "n"), 0};
      part.np = get_int_or(env, po, "np", part.n);
      check_shapes(env, part.n, part.np, k, kp);
      if ((int64_t)b.size != part.n * (k / kMxGroup))
        throw Napi::RangeError::New(env, "part " + std::to_string(p) + " holds " + std::to_string(b.size) + " bytes, expected " +
                                             std::to_string(part.n * (k / kMxGroup)) + " for " + std::to_string(part.n) + " rows");
      g.w->Keep(po.Get("data"));
      ps.push_back(part);
      width += part.np;
    }
    if (e > 0 && width != total) type_error(env, "experts differ in shape");
    total = width;
    stack->push_back(std::move(ps));
  }
  if (row_begin > row_end || row_end > kp / kMxGroup) throw Napi::RangeError::New(env, "row range outside the processed scales");
  const int64_t rows = row_end - row_begin;
  const Output out = output_for(env, o, g.w, (int64_t)experts.Length() * rows * total);
  uint8_t* dst = out.data;
  return g.Start(
      [stack, k, kp, dst, row_begin, row_end, rows, total, backend]() {
        if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
          cuda::process_mxfp4_scales_stack(*stack, k, kp, dst, row_begin, row_end);
#endif
          return;
        }
        for (size_t e = 0; e < stack->size(); ++e) process_mxfp4_scales((*stack)[e], k, kp, dst + e * rows * total, 0, row_begin, row_end);
      },
      [ref = out.ref](Napi::Env) -> Napi::Value { return ref->Value(); });
}

Napi::Value Decode(const Napi::CallbackInfo& info, Backend backend) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsObject()) type_error(env, "decodeMxfp4Scales(data, {n, np, k, kp, totalNp?, colOffset?})");
  const Bytes src = get_bytes(env, info[0], "data");
  Napi::Object o = info[1].As<Napi::Object>();
  const int64_t n = get_int(env, o, "n"), np = get_int_or(env, o, "np", n), k = get_int(env, o, "k"), kp = get_int_or(env, o, "kp", k);
  const int64_t total = get_int_or(env, o, "totalNp", np), col = get_int_or(env, o, "colOffset", 0);
  check_shapes(env, n, np, k, kp);
  if (col + np > total) throw Napi::RangeError::New(env, "part outside the processed scales");
  if ((int64_t)src.size != (kp / kMxGroup) * total)
    throw Napi::RangeError::New(env, "data holds " + std::to_string(src.size) + " bytes, expected " + std::to_string((kp / kMxGroup) * total));
  WorkerGuard g(env);
  g.w->Keep(info[0]);
  Napi::Buffer<uint8_t> out = new_output(env, g.w, n * (k / kMxGroup));
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out.As<Napi::Object>()));
  auto stray = std::make_shared<int64_t>(0);
  uint8_t* dst = out.Data();
  const uint8_t* in = src.data;
  return g.Start(
      [=]() {
        if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
          *stray = cuda::decode_mxfp4_scales(in, total, col, n, np, k, kp, dst);
#endif
          return;
        }
        *stray = decode_mxfp4_scales(in, total, col, n, np, k, kp, dst, 0);
      },
      [ref, stray](Napi::Env e) -> Napi::Value {
        Napi::Object r = Napi::Object::New(e);
        r.Set("scales", ref->Value());
        r.Set("paddingNonzero", Napi::Number::New(e, (double)*stray));
        return r;
      });
}

}  // namespace

void RegisterMxfp4(Napi::Env env, Napi::Object exports) {
  exports.Set("processMxfp4ScalesStack", Napi::Function::New(env, OnCpu<ProcessStack>));
  exports.Set("gpuProcessMxfp4ScalesStack", Napi::Function::New(env, OnGpu<ProcessStack>));
  exports.Set("decodeMxfp4Scales", Napi::Function::New(env, OnCpu<Decode>));
  exports.Set("gpuDecodeMxfp4Scales", Napi::Function::New(env, OnGpu<Decode>));
}

}  // namespace mfp4::bindings
