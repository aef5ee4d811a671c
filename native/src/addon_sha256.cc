// Node-API binding of SHA-256 over bytes handed over in order (a file as convert writes it):
//
//   sha256New() -> handle
//   sha256Update(handle, chunks: Uint8Array[]) -> Promise<undefined>   (on a pool thread)
//   sha256Digest(handle) -> hex string                                   (ends the hash)
//
// Convert hashed each output shard behind its writer by reading it back from the page cache
// on a worker thread: a second pass over every byte written (8.6 GB for the 128x24 MoE), a
// copy that cost about a third of the hashing itself, on a chain (one hash per shard) that
// ended after the shard's last write. Here the bytes are hashed from the very buffers being
// written, beside the write. OpenSSL is the one Node.js links and exports to addons (with
// its SHA extensions where the CPU has them); its hash is the same as node:crypto's.
//
// One update at a time per handle: the caller awaits each update before the next (an update
// started while another runs is refused), so the bytes are hashed in the order given.
#include <napi.h>
#include <openssl/evp.h>

#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "addon.h"

namespace mfp4::bindings {

using namespace napi_args;

namespace {

struct Sha256State {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  std::atomic<bool> busy{false};
  bool finished = false;
  ~Sha256State() { EVP_MD_CTX_free(ctx); }
};

// What the JS handle holds: a share of the state, so that an update in flight keeps it alive
// even if the handle is collected meanwhile.
struct Holder {
  std::shared_ptr<Sha256State> state;
};

std::shared_ptr<Sha256State> state_of(Napi::Env env, Napi::Value v) {
  if (!v.IsExternal()) type_error(env, "expected a handle from sha256New()");
  Holder* h = v.As<Napi::External<Holder>>().Data();
  if (!h || !h->state) type_error(env, "expected a handle from sha256New()");
  if (h->state->finished) throw Napi::Error::New(env, "sha256: the hash is already finished");
  if (h->state->busy.load()) throw Napi::Error::New(env, "sha256: an update is still running (await each update before the next)");
  return h->state;
}

Napi::Value Sha256New(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto state = std::make_shared<Sha256State>();
  if (!state->ctx || EVP_DigestInit_ex(state->ctx, EVP_sha256(), nullptr) != 1) throw Napi::Error::New(env, "sha256: OpenSSL refused to start a SHA-256");
  return Napi::External<Holder>::New(env, new Holder{std::move(state)}, [](Napi::Env, Holder* h) { delete h; });
}

Napi::Value Sha256Update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsArray()) type_error(env, "sha256Update(handle, chunks: Uint8Array[])");
  std::shared_ptr<Sha256State> state = state_of(env, info[0]);
  Napi::Array arr = info[1].As<Napi::Array>();
  WorkerGuard g(env);
  std::vector<Bytes> chunks;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value v = arr.Get(i);
    chunks.push_back(get_bytes(env, v, "chunk"));
    g.w->Keep(v);
  }
  state->busy.store(true);
  return g.Start(
      [state, chunks = std::move(chunks)] {
        bool ok = true;
        for (const Bytes& b : chunks) ok = ok && EVP_DigestUpdate(state->ctx, b.data, b.size) == 1;
        state->busy.store(false);
        if (!ok) throw std::runtime_error("sha256: OpenSSL failed to hash");
      },
      [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
}

Napi::Value Sha256Digest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1) type_error(env, "sha256Digest(handle)");
  std::shared_ptr<Sha256State> state = state_of(env, info[0]);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  state->finished = true;
  if (EVP_DigestFinal_ex(state->ctx, md, &len) != 1) throw Napi::Error::New(env, "sha256: OpenSSL failed to finish");
  static const char* hex = "0123456789abcdef";
  std::string out(2 * len, '0');
  for (unsigned int i = 0; i < len; ++i) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  return Napi::String::New(env, out);
}

}  // namespace

void RegisterSha256(Napi::Env env, Napi::Object exports) {
  exports.Set("sha256New", Napi::Function::New(env, Sha256New));
  exports.Set("sha256Update", Napi::Function::New(env, Sha256Update));
  exports.Set("sha256Digest", Napi::Function::New(env, Sha256Digest));
}

}  // namespace mfp4::bindings
