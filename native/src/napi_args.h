// Argument checking shared by the addon's binding files: one message style for bad arguments.
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>

#include "layout.h"

namespace mfp4::napi_args {

[[noreturn]] inline void type_error(Napi::Env env, const std::string& msg) { throw Napi::TypeError::New(env, msg); }

inline int64_t get_int(Napi::Env env, const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) type_error(env, std::string("expected a number for '") + key + "'");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (d != (double)(int64_t)d || d < 0) type_error(env, std::string("'") + key + "' must be a non-negative integer");
  return (int64_t)d;
}

inline int64_t get_int_or(Napi::Env env, const Napi::Object& o, const char* key, int64_t dflt) {
  return o.Has(key) && !o.Get(key).IsUndefined() ? get_int(env, o, key) : dflt;
}

// A number option that may be absent (then, or when not a number, dflt).
inline bool has_number(const Napi::Object& o, const char* key) { return o.Has(key) && o.Get(key).IsNumber(); }
inline float get_float_or(const Napi::Object& o, const char* key, float dflt) {
  return has_number(o, key) ? o.Get(key).As<Napi::Number>().FloatValue() : dflt;
}

// The options object at argument idx; `usage` is the TypeError's text when there is none.
inline Napi::Object options(Napi::Env env, const Napi::CallbackInfo& info, size_t idx, const char* usage) {
  if (info.Length() <= idx || !info[idx].IsObject()) type_error(env, usage);
  return info[idx].As<Napi::Object>();
}

inline Layout get_layout(Napi::Env env, const Napi::Object& o) {
  const std::string s = o.Get("layout").ToString();
  if (s == "v1") return Layout::V1;
  if (s == "v2") return Layout::V2;
  type_error(env, "layout must be 'v1' or 'v2'");
}

inline ActDtype get_dtype(Napi::Env env, const Napi::Object& o) {
  const std::string s = o.Get("dtype").ToString();
  if (s == "float16") return ActDtype::F16;
  if (s == "bfloat16") return ActDtype::BF16;
  type_error(env, "dtype must be 'float16' or 'bfloat16'");
}

struct Bytes {
  const uint8_t* data;
  size_t size;
};

// The bytes of a Uint8Array/Buffer (any TypedArray view), `what` naming it in the error.
inline Bytes get_bytes(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsTypedArray()) type_error(env, what + " must be a Uint8Array or Buffer");
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  return {static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset(), ta.ByteLength()};
}

}  // namespace mfp4::napi_args
