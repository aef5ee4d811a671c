// Node-API bindings of the forward transforms (transforms_cpu.h, transforms_cuda.h) and the
// small rules the planner asks for:
//
//   repackWeightStack(experts, {k, kp?, out?, rowBegin?, rowEnd?}) -> Promise<Buffer>
//   processScalesStack(experts, {k, kp?, layout, dtype, sf?, out?, rowBegin?, rowEnd?})
//     -> Promise<{scales, sf, zeroed}>
//   gpuRepackWeightStack, gpuProcessScalesStack: the same on the CUDA device
//   scanScales(data), scanScalesAsync(data), scaleFactor(maxByte, {layout, dtype}), processGlobalScale(ws2, {...}),
//   padShapeV2(n, k), setThreads(n)
//
// experts: Array<Array<{data, n, np?}>>, every expert with the same parts (gate, up).
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "addon.h"
#include "parallel.h"
#include "transforms_cpu.h"
#if defined(MFP4_WITH_CUDA)
#include "transforms_cuda.h"
#endif

namespace mfp4::bindings {

using namespace napi_args;

namespace {

struct PartSpec {
  Bytes bytes;
  int64_t n, np;
};
using Stack = std::vector<std::vector<PartSpec>>;

// parts: Array<{data, n, np}>; `per_row` bytes of source per row of n.
std::vector<PartSpec> get_parts(Napi::Env env, Napi::Value v, int64_t per_row, PromiseWorker* keep) {
  if (!v.IsArray()) type_error(env, "parts must be an array of {data, n, np}");
  Napi::Array arr = v.As<Napi::Array>();
  if (arr.Length() == 0) type_error(env, "parts must not be empty");
  std::vector<PartSpec> parts;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value pv = arr.Get(i);
    if (!pv.IsObject()) type_error(env, "each part must be {data, n, np}");
    Napi::Object o = pv.As<Napi::Object>();
    PartSpec p{get_bytes(env, o.Get("data"), "part.data"), get_int(env, o, "n"), 0};
    p.np = get_int_or(env, o, "np", p.n);
    if ((int64_t)p.bytes.size != p.n * per_row)
      throw Napi::RangeError::New(env, "part " + std::to_string(i) + " holds " + std::to_string(p.bytes.size) +
                                           " bytes, expected " + std::to_string(p.n * per_row) + " for " +
                                           std::to_string(p.n) + " rows");
    keep->Keep(o.Get("data"));
    parts.push_back(p);
  }
  return parts;
}

// Experts: Array<parts>, each expert laid out identically.
Stack get_stack(Napi::Env env, Napi::Value v, int64_t per_row, PromiseWorker* keep) {
  if (!v.IsArray()) type_error(env, "experts must be an array of part arrays");
  Napi::Array arr = v.As<Napi::Array>();
  if (arr.Length() == 0) type_error(env, "experts must not be empty");
  Stack stack;
  for (uint32_t e = 0; e < arr.Length(); ++e) {
    stack.push_back(get_parts(env, arr.Get(e), per_row, keep));
    if (stack[e].size() != stack[0].size()) type_error(env, "experts differ in their parts");
    for (size_t p = 0; p < stack[e].size(); ++p)
      if (stack[e][p].n != stack[0][p].n || stack[e][p].np != stack[0][p].np) type_error(env, "experts differ in shape");
  }
  return stack;
}

int64_t total_np(const std::vector<PartSpec>& parts) {
  int64_t t = 0;
  for (auto& p : parts) t += p.np;
  return t;
}

// The stack as a backend's parts (WeightPart, ScalePart, cuda::HostPart: each {data, n, np}).
template <typename Part>
std::vector<std::vector<Part>> parts_of(const Stack& stack) {
  std::vector<std::vector<Part>> out;
  for (auto& parts : stack) {
    out.emplace_back();
    for (auto& p : parts) out.back().push_back({p.bytes.data, p.n, p.np});
  }
  return out;
}

struct RowRange {
  int64_t begin, end;
  bool sliced;
};

// Optional {rowBegin, rowEnd} (rows of K/16, multiples of `step`): one slice of one tensor,
// so that a big tensor is produced in pieces that are written while still in cache.
RowRange row_range(Napi::Env env, const Napi::Object& opt, int64_t rows, int64_t step, size_t experts) {
  RowRange r{get_int_or(env, opt, "rowBegin", 0), get_int_or(env, opt, "rowEnd", rows), false};
  r.sliced = r.begin != 0 || r.end != rows;
  if (r.begin > r.end || r.end > rows || r.begin % step || r.end % step)
    throw Napi::RangeError::New(env, "rows [" + std::to_string(r.begin) + ", " + std::to_string(r.end) + ") are not a slice of the " +
                                         std::to_string(rows) + " rows" + (step > 1 ? " in steps of " + std::to_string(step) : ""));
  if (r.sliced && experts != 1) throw Napi::RangeError::New(env, "a row range needs one expert");
  if (r.sliced && opt.Has("layout") && !has_number(opt, "sf")) throw Napi::RangeError::New(env, "a row range of scales needs sf");
  return r;
}

// repackWeightStack(experts, {k, kp, out?, rowBegin?, rowEnd?}) -> Promise<Buffer>: I32 [E, kp/16, 2*sum(np)].
// A dense weight is a stack of one expert with one part.
Napi::Value RepackWeightStackOn(const Napi::CallbackInfo& info, Backend backend) {
  Napi::Env env = info.Env();
  Napi::Object opt = options(env, info, 1, "repackWeightStack(experts, {k, kp})");
  const int64_t k = get_int(env, opt, "k"), kp = get_int_or(env, opt, "kp", k);
  if (k % 2 != 0) throw Napi::RangeError::New(env, "K must be even");
  WorkerGuard g(env);
  auto stack = std::make_shared<Stack>(get_stack(env, info[0], k / 2, g.w));
  const RowRange rows = row_range(env, opt, kp / kGroup, 1, stack->size());
  const int64_t row_words = 2 * total_np((*stack)[0]);
  const int64_t slab_words = (rows.end - rows.begin) * row_words;
  const Output out = output_for(env, opt, g.w, slab_words * 4 * (int64_t)stack->size());
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.data);
  auto ref = out.ref;
  const int threads = g_pool_threads;
  return g.Start(
      [stack, k, kp, dst, row_words, slab_words, threads, backend, rows]() {
        if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
          cuda::run_repack_stack(parts_of<cuda::HostPart>(*stack), k, kp, dst, rows.begin, rows.end);
#endif
          return;
        }
        const auto experts = parts_of<WeightPart>(*stack);
        parallel_experts((int64_t)experts.size(), threads, [&](int64_t e, int inner) {
          repack_weight(experts[e], k, kp, dst + e * slab_words, row_words, inner, rows.begin, rows.end);
        });
      },
      [ref](Napi::Env) -> Napi::Value { return ref->Value(); });
}

// processScalesStack(experts, {k, kp, layout, dtype, sf?, out?, rowBegin?, rowEnd?}) -> Promise<{scales, sf, zeroed}>;
// zeroed is null for a row range (the caller scanned the whole tensor).
// Without sf, v2's scale factor is computed over every expert of the stack. A negative or NaN
// scale rejects with a BadBlockScale error (promise_worker.h), on either backend.
Napi::Value ProcessScalesStackOn(const Napi::CallbackInfo& info, Backend backend) {
  Napi::Env env = info.Env();
  Napi::Object opt = options(env, info, 1, "processScalesStack(experts, {k, kp, layout, dtype, sf?})");
  const int64_t k = get_int(env, opt, "k"), kp = get_int_or(env, opt, "kp", k);
  if (k % kGroup != 0) throw Napi::RangeError::New(env, "K = " + std::to_string(k) + " is not a multiple of 16");
  const Layout layout = get_layout(env, opt);
  const ActDtype dt = get_dtype(env, opt);
  const bool has_sf = has_number(opt, "sf");
  const float given_sf = get_float_or(opt, "sf", 1.0f);
  WorkerGuard g(env);
  auto stack = std::make_shared<Stack>(get_stack(env, info[0], k / kGroup, g.w));
  const RowRange rows = row_range(env, opt, kp / kGroup, scale_unit_rows(layout), stack->size());
  const int64_t slab = (rows.end - rows.begin) * total_np((*stack)[0]);
  const Output out = output_for(env, opt, g.w, slab * (int64_t)stack->size());
  uint8_t* dst = out.data;
  auto ref = out.ref;
  auto result = std::make_shared<StackScaleResult>();
  const int threads = g_pool_threads;
  return g.Start(
      [=]() {
        if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
          // A row range is a slice of a tensor the caller has scanned (it passes sf): no scan,
          // zeroed null, as on the CPU.
          const cuda::ScaleRunResult r = cuda::run_scales_stack(parts_of<cuda::HostPart>(*stack), k, kp, layout, dt, has_sf, given_sf,
                                                                dst, rows.begin, rows.end, !rows.sliced);
          if (r.bad_expert >= 0)
            throw locate_bad_scale(parts_of<ScalePart>(*stack), k, r.bad_expert, r.bad_part, r.bad_index, r.bad_byte);
          result->sf = r.sf;
          result->zeroed = rows.sliced ? -1 : r.zeroed;
#endif
          return;
        }
        *result = process_scales_stack(parts_of<ScalePart>(*stack), k, kp, layout, dt, has_sf, given_sf, dst, threads, rows.begin,
                                       rows.end);
      },
      [ref, result](Napi::Env env) -> Napi::Value {
        Napi::Object r = Napi::Object::New(env);
        r.Set("scales", ref->Value());
        r.Set("sf", result->sf);
        r.Set("zeroed", result->zeroed < 0 ? env.Null() : Napi::Number::New(env, (double)result->zeroed));
        return r;
      });
}

// scanScales(data) -> {maxByte, maxValue, badIndex, badByte, histogram}: one pass over the
// block scales that validates them and counts every byte value (v2's losses follow from it).
Napi::Object ScanObject(Napi::Env env, const ScaleStats& s) {
  Napi::Object r = Napi::Object::New(env);
  r.Set("maxByte", s.max_byte);
  r.Set("maxValue", e4m3_to_float(s.max_byte));
  r.Set("badIndex", (double)s.bad_index);
  r.Set("badByte", s.bad_byte);
  Napi::Float64Array hist = Napi::Float64Array::New(env, 256);
  for (int i = 0; i < 256; ++i) hist[i] = (double)s.histogram[i];
  r.Set("histogram", hist);
  return r;
}

Napi::Value ScanScales(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Bytes b = get_bytes(env, info[0], "data");
  return ScanObject(env, scan_scales(b.data, (int64_t)b.size, g_pool_threads));
}

// scanScalesAsync(data) -> Promise<the same object>: the scan on a pool thread. convert scans
// every block-scale tensor beside the conversion (about 1 GB for the 128-expert MoE); on the
// main thread those scans held up every shard's next read and write.
Napi::Value ScanScalesAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Bytes b = get_bytes(env, info[0], "data");
  WorkerGuard g(env);
  g.w->Keep(info[0]);
  auto stats = std::make_shared<ScaleStats>();
  return g.Start([b, stats]() { *stats = scan_scales(b.data, (int64_t)b.size, g_pool_threads); },
                 [stats](Napi::Env e) -> Napi::Value { return ScanObject(e, *stats); });
}

// scaleFactor(maxByte, {layout, dtype}) -> number.
Napi::Value ScaleFactor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) type_error(env, "scaleFactor(maxByte, {layout, dtype})");
  Napi::Object opt = options(env, info, 1, "scaleFactor(maxByte, {layout, dtype})");
  const int mb = info[0].As<Napi::Number>().Int32Value();
  if (mb < 0 || mb > 255) throw Napi::RangeError::New(env, "maxByte must be a byte");
  return Napi::Number::New(env, scale_factor((uint8_t)mb, get_layout(env, opt), get_dtype(env, opt)));
}

// processGlobalScale(ws2, {layout, dtype, sf?}) -> Buffer (global_scale_bytes(layout): F16/BF16 under v1, F32 under v2).
Napi::Value ProcessGlobalScale(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) type_error(env, "processGlobalScale(ws2, {layout, dtype, sf?})");
  Napi::Object opt = options(env, info, 1, "processGlobalScale(ws2, {layout, dtype, sf?})");
  const float sf = get_float_or(opt, "sf", 1.0f);
  uint8_t bytes[4];
  int nbytes = 0;
  try {
    process_global_scale(info[0].As<Napi::Number>().FloatValue(), get_layout(env, opt), get_dtype(env, opt), sf, bytes, nbytes);
  } catch (const InvalidInput& e) {
    throw Napi::Error::New(env, e.what());
  }
  return Napi::Buffer<uint8_t>::Copy(env, bytes, nbytes);
}

// padShapeV2(n, k) -> {np, kp}.
Napi::Value PadShapeV2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsNumber()) type_error(env, "padShapeV2(n, k)");
  int64_t np, kp;
  pad_shape_v2(info[0].As<Napi::Number>().Int64Value(), info[1].As<Napi::Number>().Int64Value(), np, kp);
  Napi::Object r = Napi::Object::New(env);
  r.Set("np", (double)np);
  r.Set("kp", (double)kp);
  return r;
}

// setThreads(n) -> the number of threads the CPU transforms will use (0 = every core).
Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) type_error(env, "setThreads(n)");
  g_pool_threads = info[0].As<Napi::Number>().Int32Value();
  return Napi::Number::New(env, resolve_threads(g_pool_threads));
}

}  // namespace

void RegisterTransforms(Napi::Env env, Napi::Object exports) {
  exports.Set("repackWeightStack", Napi::Function::New(env, OnCpu<RepackWeightStackOn>));
  exports.Set("processScalesStack", Napi::Function::New(env, OnCpu<ProcessScalesStackOn>));
  exports.Set("gpuRepackWeightStack", Napi::Function::New(env, OnGpu<RepackWeightStackOn>));
  exports.Set("gpuProcessScalesStack", Napi::Function::New(env, OnGpu<ProcessScalesStackOn>));
  exports.Set("scanScales", Napi::Function::New(env, ScanScales));
  exports.Set("scanScalesAsync", Napi::Function::New(env, ScanScalesAsync));
  exports.Set("scaleFactor", Napi::Function::New(env, ScaleFactor));
  exports.Set("processGlobalScale", Napi::Function::New(env, ProcessGlobalScale));
  exports.Set("padShapeV2", Napi::Function::New(env, PadShapeV2));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
}

}  // namespace mfp4::bindings
