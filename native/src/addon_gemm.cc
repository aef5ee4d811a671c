// Node-API bindings of the verification GEMMs; the arithmetic is in gemm_cpu.cc / gemm_cuda.cu.
//
//   gemmMarlin({x, m, k, n, np, kp, layout, dtype, weight, scales, global, threads?}, backend?)
//     -> Promise<Float32Array [m, n]>: X @ W^T read from the converted Marlin tensors
//        (weight I32 [kp/16, 2np], scales processed F8 [kp/16, np], global: its stored bytes,
//        2 under v1 (F16/BF16), 4 under v2 (F32)).
//   gemmReference({x, m, n, k, weight, scale, ws2, dtype, threads?}, backend?)
//     -> Promise<Float32Array [m, n]>: X @ W^T with W dequantized from the NVFP4 source
//        (weight U8 [n, k/2], scale F8_E4M3 [n, k/16], ws2 = weight_scale_2).
//   gpuGemmEngine() -> string: what gemmReference(…, 'cuda') multiplies with,
//     "cublas (<library>)" or "cuda-kernel (<why not cuBLAS>)".
// x is raw float16 / bfloat16 bits (dtype), m*k*2 bytes. backend: 'cpu' (default) or 'cuda'.
#include <napi.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "addon.h"
#include "gemm_cpu.h"
#include "transforms_cpu.h"
#if defined(MFP4_WITH_CUDA)
#include "gemm_cuda.h"
#endif

namespace mfp4::bindings {

using namespace napi_args;

namespace {

// A TypedArray property of an options object.
Bytes get_bytes(Napi::Env env, const Napi::Object& o, const char* key) {
  return napi_args::get_bytes(env, o.Get(key), std::string("'") + key + "'");
}

void expect_size(Napi::Env env, const Bytes& b, int64_t want, const char* what) {
  if ((int64_t)b.size != want)
    throw Napi::RangeError::New(env, std::string(what) + " holds " + std::to_string(b.size) + " bytes, expected " + std::to_string(want));
}

bool cuda_backend(Napi::Env env, const Napi::CallbackInfo& info) {
  if (info.Length() < 2 || info[1].IsUndefined()) return false;
  const std::string s = info[1].ToString();
  if (s == "cpu") return false;
  if (s == "cuda") return true;
  type_error(env, "backend must be 'cpu' or 'cuda'");
}

// Runs work on the pool, keeping the options (whose buffers it reads) and the output alive;
// resolves with the output.
Napi::Value start(Napi::Env env, Napi::Object opts, Napi::Float32Array out, PromiseWorker::Work work) {
  WorkerGuard g(env);
  g.w->Keep(opts);
  g.w->Keep(out);
  auto ref = std::make_shared<Napi::Reference<Napi::Float32Array>>(Napi::Persistent(out));
  return g.Start(std::move(work), [ref](Napi::Env) -> Napi::Value { return ref->Value(); });
}

// Activations copied into aligned storage (a Buffer may start at any byte).
std::shared_ptr<std::vector<uint16_t>> act_copy(const Bytes& b) {
  auto v = std::make_shared<std::vector<uint16_t>>(b.size / 2);
  std::memcpy(v->data(), b.data, b.size);
  return v;
}

Napi::Value GemmMarlin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "gemmMarlin({x, m, k, n, np, kp, layout, dtype, weight, scales, global}, backend?)";
  if (info.Length() < 1 || !info[0].IsObject()) type_error(env, usage);
  Napi::Object o = info[0].As<Napi::Object>();
  const bool cuda = cuda_backend(env, info);
  MarlinGemmArgs a;
  a.m = get_int(env, o, "m");
  a.k = get_int(env, o, "k");
  a.n = get_int(env, o, "n");
  a.np = get_int_or(env, o, "np", a.n);
  a.kp = get_int_or(env, o, "kp", a.k);
  a.layout = get_layout(env, o);
  a.dt = get_dtype(env, o);
  const int threads = (int)get_int_or(env, o, "threads", 0);
  try {
    check_marlin_gemm(a);
  } catch (const InvalidInput& e) {
    throw Napi::RangeError::New(env, e.what());
  }
  const Bytes x = get_bytes(env, o, "x"), w = get_bytes(env, o, "weight"), s = get_bytes(env, o, "scales");
  const Bytes g = get_bytes(env, o, "global");
  expect_size(env, x, a.m * a.k * 2, "x");
  expect_size(env, w, (a.kp / kGroup) * 2 * a.np * 4, "weight");
  expect_size(env, s, (a.kp / kGroup) * a.np, "scales");
  expect_size(env, g, global_scale_bytes(a.layout), "global");
  for (size_t i = 0; i < g.size; ++i) a.global_bits |= (uint32_t)g.data[i] << (8 * i);
  auto xs = act_copy(x);
  // The packed weight is read as 32-bit words: copy it only if the Buffer is misaligned.
  std::shared_ptr<std::vector<uint32_t>> wcopy;
  if (reinterpret_cast<uintptr_t>(w.data) % 4 != 0) {
    wcopy = std::make_shared<std::vector<uint32_t>>(w.size / 4);
    std::memcpy(wcopy->data(), w.data, w.size);
  }
  a.weight = wcopy ? wcopy->data() : reinterpret_cast<const uint32_t*>(w.data);
  a.scales = s.data;
  a.x = xs->data();
  Napi::Float32Array out = Napi::Float32Array::New(env, (size_t)(a.m * a.n));
  a.y = out.Data();
#if !defined(MFP4_WITH_CUDA)
  if (cuda) return rejected(env, kNoCuda);
#endif
  return start(env, o, out, [a, xs, wcopy, cuda, threads]() {
    if (cuda) {
#if defined(MFP4_WITH_CUDA)
      cuda::gemm_marlin(a);
#endif
      return;
    }
    gemm_marlin_cpu(a, threads);
  });
}

Napi::Value GemmReference(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "gemmReference({x, m, n, k, weight, scale, ws2, dtype}, backend?)";
  if (info.Length() < 1 || !info[0].IsObject()) type_error(env, usage);
  Napi::Object o = info[0].As<Napi::Object>();
  const bool cuda = cuda_backend(env, info);
  ReferenceGemmArgs a;
  a.m = get_int(env, o, "m");
  a.n = get_int(env, o, "n");
  a.k = get_int(env, o, "k");
  a.dt = get_dtype(env, o);
  if (!o.Get("ws2").IsNumber()) type_error(env, "expected a number for 'ws2'");
  a.ws2 = o.Get("ws2").As<Napi::Number>().FloatValue();
  const int threads = (int)get_int_or(env, o, "threads", 0);
  try {
    check_reference_gemm(a);
  } catch (const InvalidInput& e) {
    throw Napi::RangeError::New(env, e.what());
  }
  const Bytes x = get_bytes(env, o, "x"), w = get_bytes(env, o, "weight"), s = get_bytes(env, o, "scale");
  expect_size(env, x, a.m * a.k * 2, "x");
  expect_size(env, w, a.n * a.k / 2, "weight");
  expect_size(env, s, a.n * (a.k / kGroup), "scale");
  auto xs = act_copy(x);
  a.x = xs->data();
  a.weight = w.data;
  a.scale = s.data;
  Napi::Float32Array out = Napi::Float32Array::New(env, (size_t)(a.m * a.n));
  a.y = out.Data();
#if !defined(MFP4_WITH_CUDA)
  if (cuda) return rejected(env, kNoCuda);
#endif
  return start(env, o, out, [a, xs, cuda, threads]() {
    if (cuda) {
#if defined(MFP4_WITH_CUDA)
      cuda::gemm_reference(a);
#endif
      return;
    }
    gemm_reference_cpu(a, threads);
  });
}

Napi::Value GpuGemmEngine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#if defined(MFP4_WITH_CUDA)
  return Napi::String::New(env, cuda::reference_engine());
#else
  throw Napi::Error::New(env, kNoCuda);
#endif
}

}  // namespace

void RegisterGemm(Napi::Env env, Napi::Object exports) {
  exports.Set("gemmMarlin", Napi::Function::New(env, GemmMarlin));
  exports.Set("gemmReference", Napi::Function::New(env, GemmReference));
  exports.Set("gpuGemmEngine", Napi::Function::New(env, GpuGemmEngine));
}

}  // namespace mfp4::bindings
