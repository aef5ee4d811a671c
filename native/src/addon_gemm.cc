// Node-API bindings of the GEMMs: verify's (the arithmetic is in gemm_cpu.cc, gemm_cuda.cu and
// gemm_fast_cuda.cu) and bench's (gemm_bench_cuda.cu).
//
//   gemmMarlin({x, m, k, n, np, kp, layout, dtype, weight, scales, global, threads?, kernel?, splitM?, out?}, backend?)
//     -> Promise<Float32Array [m, n]>: X @ W^T read from the converted Marlin tensors
//        (weight I32 [kp/16, 2np], scales processed F8 [kp/16, np], global: its stored bytes,
//        2 under v1 (F16/BF16), 4 under v2 (F32)). kernel: 'fast' (default: on CUDA the
//        tensor-core kernel of gemm_fast_cuda.cu, on the CPU gemm_cpu.cc's register-blocked
//        tile kernel) or 'simple' (gemm_cuda.cu's plain kernel; the CPU's dot-product tiles).
//        scheme: 'nvfp4' (default) or 'mxfp4' (scales E8M0 [kp/32, np], no global; on CUDA
//        always the simple kernel). splitM: [m1, m2, ...] summing to m, the rows of x as
//        consecutive Ms, each its own launch of the CUDA fast kernel on one upload of the weight.
//        out: a Float32Array of m * n to write Y into (and resolve with) instead of a fresh one.
//   gemmReference({x, m, n, k, weight, scale, ws2, dtype, threads?, kernel?, clamp?, out?}, backend?)
//     -> Promise<Float32Array [m, n]>: X @ W^T with W dequantized from the NVFP4 source
//        (weight U8 [n, k/2], scale F8_E4M3 [n, k/16], ws2 = weight_scale_2). kernel (CPU
//        only): 'fast' (default) or 'simple', as for gemmMarlin. clamp: {layout, sf}: the
//        block scales as a conversion keeps them (verify_cpu.h KeptScales: v2's lost scales
//        and -0 as 0), applied to a copy on the pool thread. out: as for gemmMarlin.
//   columnErrors(y, ref, {m, n, cols?, col0?, row0?, refCols?, refRow0?})
//     -> Promise<{rel, column, maxAbs, frobenius, nonFinite}>: the per-column judgement of a
//        GEMM's output against the reference (verify_cpu.h column_errors), on the pool.
//   gemmBench({shapes: [[n, k], ...], ms: [...], dtype, iters?, warmup?})
//     -> Promise<{device, cublas, copyGBs, l2Bytes, rows: [{n, k, m, np, kp, oursUs, cublasUs,
//        dequantUs, weightBytes, plan}]}>: the fast GEMM and cuBLAS timed on the GPU (gemm_bench.h);
//        rejects with "CUDA unavailable: ..." without a usable device.
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
#include "mxfp4_layout.h"
#include "transforms_cpu.h"
#include "scratch.h"
#include "verify_cpu.h"
#if defined(MFP4_WITH_CUDA)
#include "gemm_bench.h"
#include "gemm_cuda.h"
#include "gemm_fast_cuda.h"
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

// scheme: 'nvfp4' (default) or 'mxfp4' (E8M0 scales, group 32, no global scale).
bool is_mxfp4(Napi::Env env, const Napi::Object& o) {
  if (!o.Has("scheme") || o.Get("scheme").IsUndefined()) return false;
  const std::string s = o.Get("scheme").ToString();
  if (s != "nvfp4" && s != "mxfp4") type_error(env, "scheme must be 'nvfp4' or 'mxfp4'");
  return s == "mxfp4";
}

// kernel: 'fast' (default) or 'simple' (the plain kernel each fast one is tested against).
bool simple_kernel(Napi::Env env, const Napi::Object& o) {
  if (!o.Has("kernel") || o.Get("kernel").IsUndefined()) return false;
  const std::string kernel = o.Get("kernel").ToString();
  if (kernel != "fast" && kernel != "simple") type_error(env, "kernel must be 'fast' or 'simple'");
  return kernel == "simple";
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

// The activations as 16-bit words: the caller's bytes where they are aligned (the options,
// kept alive by start(), hold them), else a copy in `copy` (a Buffer may start at any byte).
const uint16_t* act(const Bytes& b, std::shared_ptr<std::vector<uint16_t>>& copy) {
  if (reinterpret_cast<uintptr_t>(b.data) % 2 == 0) return reinterpret_cast<const uint16_t*>(b.data);
  copy = std::make_shared<std::vector<uint16_t>>(b.size / 2);
  std::memcpy(copy->data(), b.data, b.size);
  return copy->data();
}

// The output: opts.out when given (a Float32Array of `count` floats, reused by the caller
// across calls: fresh memory costs page faults and garbage), else a fresh one.
Napi::Float32Array output(Napi::Env env, const Napi::Object& o, int64_t count) {
  if (!o.Has("out") || o.Get("out").IsUndefined()) return Napi::Float32Array::New(env, (size_t)count);
  const Napi::Value v = o.Get("out");
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) type_error(env, "'out' must be a Float32Array");
  Napi::Float32Array out = v.As<Napi::Float32Array>();
  if ((int64_t)out.ElementLength() != count)
    throw Napi::RangeError::New(env, "out holds " + std::to_string(out.ElementLength()) + " floats, expected " + std::to_string(count));
  return out;
}

std::vector<int64_t> int_list(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsArray()) type_error(env, std::string("expected an array for '") + what + "'");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<int64_t> out;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    const Napi::Value e = a.Get(i);
    if (!e.IsNumber()) type_error(env, std::string("expected numbers in '") + what + "'");
    const double d = e.As<Napi::Number>().DoubleValue();
    if (!(d >= 1 && d <= 1e9) || d != (double)(int64_t)d) throw Napi::RangeError::New(env, std::string("'") + what + "' holds " + std::to_string(d) + ", not a positive whole number");
    out.push_back((int64_t)d);
  }
  return out;
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
  a.mxfp4 = is_mxfp4(env, o);
  const int threads = (int)get_int_or(env, o, "threads", 0);
  const bool simple = simple_kernel(env, o);
  try {
    check_marlin_gemm(a);
  } catch (const InvalidInput& e) {
    throw Napi::RangeError::New(env, e.what());
  }
  const Bytes x = get_bytes(env, o, "x"), w = get_bytes(env, o, "weight"), s = get_bytes(env, o, "scales");
  expect_size(env, x, a.m * a.k * 2, "x");
  expect_size(env, w, (a.kp / kGroup) * 2 * a.np * 4, "weight");
  expect_size(env, s, (a.kp / (a.mxfp4 ? kMxGroup : kGroup)) * a.np, "scales");
  if (!a.mxfp4) {
    // MXFP4 has no global scale.
    const Bytes g = get_bytes(env, o, "global");
    expect_size(env, g, global_scale_bytes(a.layout), "global");
    for (size_t i = 0; i < g.size; ++i) a.global_bits |= (uint32_t)g.data[i] << (8 * i);
  }
  // splitM: the rows of x as consecutive Ms, each its own launch of the CUDA fast kernel (whose
  // work split depends on M) on one upload of the weight; the other kernels' rows never depend
  // on M, and they take all rows at once.
  std::vector<int64_t> splits;
  if (o.Has("splitM") && !o.Get("splitM").IsUndefined()) {
    splits = int_list(env, o.Get("splitM"), "splitM");
    int64_t sum = 0;
    for (const int64_t m : splits) sum += m;
    if (sum != a.m) throw Napi::RangeError::New(env, "splitM adds up to " + std::to_string(sum) + ", not m = " + std::to_string(a.m));
  }
  std::shared_ptr<std::vector<uint16_t>> xs;
  a.x = act(x, xs);
  // The packed weight is read as 32-bit words: copy it only if the Buffer is misaligned.
  std::shared_ptr<std::vector<uint32_t>> wcopy;
  if (reinterpret_cast<uintptr_t>(w.data) % 4 != 0) {
    wcopy = std::make_shared<std::vector<uint32_t>>(w.size / 4);
    std::memcpy(wcopy->data(), w.data, w.size);
  }
  a.weight = wcopy ? wcopy->data() : reinterpret_cast<const uint32_t*>(w.data);
  a.scales = s.data;
  Napi::Float32Array out = output(env, o, a.m * a.n);
  a.y = out.Data();
#if !defined(MFP4_WITH_CUDA)
  if (cuda) return rejected(env, kNoCuda);
#endif
  return start(env, o, out, [a, xs, wcopy, cuda, threads, simple, splits]() {
    if (cuda) {
#if defined(MFP4_WITH_CUDA)
      // The tensor-core kernel reads NVFP4 only: MXFP4 takes the simple kernel, which reads
      // E8M0 scales (mxfp4_layout.h).
      if (simple || a.mxfp4) cuda::gemm_marlin(a);
      else cuda::gemm_marlin_fast(a, splits);
#endif
      return;
    }
    gemm_marlin_cpu(a, threads, simple);
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
  a.mxfp4 = is_mxfp4(env, o);
  if (!a.mxfp4 && !o.Get("ws2").IsNumber()) type_error(env, "expected a number for 'ws2'");
  if (!a.mxfp4) a.ws2 = o.Get("ws2").As<Napi::Number>().FloatValue();
  const int threads = (int)get_int_or(env, o, "threads", 0);
  const bool simple = simple_kernel(env, o);
  try {
    check_reference_gemm(a);
  } catch (const InvalidInput& e) {
    throw Napi::RangeError::New(env, e.what());
  }
  const Bytes x = get_bytes(env, o, "x"), w = get_bytes(env, o, "weight"), s = get_bytes(env, o, "scale");
  expect_size(env, x, a.m * a.k * 2, "x");
  expect_size(env, w, a.n * a.k / 2, "weight");
  expect_size(env, s, a.n * (a.k / (a.mxfp4 ? kMxGroup : kGroup)), "scale");
  std::shared_ptr<std::vector<uint16_t>> xs;
  a.x = act(x, xs);
  a.weight = w.data;
  a.scale = s.data;
  // clamp: {layout, sf}: the block scales as a correct conversion keeps them.
  std::shared_ptr<KeptScales> clamp;
  if (o.Has("clamp") && !o.Get("clamp").IsUndefined()) {
    if (!o.Get("clamp").IsObject()) type_error(env, "'clamp' must be {layout, sf}");
    const Napi::Object c = o.Get("clamp").As<Napi::Object>();
    if (a.mxfp4) type_error(env, "'clamp' applies to NVFP4 block scales only");
    clamp = std::make_shared<KeptScales>(get_layout(env, c), get_float_or(c, "sf", 1.0f));
  }
  Napi::Float32Array out = output(env, o, a.m * a.n);
  a.y = out.Data();
#if !defined(MFP4_WITH_CUDA)
  if (cuda) return rejected(env, kNoCuda);
#endif
  return start(env, o, out, [a, xs, clamp, cuda, threads, simple]() {
    ReferenceGemmArgs r = a;
    // A copy only where the clamp changes a byte.
    const int64_t count = r.n * (r.k / kGroup);
    const bool copy = clamp && clamp->changes(r.scale, count);
    Scratch kept(copy ? (size_t)count : 0);
    if (copy) {
      clamp->apply(r.scale, count, kept.data());
      r.scale = kept.data();
    }
    if (cuda) {
#if defined(MFP4_WITH_CUDA)
      cuda::gemm_reference(r);
#endif
      return;
    }
    gemm_reference_cpu(r, threads, simple);
  });
}

// The floats of a Float32Array argument.
const float* floats(Napi::Env env, const Napi::Value& v, const char* what, size_t& count) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    type_error(env, std::string(what) + " must be a Float32Array");
  Napi::Float32Array f = v.As<Napi::Float32Array>();
  count = f.ElementLength();
  return f.Data();
}

// columnErrors(y, ref, {m, n, cols?, col0?, row0?, refCols?, refRow0?}) -> Promise<{rel, column, maxAbs, frobenius, nonFinite}>.
Napi::Value ColumnErrorsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = options(env, info, 2, "columnErrors(y, ref, {m, n, cols?, col0?, row0?, refCols?, refRow0?})");
  size_t ny = 0, nr = 0;
  const float* y = floats(env, info[0], "y", ny);
  const float* ref = floats(env, info[1], "ref", nr);
  ColumnShape s;
  s.m = get_int(env, o, "m");
  s.n = get_int(env, o, "n");
  s.cols = get_int_or(env, o, "cols", s.n);
  s.col0 = get_int_or(env, o, "col0", 0);
  s.row0 = get_int_or(env, o, "row0", 0);
  s.ref_cols = get_int_or(env, o, "refCols", s.n);
  s.ref_row0 = get_int_or(env, o, "refRow0", 0);
  if (s.m < 1 || s.n < 1) throw Napi::RangeError::New(env, "columnErrors needs m and n of at least 1");
  if (s.col0 + s.n > s.cols || (s.row0 + s.m) * s.cols > (int64_t)ny)
    throw Napi::RangeError::New(env, "y holds " + std::to_string(ny) + " floats, too few for rows [" + std::to_string(s.row0) + ", " +
                                         std::to_string(s.row0 + s.m) + ") x columns [" + std::to_string(s.col0) + ", " +
                                         std::to_string(s.col0 + s.n) + ") of " + std::to_string(s.cols));
  if (s.n > s.ref_cols || (s.ref_row0 + s.m) * s.ref_cols > (int64_t)nr)
    throw Napi::RangeError::New(env, "ref holds " + std::to_string(nr) + " floats, too few for rows [" + std::to_string(s.ref_row0) +
                                         ", " + std::to_string(s.ref_row0 + s.m) + ") x " + std::to_string(s.n) + " of " +
                                         std::to_string(s.ref_cols) + " columns");
  auto r = std::make_shared<ColumnErrors>();
  WorkerGuard g(env);
  g.w->Keep(info[0]);
  g.w->Keep(info[1]);
  return g.Start([=]() { *r = column_errors(y, ref, s); },
                 [r](Napi::Env e) -> Napi::Value {
                   Napi::Object out = Napi::Object::New(e);
                   out.Set("rel", r->rel);
                   out.Set("column", (double)r->column);
                   out.Set("maxAbs", r->max_abs);
                   out.Set("frobenius", r->frobenius);
                   out.Set("nonFinite", (double)r->non_finite);
                   return out;
                 });
}

#if defined(MFP4_WITH_CUDA)
// bench's report as a plain JS object.
Napi::Value bench_report(Napi::Env env, const cuda::BenchReport& rep) {
  Napi::Object r = Napi::Object::New(env);
  r.Set("device", rep.device);
  r.Set("cublas", rep.cublas);
  r.Set("copyGBs", rep.copy_gbs);
  r.Set("l2Bytes", (double)rep.l2_bytes);
  Napi::Array rows = Napi::Array::New(env, rep.rows.size());
  for (size_t i = 0; i < rep.rows.size(); ++i) {
    const cuda::BenchRow& b = rep.rows[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("n", (double)b.n);
    o.Set("k", (double)b.k);
    o.Set("m", (double)b.m);
    o.Set("np", (double)b.np);
    o.Set("kp", (double)b.kp);
    o.Set("oursUs", b.ours_us);
    o.Set("cublasUs", b.cublas_us >= 0 ? Napi::Value(Napi::Number::New(env, b.cublas_us)) : env.Null());
    o.Set("dequantUs", b.dequant_us >= 0 ? Napi::Value(Napi::Number::New(env, b.dequant_us)) : env.Null());
    o.Set("weightBytes", b.weight_bytes);
    o.Set("plan", b.plan);
    rows.Set((uint32_t)i, o);
  }
  r.Set("rows", rows);
  return r;
}
#endif

Napi::Value GemmBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "gemmBench({shapes: [[n, k], ...], ms: [...], dtype, iters?, warmup?})";
  if (info.Length() < 1 || !info[0].IsObject()) type_error(env, usage);
  Napi::Object o = info[0].As<Napi::Object>();
  if (!o.Get("shapes").IsArray()) type_error(env, usage);
  Napi::Array shapes = o.Get("shapes").As<Napi::Array>();
#if defined(MFP4_WITH_CUDA)
  cuda::BenchOptions opts;
  for (uint32_t i = 0; i < shapes.Length(); ++i) {
    const std::vector<int64_t> nk = int_list(env, shapes.Get(i), "shapes");
    if (nk.size() != 2) type_error(env, "each shape must be [n, k]");
    opts.shapes.push_back({nk[0], nk[1]});
  }
  opts.ms = int_list(env, o.Get("ms"), "ms");
  if (opts.shapes.empty() || opts.ms.empty()) throw Napi::RangeError::New(env, "gemmBench needs at least one shape and one M");
  opts.dt = get_dtype(env, o);
  opts.iters = (int)get_int_or(env, o, "iters", opts.iters);
  opts.warmup = (int)get_int_or(env, o, "warmup", opts.warmup);
  auto report = std::make_shared<cuda::BenchReport>();
  WorkerGuard g(env);
  return g.Start([opts, report]() { *report = cuda::run_gemm_bench(opts); },
                 [report](Napi::Env e) -> Napi::Value { return bench_report(e, *report); });
#else
  (void)shapes;
  return rejected(env, std::string("CUDA unavailable: ") + kNoCuda);
#endif
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
  exports.Set("columnErrors", Napi::Function::New(env, ColumnErrorsJs));
  exports.Set("gpuGemmEngine", Napi::Function::New(env, GpuGemmEngine));
  exports.Set("gemmBench", Napi::Function::New(env, GemmBench));
}

}  // namespace mfp4::bindings
