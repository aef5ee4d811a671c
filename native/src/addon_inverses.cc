// Node-API bindings of the inverse transforms, which verify and inspect use to read a converted
// checkpoint back (transforms_cpu.h, transforms_cuda.h):
//
//   unpackWeight(data, {n, np?, k, kp?, rowWords?, wordOffset?}) -> Promise<{weight, paddingNonzero}>
//   decodeScales(data, {n, np?, k, kp?, layout, sf?, totalNp?, colOffset?}) -> Promise<{scales, paddingNonzero}>
//   unpackCompare(data, want, {n, np?, k, kp?, rowWords?, wordOffset?})
//     -> Promise<{count, first, got, paddingNonzero}>: unpackWeight compared with want (U8
//        [n, k/2], the source) without handing the unpacked weight back: the differing bytes,
//        the first (row * k/2 + byte, -1 when none) and its unpacked value
//   decodeCompare(data, want, {n, np?, k, kp?, layout, sf?, totalNp?, colOffset?})
//     -> Promise<{count, first, got, lost, paddingNonzero}>: decodeScales compared with what a
//        correct conversion keeps of want (E4M3 [n, k/16], the source's block scales: v2's lost
//        scales and -0 as 0, verify_cpu.h KeptScales), without handing the decoded scales
//        back: the differing bytes, the first (row * k/16 + group, -1 when none), its decoded
//        byte, and how many of want's scales the clamp loses
//   gpuUnpackWeight, gpuDecodeScales, gpuUnpackCompare, gpuDecodeCompare: the same on the CUDA
//   device (the weight's comparison too: only the counts come back; the scales are decoded on
//   the device and compared on the pool thread)
#include <napi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "addon.h"
#include "transforms_cpu.h"
#include "scratch.h"
#include "verify_cpu.h"
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

// How a decoded tensor differs from the source's (unpackCompare, decodeCompare): the diff
// (its `lost` reported by decodeCompare only) and the nonzero padding the decoding found.
struct CompareResult {
  ScaleDiff diff;
  int64_t stray = 0;
};

// Runs `body` on a pool thread with the two inputs (info[0], info[1]) kept alive; resolves with
// {count, first, got, lost (with_lost), paddingNonzero}.
Napi::Value start_compare(const Napi::CallbackInfo& info, bool with_lost, std::function<void(CompareResult&)> body) {
  auto r = std::make_shared<CompareResult>();
  WorkerGuard g(info.Env());
  g.w->Keep(info[0]);
  g.w->Keep(info[1]);
  return g.Start([r, body]() { body(*r); },
                 [r, with_lost](Napi::Env env) -> Napi::Value {
                   Napi::Object o = Napi::Object::New(env);
                   o.Set("count", (double)r->diff.count);
                   o.Set("first", (double)r->diff.first);
                   o.Set("got", (double)r->diff.got);
                   if (with_lost) o.Set("lost", (double)r->diff.lost);
                   o.Set("paddingNonzero", (double)r->stray);
                   return o;
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
  return start_compare(info, false, [=](CompareResult& r) {
    if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
      const cuda::UnpackDiff d = cuda::run_unpack_compare(in, row_words, n, np, k, kp, w);
      r.diff.count = d.count;
      r.diff.first = d.first;
      r.diff.got = d.got;
      r.stray = d.stray;
#endif
      return;
    }
    Scratch unpacked((size_t)(n * k / 2));
    const uint8_t* out = unpacked.data();
    r.stray = unpack_weight(in, row_words, n, np, k, kp, unpacked.data(), threads);
    for (size_t i = 0; i < unpacked.size(); ++i) {
      if (out[i] == w[i]) continue;
      if (r.diff.count++ == 0) {
        r.diff.first = (int64_t)i;
        r.diff.got = out[i];
      }
    }
  });
}

// The processed scales of one part, as decodeScales and decodeCompare read them.
struct ScaleInput {
  int64_t n, np, k, kp, total_np;
  Layout layout;
  float sf;
  const uint8_t* in;  // the part's first byte of unit 0
};

ScaleInput scale_input(Napi::Env env, const Napi::Object& opt, const Bytes& src) {
  ScaleInput s;
  s.n = get_int(env, opt, "n"), s.np = get_int_or(env, opt, "np", s.n);
  s.k = get_int(env, opt, "k"), s.kp = get_int_or(env, opt, "kp", s.k);
  s.total_np = get_int_or(env, opt, "totalNp", s.np);
  const int64_t col_off = get_int_or(env, opt, "colOffset", 0);
  s.layout = get_layout(env, opt);
  s.sf = get_float_or(opt, "sf", 1.0f);
  if (s.k % kGroup != 0 || s.kp % kGroup != 0) throw Napi::RangeError::New(env, "K must be a multiple of 16");
  if ((int64_t)src.size != (s.kp / kGroup) * s.total_np)
    throw Napi::RangeError::New(env, "processed scales hold " + std::to_string(src.size) + " bytes, expected " +
                                         std::to_string((s.kp / kGroup) * s.total_np));
  if (col_off + s.np > s.total_np) throw Napi::RangeError::New(env, "part lies outside the processed scales");
  s.in = src.data + scale_unit_rows(s.layout) * col_off;
  return s;
}

// Decodes the part into dst (E4M3 [n, k/16]) on the backend; returns the non-zero padding bytes.
int64_t decode_on(Backend backend, const ScaleInput& s, uint8_t* dst, int threads) {
  if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
    return cuda::run_decode_scales(s.in, s.total_np, s.n, s.np, s.k, s.kp, s.layout, s.sf, dst);
#else
    return 0;  // not reached: OnGpu rejects in a build without CUDA
#endif
  }
  return decode_scales(s.in, s.total_np, s.n, s.np, s.k, s.kp, s.layout, s.sf, dst, threads);
}

// decodeScales(data, {n, np, k, kp, layout, sf, totalNp?, colOffset?}) -> Promise<{scales, paddingNonzero}>.
Napi::Value DecodeScalesOn(const Napi::CallbackInfo& info, Backend backend) {
  Napi::Env env = info.Env();
  Napi::Object opt = options(env, info, 1, "decodeScales(data, {n, np, k, kp, layout, sf, totalNp?, colOffset?})");
  const ScaleInput s = scale_input(env, opt, get_bytes(env, info[0], "data"));
  const int threads = g_pool_threads;
  return start_inverse(env, info[0], s.n * (s.k / kGroup), "scales",
                       [=](uint8_t* dst) -> int64_t { return decode_on(backend, s, dst, threads); });
}

// decodeCompare(data, want, {n, np, k, kp, layout, sf, totalNp?, colOffset?})
//   -> Promise<{count, first, got, lost, paddingNonzero}>.
Napi::Value DecodeCompareOn(const Napi::CallbackInfo& info, Backend backend) {
  Napi::Env env = info.Env();
  Napi::Object opt = options(env, info, 2, "decodeCompare(data, want, {n, np, k, kp, layout, sf, totalNp?, colOffset?})");
  const ScaleInput s = scale_input(env, opt, get_bytes(env, info[0], "data"));
  const Bytes want = get_bytes(env, info[1], "want");
  const int64_t count = s.n * (s.k / kGroup);
  if ((int64_t)want.size != count)
    throw Napi::RangeError::New(env, "source scales hold " + std::to_string(want.size) + " bytes, expected " + std::to_string(count));
  const uint8_t* w = want.data;
  const int threads = g_pool_threads;
  return start_compare(info, true, [=](CompareResult& r) {
    // The decoded scales live only for the comparison (a tenth of the packed weight).
    Scratch decoded((size_t)count);
    r.stray = decode_on(backend, s, decoded.data(), threads);
    r.diff = compare_kept_scales(decoded.data(), w, count, KeptScales(s.layout, s.sf));
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
  exports.Set("decodeCompare", Napi::Function::New(env, OnCpu<DecodeCompareOn>));
  exports.Set("gpuDecodeCompare", Napi::Function::New(env, OnGpu<DecodeCompareOn>));
}

}  // namespace mfp4::bindings
