// Node-API bindings: argument checking and marshalling only; the transforms live in
// transforms_cpu.cc (and transforms_cuda.cu). Heavy calls run on libuv's pool (Promise) and
// fan out to all cores, or to the GPU for their gpu* twins (same arguments, same results).
#include <napi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define MFP4_HAVE_MMAP 1
#endif

#include "addon_gemm.h"
#include "parallel.h"
#include "napi_args.h"
#include "transforms_cpu.h"
#if defined(MFP4_WITH_CUDA)
#include "transforms_cuda.h"
#endif

using namespace mfp4;
using namespace mfp4::napi_args;

namespace {

int g_threads = 0;  // 0 = every core

// Runs `work` off the main thread; keeps the JS inputs alive until it settles.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;
  using Done = std::function<Napi::Value(Napi::Env)>;
  explicit PromiseWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  void Keep(Napi::Value v) { keep_.push_back(Napi::Persistent(v.As<Napi::Object>())); }
  // Starts `work` on the pool; `done` builds the resolution value back on the main thread.
  Napi::Promise Start(Work work, Done done) {
    work_ = std::move(work);
    done_ = std::move(done);
    Queue();
    return deferred_.Promise();
  }
  void Execute() override {
    try {
      work_();
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(done_(Env())); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  Done done_;
  std::vector<Napi::ObjectReference> keep_;
};

struct PartSpec {
  Bytes bytes;
  int64_t n, np;
};

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
std::vector<std::vector<PartSpec>> get_stack(Napi::Env env, Napi::Value v, int64_t per_row, PromiseWorker* keep) {
  if (!v.IsArray()) type_error(env, "experts must be an array of part arrays");
  Napi::Array arr = v.As<Napi::Array>();
  if (arr.Length() == 0) type_error(env, "experts must not be empty");
  std::vector<std::vector<PartSpec>> stack;
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

std::string scale_error(const ScaleStats& s, int64_t groups, int64_t row_offset) {
  const int64_t row = s.bad_index / groups + row_offset, grp = s.bad_index % groups;
  const std::string what = e4m3_is_nan(s.bad_byte) ? "NaN" : "negative (" + std::to_string(e4m3_to_float(s.bad_byte)) + ")";
  return "block scale [" + std::to_string(row) + ", " + std::to_string(grp) + "] is " + what +
         "; Marlin stores scales without a sign";
}

// The CPU's message for the first negative or NaN scale that the GPU scan found.
[[maybe_unused]] std::string stack_scale_error(const std::vector<std::vector<PartSpec>>& stack, int64_t k, int64_t e,
                                               int64_t p, int64_t index, uint8_t byte) {
  int64_t row_offset = 0;
  for (int64_t q = 0; q < p; ++q) row_offset += stack[e][q].n;
  ScaleStats s;
  s.bad_index = index;
  s.bad_byte = byte;
  const std::string where = stack.size() > 1 ? "expert " + std::to_string(e) + ": " : "";
  return where + scale_error(s, k / kGroup, row_offset);
}

struct StackStats {
  uint8_t max_byte = 0;
  int64_t histogram[256] = {};
};

// Validates every part's scales; returns the largest scale byte and the byte histogram.
StackStats scan_parts(const std::vector<std::vector<PartSpec>>& stack, int64_t k, int threads) {
  const int64_t groups = k / kGroup;
  StackStats st;
  for (size_t e = 0; e < stack.size(); ++e) {
    int64_t row_offset = 0;
    for (auto& p : stack[e]) {
      const ScaleStats s = scan_scales(p.bytes.data, (int64_t)p.bytes.size, threads);
      if (s.bad_index >= 0) {
        std::string where = stack.size() > 1 ? "expert " + std::to_string(e) + ": " : "";
        throw InvalidInput(where + scale_error(s, groups, row_offset));
      }
      if (s.max_byte > st.max_byte) st.max_byte = s.max_byte;
      for (int b = 0; b < 256; ++b) st.histogram[b] += s.histogram[b];
      row_offset += p.n;
    }
  }
  return st;
}

std::vector<WeightPart> weight_parts(const std::vector<PartSpec>& ps) {
  std::vector<WeightPart> out;
  for (auto& p : ps) out.push_back({p.bytes.data, p.n, p.np});
  return out;
}

std::vector<ScalePart> scale_parts(const std::vector<PartSpec>& ps) {
  std::vector<ScalePart> out;
  for (auto& p : ps) out.push_back({p.bytes.data, p.n, p.np});
  return out;
}

// Owns a worker until Start() hands it to libuv, so argument errors thrown while the
// inputs are parsed do not leak it.
struct WorkerGuard {
  PromiseWorker* w;
  explicit WorkerGuard(Napi::Env env) : w(new PromiseWorker(env)) {}
  ~WorkerGuard() { delete w; }
  Napi::Promise Start(PromiseWorker::Work work, PromiseWorker::Done done) {
    PromiseWorker* started = w;
    w = nullptr;
    return started->Start(std::move(work), std::move(done));
  }
};

Napi::Buffer<uint8_t> new_output(Napi::Env env, PromiseWorker* w, int64_t bytes) {
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, (size_t)bytes);
  w->Keep(out);
  return out;
}

// The result goes into opts.out when the caller passes one of the right size: reusing an
// output buffer across tensors saves the page faults of fresh memory, which cost more than
// the repack itself.
struct Output {
  uint8_t* data;
  std::shared_ptr<Napi::ObjectReference> ref;
};

Output output_for(Napi::Env env, const Napi::Object& opt, PromiseWorker* w, int64_t bytes) {
  Napi::Object holder;
  uint8_t* data;
  if (opt.Has("out") && !opt.Get("out").IsUndefined()) {
    Napi::Value v = opt.Get("out");
    const Bytes b = get_bytes(env, v, "out");
    if ((int64_t)b.size != bytes)
      throw Napi::RangeError::New(env, "out holds " + std::to_string(b.size) + " bytes, expected " + std::to_string(bytes));
    holder = v.As<Napi::Object>();
    data = const_cast<uint8_t*>(b.data);
  } else {
    Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::New(env, (size_t)bytes);
    holder = buf;
    data = buf.Data();
  }
  w->Keep(holder);
  return {data, std::make_shared<Napi::ObjectReference>(Napi::Persistent(holder))};
}

Napi::Object options(Napi::Env env, const Napi::CallbackInfo& info, size_t idx, const char* usage) {
  if (info.Length() <= idx || !info[idx].IsObject()) type_error(env, usage);
  return info[idx].As<Napi::Object>();
}

enum class Backend { Cpu, Cuda };

#if defined(MFP4_WITH_CUDA)
cuda::HostStack host_stack(const std::vector<std::vector<PartSpec>>& stack) {
  cuda::HostStack out;
  for (auto& parts : stack) {
    out.emplace_back();
    for (auto& p : parts) out.back().push_back({p.bytes.data, p.n, p.np});
  }
  return out;
}
#endif

// The gpu* twins in a build without CUDA: a rejected promise, whatever the arguments.
Napi::Value no_cuda(Napi::Env env) {
  Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
  d.Reject(Napi::Error::New(env, "built without CUDA support").Value());
  return d.Promise();
}

struct RowRange {
  int64_t begin, end;
  bool sliced;
};

// Optional {rowBegin, rowEnd} (rows of K/16, multiples of `step`): one slice of one tensor,
// so that a big tensor is produced in pieces that are written while still in cache.
RowRange row_range(Napi::Env env, const Napi::Object& opt, int64_t rows, int64_t step, size_t experts, Backend backend) {
  RowRange r{get_int_or(env, opt, "rowBegin", 0), get_int_or(env, opt, "rowEnd", rows), false};
  r.sliced = r.begin != 0 || r.end != rows;
  if (r.begin > r.end || r.end > rows || r.begin % step || r.end % step)
    throw Napi::RangeError::New(env, "rows [" + std::to_string(r.begin) + ", " + std::to_string(r.end) + ") are not a slice of the " +
                                         std::to_string(rows) + " rows" + (step > 1 ? " in steps of " + std::to_string(step) : ""));
  (void)backend;  // both backends take row ranges
  if (r.sliced && experts != 1) throw Napi::RangeError::New(env, "a row range needs one expert");
  if (r.sliced && opt.Has("layout") && !(opt.Has("sf") && opt.Get("sf").IsNumber()))
    throw Napi::RangeError::New(env, "a row range of scales needs sf");
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
  auto stack = std::make_shared<std::vector<std::vector<PartSpec>>>(get_stack(env, info[0], k / 2, g.w));
  const RowRange rows = row_range(env, opt, kp / kGroup, 1, stack->size(), backend);
  const int64_t row_words = 2 * total_np((*stack)[0]);
  const int64_t slab_words = (rows.end - rows.begin) * row_words;
  const Output out = output_for(env, opt, g.w, slab_words * 4 * (int64_t)stack->size());
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.data);
  auto ref = out.ref;
  const int threads = g_threads;
  return g.Start(
      [stack, k, kp, dst, row_words, slab_words, threads, backend, rows]() {
        if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
          cuda::run_repack_stack(host_stack(*stack), k, kp, dst, rows.begin, rows.end);
#endif
          return;
        }
        for (size_t e = 0; e < stack->size(); ++e)
          repack_weight(weight_parts((*stack)[e]), k, kp, dst + e * slab_words, row_words, threads, rows.begin, rows.end);
      },
      [ref](Napi::Env) -> Napi::Value { return ref->Value(); });
}

// processScalesStack(experts, {k, kp, layout, dtype, sf?, out?, rowBegin?, rowEnd?}) -> Promise<{scales, sf, zeroed}>;
// zeroed is null for a row range (the caller scanned the whole tensor).
// Without sf, v2's scale factor is computed over every expert of the stack.
Napi::Value ProcessScalesStackOn(const Napi::CallbackInfo& info, Backend backend) {
  Napi::Env env = info.Env();
  Napi::Object opt = options(env, info, 1, "processScalesStack(experts, {k, kp, layout, dtype, sf?})");
  const int64_t k = get_int(env, opt, "k"), kp = get_int_or(env, opt, "kp", k);
  if (k % kGroup != 0) throw Napi::RangeError::New(env, "K = " + std::to_string(k) + " is not a multiple of 16");
  const Layout layout = get_layout(env, opt);
  const ActDtype dt = get_dtype(env, opt);
  const bool has_sf = opt.Has("sf") && opt.Get("sf").IsNumber();
  const float given_sf = has_sf ? opt.Get("sf").As<Napi::Number>().FloatValue() : 1.0f;
  WorkerGuard g(env);
  auto stack = std::make_shared<std::vector<std::vector<PartSpec>>>(get_stack(env, info[0], k / kGroup, g.w));
  const RowRange rows = row_range(env, opt, kp / kGroup, scale_unit_rows(layout), stack->size(), backend);
  const int64_t slab = (rows.end - rows.begin) * total_np((*stack)[0]);
  const Output out = output_for(env, opt, g.w, slab * (int64_t)stack->size());
  uint8_t* dst = out.data;
  auto ref = out.ref;
  struct Result {
    float sf = 1.0f;
    int64_t zeroed = 0;
  };
  auto result = std::make_shared<Result>();
  const int threads = g_threads;
  return g.Start(
      [=]() {
        if (backend == Backend::Cuda) {
#if defined(MFP4_WITH_CUDA)
          // A row range is a slice of a tensor the caller has scanned (it passes sf): no scan,
          // zeroed null, as on the CPU.
          const cuda::ScaleRunResult r = cuda::run_scales_stack(host_stack(*stack), k, kp, layout, dt, has_sf, given_sf,
                                                                dst, rows.begin, rows.end, !rows.sliced);
          if (r.bad_expert >= 0)
            throw InvalidInput(stack_scale_error(*stack, k, r.bad_expert, r.bad_part, r.bad_index, r.bad_byte));
          result->sf = r.sf;
          result->zeroed = rows.sliced ? -1 : r.zeroed;
#endif
          return;
        }
        const int64_t u = scale_unit_rows(layout);
        if (rows.sliced) {
          // A slice of a tensor the caller has already scanned (it passes sf): scanning the whole
          // input again for every slice would cost more than the slice itself.
          result->sf = given_sf;
          result->zeroed = -1;
          process_scales(scale_parts((*stack)[0]), k, kp, layout, given_sf, dst, threads, rows.begin / u, rows.end / u);
          return;
        }
        const StackStats st = scan_parts(*stack, k, threads);
        const float sf = has_sf ? given_sf : scale_factor(st.max_byte, layout, dt);
        result->sf = sf;
        result->zeroed = count_lost_scales(st.histogram, layout, sf);
        for (size_t e = 0; e < stack->size(); ++e)
          process_scales(scale_parts((*stack)[e]), k, kp, layout, sf, dst + e * slab, threads);
      },
      [ref, result](Napi::Env env) -> Napi::Value {
        Napi::Object r = Napi::Object::New(env);
        r.Set("scales", ref->Value());
        r.Set("sf", result->sf);
        r.Set("zeroed", result->zeroed < 0 ? env.Null() : Napi::Number::New(env, (double)result->zeroed));
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
  WorkerGuard g(env);
  g.w->Keep(info[0]);
  Napi::Buffer<uint8_t> out = new_output(env, g.w, n * k / 2);
  uint8_t* dst = out.Data();
  auto ref = std::make_shared<Napi::Reference<Napi::Buffer<uint8_t>>>(Napi::Persistent(out));
  auto stray = std::make_shared<int64_t>(0);
  const uint32_t* in = reinterpret_cast<const uint32_t*>(src.data) + word_off;
  const int threads = g_threads;
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
  const float sf = opt.Has("sf") && opt.Get("sf").IsNumber() ? opt.Get("sf").As<Napi::Number>().FloatValue() : 1.0f;
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
  const int threads = g_threads;
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

Napi::Value RepackWeightStack(const Napi::CallbackInfo& info) { return RepackWeightStackOn(info, Backend::Cpu); }
Napi::Value ProcessScalesStack(const Napi::CallbackInfo& info) { return ProcessScalesStackOn(info, Backend::Cpu); }
Napi::Value UnpackWeight(const Napi::CallbackInfo& info) { return UnpackWeightOn(info, Backend::Cpu); }
Napi::Value DecodeScales(const Napi::CallbackInfo& info) { return DecodeScalesOn(info, Backend::Cpu); }

#if defined(MFP4_WITH_CUDA)
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

// gpu* twins: same arguments and results as the CPU calls, computed on the CUDA device.
// They reject with "CUDA unavailable: <reason>" when there is no usable device, and with
// "built without CUDA support" in a CPU-only build.
Napi::Value GpuRepackWeightStack(const Napi::CallbackInfo& info) {
  return kWithCuda ? RepackWeightStackOn(info, Backend::Cuda) : no_cuda(info.Env());
}
Napi::Value GpuProcessScalesStack(const Napi::CallbackInfo& info) {
  return kWithCuda ? ProcessScalesStackOn(info, Backend::Cuda) : no_cuda(info.Env());
}
Napi::Value GpuUnpackWeight(const Napi::CallbackInfo& info) {
  return kWithCuda ? UnpackWeightOn(info, Backend::Cuda) : no_cuda(info.Env());
}
Napi::Value GpuDecodeScales(const Napi::CallbackInfo& info) {
  return kWithCuda ? DecodeScalesOn(info, Backend::Cuda) : no_cuda(info.Env());
}

// cudaStatus() -> {available, reason?, devices?, name?, capability?, compiledArchs}.
Napi::Value CudaStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
#if defined(MFP4_WITH_CUDA)
  std::string why;
  const bool ok = cuda::cuda_available(why);
  r.Set("available", ok);
  if (!ok) r.Set("reason", why);
  cuda::DeviceInfo d;
  cuda::device_info(d);
  if (d.devices > 0) {
    r.Set("devices", d.devices);
    if (!d.name.empty()) {
      r.Set("name", d.name);
      r.Set("capability", std::to_string(d.major) + "." + std::to_string(d.minor));
    }
  }
  r.Set("compiledArchs", cuda::compiled_archs());
#else
  r.Set("available", false);
  r.Set("reason", "built without CUDA support");
  r.Set("compiledArchs", "");
#endif
  return r;
}

// gpuBenchKernels(n, k, reps) -> {repackMs, scanMs, scalesMs, copyMs, weightBytes, scaleBytes,
// packedBytes, processedBytes}: kernel times (ms per iteration, mean over reps back-to-back
// launches) on random device-resident data of one N x K linear (layout v2, bfloat16), and a
// device-to-device cudaMemcpy of the same input bytes. Synchronous: for benchmarks only.
Napi::Value GpuBenchKernels(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) type_error(env, "gpuBenchKernels(n, k, reps?)");
#if defined(MFP4_WITH_CUDA)
  const int64_t n = info[0].As<Napi::Number>().Int64Value(), k = info[1].As<Napi::Number>().Int64Value();
  const int reps = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 20;
  cuda::BenchResult b;
  try {
    b = cuda::bench_kernels(n, k, reps);
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
  int64_t np, kp;
  pad_shape_v2(n, k, np, kp);
  Napi::Object r = Napi::Object::New(env);
  r.Set("repackMs", b.repack_ms);
  r.Set("scanMs", b.scan_ms);
  r.Set("scalesMs", b.scales_ms);
  r.Set("copyMs", b.copy_ms);
  r.Set("weightBytes", (double)b.weight_bytes);
  r.Set("scaleBytes", (double)b.scale_bytes);
  r.Set("packedBytes", (double)((kp / kGroup) * 2 * np * 4));
  r.Set("processedBytes", (double)((kp / kGroup) * np));
  return r;
#else
  throw Napi::Error::New(env, "built without CUDA support");
#endif
}

// gpuSetMemoryLimit(bytes): for tests, device allocations above `bytes` count as out of
// memory, so the sliced path (slices of K rows, groups of experts) runs on small tensors.
// 0 lifts the limit.
Napi::Value GpuSetMemoryLimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) type_error(env, "gpuSetMemoryLimit(bytes)");
#if defined(MFP4_WITH_CUDA)
  cuda::set_memory_limit(info[0].As<Napi::Number>().Int64Value());
#endif
  return env.Undefined();
}

// gpuHostBuffer(size) -> Buffer: memory of its own pages (page-aligned, shared with no other
// allocation), so that gpuPinHost can lock exactly its pages: a Buffer from Node's allocator
// may share its first and last page with a neighbour, and the driver refuses to register a
// page twice. Freed (and unpinned if still pinned) when the Buffer is collected.
Napi::Value GpuHostBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) type_error(env, "gpuHostBuffer(size)");
  const double d = info[0].As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d != (double)(int64_t)d) throw Napi::RangeError::New(env, "size must be a non-negative integer");
  const size_t size = (size_t)d;
#if defined(MFP4_HAVE_MMAP)
  if (size == 0) return Napi::Buffer<uint8_t>::New(env, 0);
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  const size_t mapped = (size + page - 1) / page * page;
  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw Napi::Error::New(env, "out of memory allocating " + std::to_string(size) + " bytes");
  Napi::MemoryManagement::AdjustExternalMemory(env, (int64_t)mapped);
  return Napi::Buffer<uint8_t>::New(env, static_cast<uint8_t*>(p), size, [mapped](Napi::Env e, uint8_t* data) {
#if defined(MFP4_WITH_CUDA)
    cuda::unpin_host(data);
#endif
    munmap(data, mapped);
    Napi::MemoryManagement::AdjustExternalMemory(e, -(int64_t)mapped);
  });
#else
  return Napi::Buffer<uint8_t>::New(env, size);
#endif
}

// gpuPinHost(buffer) -> boolean: page-locks the buffer's bytes (cudaHostRegister), so that
// GPU calls copy from and to it by DMA, asynchronously and at full speed. false without a
// usable CUDA device, or when the driver refuses (e.g. a page already registered): the
// buffer then stays pageable, which is slower but still correct. Pinning costs about as
// much as touching every page: for long-lived buffers that are reused (a pool).
Napi::Value GpuPinHost(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1) type_error(env, "gpuPinHost(buffer)");
  const Bytes b = get_bytes(env, info[0], "buffer");
#if defined(MFP4_WITH_CUDA)
  return Napi::Boolean::New(env, cuda::pin_host(const_cast<uint8_t*>(b.data), b.size));
#else
  (void)b;
  return Napi::Boolean::New(env, false);
#endif
}

// gpuUnpinHost(buffer) -> boolean: undoes gpuPinHost of that buffer (false if it was not
// pinned). No GPU call may be using it.
Napi::Value GpuUnpinHost(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1) type_error(env, "gpuUnpinHost(buffer)");
  const Bytes b = get_bytes(env, info[0], "buffer");
#if defined(MFP4_WITH_CUDA)
  return Napi::Boolean::New(env, cuda::unpin_host(const_cast<uint8_t*>(b.data)));
#else
  (void)b;
  return Napi::Boolean::New(env, false);
#endif
}

// gpuProfile({enable?, reset?}?) -> {enabled, calls, h2dMs, kernelMs, d2hMs, wallMs, h2dBytes,
// d2hBytes, pageableBytes, pieces, pinned, pinnedBytes, pinFailures, pinMs, probeMs, contextMs}: the summed
// CUDA-event times of the copies and kernels of every gpuRepackWeightStack and
// gpuProcessScalesStack call made while enabled (off by default), and the pinning counts.
Napi::Value GpuProfile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
#if defined(MFP4_WITH_CUDA)
  if (info.Length() > 0 && info[0].IsObject()) {
    Napi::Object o = info[0].As<Napi::Object>();
    const bool reset = o.Has("reset") && o.Get("reset").ToBoolean();
    const bool on = o.Has("enable") && !o.Get("enable").IsUndefined() ? o.Get("enable").ToBoolean().Value() : cuda::profiling();
    cuda::set_profiling(on, reset);
  }
  const cuda::Profile p = cuda::profile();
  r.Set("enabled", cuda::profiling());
  r.Set("calls", (double)p.calls);
  r.Set("h2dMs", p.h2d_ms);
  r.Set("kernelMs", p.kernel_ms);
  r.Set("d2hMs", p.d2h_ms);
  r.Set("wallMs", p.wall_ms);
  r.Set("h2dBytes", (double)p.h2d_bytes);
  r.Set("d2hBytes", (double)p.d2h_bytes);
  r.Set("pageableBytes", (double)p.pageable_bytes);
  r.Set("pieces", (double)p.pieces);
  r.Set("pinned", (double)p.pinned);
  r.Set("pinnedBytes", (double)p.pinned_bytes);
  r.Set("pinFailures", (double)p.pin_failures);
  r.Set("pinMs", p.pin_ms);
  r.Set("probeMs", p.probe_ms);
  r.Set("contextMs", p.context_ms);
#else
  r.Set("enabled", false);
  for (const char* key : {"calls", "h2dMs", "kernelMs", "d2hMs", "wallMs", "h2dBytes", "d2hBytes", "pageableBytes", "pieces",
                          "pinned", "pinnedBytes", "pinFailures", "pinMs", "probeMs", "contextMs"})
    r.Set(key, 0.0);
#endif
  return r;
}

// gpuWarmup() -> Promise<boolean>: creates the CUDA context on a pool thread, so that it
// overlaps whatever the caller does next instead of delaying its first GPU call or pin.
// Resolves false without a usable device (or in a build without CUDA).
Napi::Value GpuWarmup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  WorkerGuard g(env);
  auto ok = std::make_shared<bool>(false);
  return g.Start(
      [ok]() {
#if defined(MFP4_WITH_CUDA)
        *ok = cuda::warm_up();
#endif
      },
      [ok](Napi::Env e) -> Napi::Value { return Napi::Boolean::New(e, *ok); });
}

// scanScales(data) -> {maxByte, maxValue, badIndex, badByte, histogram}: one pass over the
// block scales that validates them and counts every byte value (v2's losses follow from it).
Napi::Value ScanScales(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Bytes b = get_bytes(env, info[0], "data");
  const ScaleStats s = scan_scales(b.data, (int64_t)b.size, g_threads);
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

// scaleFactor(maxByte, {layout, dtype}) -> number.
Napi::Value ScaleFactor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) type_error(env, "scaleFactor(maxByte, {layout, dtype})");
  Napi::Object opt = options(env, info, 1, "scaleFactor(maxByte, {layout, dtype})");
  const int mb = info[0].As<Napi::Number>().Int32Value();
  if (mb < 0 || mb > 255) throw Napi::RangeError::New(env, "maxByte must be a byte");
  return Napi::Number::New(env, scale_factor((uint8_t)mb, get_layout(env, opt), get_dtype(env, opt)));
}

// processGlobalScale(ws2, {layout, dtype, sf?}) -> Buffer (F16/BF16 under v1, F32 under v2).
Napi::Value ProcessGlobalScale(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) type_error(env, "processGlobalScale(ws2, {layout, dtype, sf?})");
  Napi::Object opt = options(env, info, 1, "processGlobalScale(ws2, {layout, dtype, sf?})");
  const float sf = opt.Has("sf") && opt.Get("sf").IsNumber() ? opt.Get("sf").As<Napi::Number>().FloatValue() : 1.0f;
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

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) type_error(env, "setThreads(n)");
  g_threads = info[0].As<Napi::Number>().Int32Value();
  return Napi::Number::New(env, resolve_threads(g_threads));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("repackWeightStack", Napi::Function::New(env, RepackWeightStack));
  exports.Set("processScalesStack", Napi::Function::New(env, ProcessScalesStack));
  exports.Set("unpackWeight", Napi::Function::New(env, UnpackWeight));
  exports.Set("decodeScales", Napi::Function::New(env, DecodeScales));
  exports.Set("scanScales", Napi::Function::New(env, ScanScales));
  exports.Set("scaleFactor", Napi::Function::New(env, ScaleFactor));
  exports.Set("processGlobalScale", Napi::Function::New(env, ProcessGlobalScale));
  exports.Set("padShapeV2", Napi::Function::New(env, PadShapeV2));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("gpuRepackWeightStack", Napi::Function::New(env, GpuRepackWeightStack));
  exports.Set("gpuProcessScalesStack", Napi::Function::New(env, GpuProcessScalesStack));
  exports.Set("gpuUnpackWeight", Napi::Function::New(env, GpuUnpackWeight));
  exports.Set("gpuDecodeScales", Napi::Function::New(env, GpuDecodeScales));
  exports.Set("gpuBenchKernels", Napi::Function::New(env, GpuBenchKernels));
  exports.Set("gpuSetMemoryLimit", Napi::Function::New(env, GpuSetMemoryLimit));
  exports.Set("gpuHostBuffer", Napi::Function::New(env, GpuHostBuffer));
  exports.Set("gpuPinHost", Napi::Function::New(env, GpuPinHost));
  exports.Set("gpuUnpinHost", Napi::Function::New(env, GpuUnpinHost));
  exports.Set("gpuProfile", Napi::Function::New(env, GpuProfile));
  exports.Set("gpuWarmup", Napi::Function::New(env, GpuWarmup));
  exports.Set("cudaStatus", Napi::Function::New(env, CudaStatus));
  exports.Set("backends", Napi::String::New(env, kWithCuda ? "cpu,cuda" : "cpu"));
  RegisterGemm(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(marlin_fp4, Init)
