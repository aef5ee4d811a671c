// Node-API bindings of the GPU's host side: what CUDA the addon has, page-locked host memory,
// the profile of the GPU transforms, warm-up, and the testing hook on device memory.
//
//   cudaStatus(), cudaStatusAsync(), backends, gpuHostBuffer(size), gpuPinHost(buffer), gpuUnpinHost(buffer),
//   gpuProfile({enable?, reset?}?), gpuWarmup() -> Promise<boolean>, gpuSetMemoryLimit(bytes)
//
// Every call answers in a build without CUDA too (not available, nothing pinned, zeros).
#include <napi.h>

#include <memory>
#include <string>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define MFP4_HAVE_MMAP 1
#endif

#include "addon.h"
#if defined(MFP4_WITH_CUDA)
#include "transforms_cuda.h"
#endif

namespace mfp4::bindings {

using namespace napi_args;

namespace {

// cudaStatus() -> {available, reason?, devices?, name?, capability?, compiledArchs}. The first
// call probes the driver and the device (about 0.2 s on the H200 host), once per process.
Napi::Object StatusObject(Napi::Env env) {
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
  r.Set("reason", kNoCuda);
  r.Set("compiledArchs", "");
#endif
  return r;
}

Napi::Value CudaStatus(const Napi::CallbackInfo& info) { return StatusObject(info.Env()); }

// cudaStatusAsync() -> Promise<the same object>: the probe runs on a pool thread, so that the
// caller opens the checkpoint meanwhile instead of waiting for the driver.
Napi::Value CudaStatusAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  WorkerGuard g(env);
  return g.Start(
      []() {
#if defined(MFP4_WITH_CUDA)
        std::string why;
        (void)cuda::cuda_available(why);  // the probe, once; the object is built from its result
#endif
      },
      [](Napi::Env e) -> Napi::Value { return StatusObject(e); });
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

}  // namespace

void RegisterGpu(Napi::Env env, Napi::Object exports) {
  exports.Set("gpuSetMemoryLimit", Napi::Function::New(env, GpuSetMemoryLimit));
  exports.Set("gpuHostBuffer", Napi::Function::New(env, GpuHostBuffer));
  exports.Set("gpuPinHost", Napi::Function::New(env, GpuPinHost));
  exports.Set("gpuUnpinHost", Napi::Function::New(env, GpuUnpinHost));
  exports.Set("gpuProfile", Napi::Function::New(env, GpuProfile));
  exports.Set("gpuWarmup", Napi::Function::New(env, GpuWarmup));
  exports.Set("cudaStatus", Napi::Function::New(env, CudaStatus));
  exports.Set("cudaStatusAsync", Napi::Function::New(env, CudaStatusAsync));
  exports.Set("backends", Napi::String::New(env, kWithCuda ? "cpu,cuda" : "cpu"));
}

}  // namespace mfp4::bindings
