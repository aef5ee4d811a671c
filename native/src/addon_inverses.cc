// Node-API bindings of the inverse transforms, which verify and inspect use to read a converted
// checkpoint back (transforms_cpu.h, transforms_cuda.h):
//
//   unpackWeight(data, {n, np?, k, kp?, rowWords?, wordOffset?}) -> Promise<{weight, paddingNonzero}>
//   decodeScales(data, {n, np?, k, kp?, layout, sf?, totalNp?, colOffset?}) -> Promise<{scales, paddingNonzero}>
//   unpackCompare(data, want, {n, np?, k, kp?, rowWords?, wordOffset?})
//     -> Promise<{count, first, got, paddingNonzero}>: unpackWeight compared with want (U8
//        [n, k/2], the source) without handing the unpacked weight back: the differing bytes,
//        the first (row * k/2 + byte, -1 when none) and its unpacked value
//   gpuUnpackWeight, gpuDecodeScales, gpuUnpackCompare: the same on the CUDA device (the
//   comparison too: only the counts come back)
#include <napi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "addon.h"
#include "transforms_cpu.h"
#if defined(MFP4_WITH_CUDA)
#include "transforms_cuda.h"
#endif

namespace mfp4::bindings {

using namespace napi_args;

namespace {

// Runs an inverse on the pool: `run` (CPU or CUDA) fills a fresh output of out_bytes and returns
// the non-zero bytes it found in the padding; resolves {<key>: output, paddingNonzero}.
Napi::Value start_inverse(Napi::Env env, Napi::Value input, int64_t out_bytes, const char* key,
                          std::function<int64_t(uint8_t*)> run) {
  WorkerGuard g(env);
  g.w->Keep(input);
  Napi::Buffer<uint8_t> out = new_output(env, g.w, out_bytes);
  uint8_t* dst = out.Data();
  auto ref = std::make_shared<Napi::Reference<Napi::Buffer<uint8_t>>>(Napi::Persistent(out));
  auto stray = std::make_shared<int64_t>(0);
  return g.Start([run, dst, stray]() { *stray = run(dst); },
                 [ref, stray, key](Napi::Env env) -> Napi::Value {
                   Napi::Object r = Napi::Object::New(env);
                   r.Set(key, ref->Value());
                   r.Set("paddingNonzero", (double)*stray);
                   return r;
                 });
}

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
  const uint32_t* in = reinterpret_cast<const uint32_t*>(src.data) + word_off;
  const int threads = g_pool_threads;
  return start_inverse(env, info[0], n * k / 2, "weight", [=](uint8_t* dst) -> int64_t {
    if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
      return cuda::run_unpack_weight(in, row_words, n, np, k, kp, dst);
#else
      return 0;  // not reached: OnGpu rejects in a build without CUDA
#endif
    }
    return unpack_weight(in, row_words, n, np, k, kp, dst, threads);
  });
}

// unpackCompare(data, want, {n, np, k, kp, rowWords?, wordOffset?}) -> Promise<{count, first, got, paddingNonzero}>.
Napi::Value UnpackCompareOn(const Napi::CallbackInfo& info, Backend backend) {
  Napi::Env env = info.Env();
  Napi::Object opt = options(env, info, 2, "unpackCompare(data, want, {n, np, k, kp, rowWords?, wordOffset?})");
  const int64_t n = get_int(env, opt, "n"), np = get_int_or(env, opt, "np", n);
  const int64_t k = get_int(env, opt, "k"), kp = get_int_or(env, opt, "kp", k);
  const int64_t row_words = get_int_or(env, opt, "rowWords", 2 * np), word_off = get_int_or(env, opt, "wordOffset", 0);
  const Bytes src = get_bytes(env, info[0], "data");
  const Bytes want = get_bytes(env, info[1], "want");
  if (k % kGroup != 0 || kp % kGroup != 0) throw Napi::RangeError::New(env, "K must be a multiple of 16");
  if ((int64_t)src.size != (kp / kGroup) * row_words * 4)
    throw Napi::RangeError::New(env, "packed weight holds " + std::to_string(src.size) + " bytes, expected " +
                                         std::to_string((kp / kGroup) * row_words * 4));
  if (word_off + 2 * np > row_words) throw Napi::RangeError::New(env, "part lies outside the packed row");
  if ((int64_t)want.size != n * k / 2)
    throw Napi::RangeError::New(env, "source weight holds " + std::to_string(want.size) + " bytes, expected " + std::to_string(n * k / 2));
  const uint32_t* in = reinterpret_cast<const uint32_t*>(src.data) + word_off;
  const uint8_t* w = want.data;
  const int threads = g_pool_threads;
  struct Result {
    int64_t count = 0, first = -1, stray = 0;
    uint8_t got = 0;
  };
  auto r = std::make_shared<Result>();
  WorkerGuard g(env);
  g.w->Keep(info[0]);
  g.w->Keep(info[1]);
  return g.Start(
      [=]() {
        if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
          const cuda::UnpackDiff d = cuda::run_unpack_compare(in, row_words, n, np, k, kp, w);
          r->count = d.count;
          r->first = d.first;
          r->got = d.got;
          r->stray = d.stray;
#endif
          return;
        }
        std::vector<uint8_t> out((size_t)(n * k / 2));
        r->stray = unpack_weight(in, row_words, n, np, k, kp, out.data(), threads);
        for (size_t i = 0; i < out.size(); ++i) {
          if (out[i] == w[i]) continue;
          if (r->count++ == 0) {
            r->first = (int64_t)i;
            r->got = out[i];
          }
        }
      },
      [r](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("count", (double)r->count);
        o.Set("first", (double)r->first);
        o.Set("got", (double)r->got);
        o.Set("paddingNonzero", (double)r->stray);
        return o;
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
  const uint8_t* in = src.data + unit * col_off;
  const int threads = g_pool_threads;
  return start_inverse(env, info[0], n * (k / kGroup), "scales", [=](uint8_t* dst) -> int64_t {
    if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
      return cuda::run_decode_scales(in, tnp, n, np, k, kp, layout, sf, dst);
#else
      return 0;  // not reached: OnGpu rejects in a build without CUDA
#endif
    }
    return decode_scales(in, tnp, n, np, k, kp, layout, sf, dst, threads);
  });
}


}  // namespace

void RegisterInverses(Napi::Env env, Napi::Object exports) {
  exports.Set("unpackWeight", Napi::Function::New(env, OnCpu<UnpackWeightOn>));
  exports.Set("decodeScales", Napi::Function::New(env, OnCpu<DecodeScalesOn>));
  exports.Set("gpuUnpackWeight", Napi::Function::New(env, OnGpu<UnpackWeightOn>));
  exports.Set("gpuDecodeScales", Napi::Function::New(env, OnGpu<DecodeScalesOn>));
  exports.Set("unpackCompare", Napi::Function::New(env, OnCpu<UnpackCompareOn>));
  exports.Set("gpuUnpackCompare", Napi::Function::New(env, OnGpu<UnpackCompareOn>));
}

}  // namespace mfp4::bindings
