// The one way a binding runs heavy work: off the main thread on libuv's pool, settling a
// Promise, with the JS inputs and outputs kept alive until it settles. C++ exceptions become
// rejections: their what() is the message, and a BadBlockScale also carries where it is
// (code MFP4_BAD_BLOCK_SCALE; src/transform/block-scales.ts writes its message).
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "napi_args.h"
#include "transforms_cpu.h"

namespace mfp4::bindings {

// Threads of the CPU transforms (setThreads); 0 = every core. Read on the main thread when a
// call starts, so a call keeps the value it started with.
inline int g_pool_threads = 0;

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
    } catch (const BadBlockScale& b) {
      bad_scale_ = b;
      SetError(b.what());
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(done_(Env())); }
  void OnError(const Napi::Error& e) override {
    if (bad_scale_) {
      Napi::Object o = e.Value();
      o.Set("code", "MFP4_BAD_BLOCK_SCALE");
      o.Set("expert", (double)bad_scale_->expert);
      o.Set("experts", (double)bad_scale_->experts);
      o.Set("part", (double)bad_scale_->part);
      o.Set("rowOffset", (double)bad_scale_->row_offset);
      o.Set("row", (double)bad_scale_->row);
      o.Set("group", (double)bad_scale_->group);
      o.Set("byte", (double)bad_scale_->byte);
    }
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  Done done_;
  std::vector<Napi::ObjectReference> keep_;
  std::optional<BadBlockScale> bad_scale_;
};

// Owns a worker until Start() hands it to libuv, so argument errors thrown while the
// inputs are parsed do not leak it.
struct WorkerGuard {
  PromiseWorker* w;
  explicit WorkerGuard(Napi::Env env) : w(new PromiseWorker(env)) {}
  ~WorkerGuard() { delete w; }
  WorkerGuard(const WorkerGuard&) = delete;
  WorkerGuard& operator=(const WorkerGuard&) = delete;
  Napi::Promise Start(PromiseWorker::Work work, PromiseWorker::Done done) {
    PromiseWorker* started = w;
    w = nullptr;
    return started->Start(std::move(work), std::move(done));
  }
};

// An already rejected promise (a call that cannot run here, e.g. a GPU call without CUDA).
inline Napi::Value rejected(Napi::Env env, const std::string& msg) {
  Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
  d.Reject(Napi::Error::New(env, msg).Value());
  return d.Promise();
}

// A fresh output Buffer kept alive by the worker.
inline Napi::Buffer<uint8_t> new_output(Napi::Env env, PromiseWorker* w, int64_t bytes) {
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

inline Output output_for(Napi::Env env, const Napi::Object& opt, PromiseWorker* w, int64_t bytes) {
  Napi::Object holder;
  uint8_t* data;
  if (opt.Has("out") && !opt.Get("out").IsUndefined()) {
    Napi::Value v = opt.Get("out");
    const napi_args::Bytes b = napi_args::get_bytes(env, v, "out");
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

}  // namespace mfp4::bindings
