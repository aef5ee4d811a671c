// Node-API binding of the batched file read:
//
//   readRanges(fd, target, ranges) -> Promise<undefined>
//
// ranges: Float64Array of triples [file position, length, offset in target]. Every range is
// read with positional reads (pread) on one pool thread, in the order given. An MoE checkpoint
// has tens of thousands of small tensors (expert parts, their block scales, 4-byte scalars);
// read one by one through fs/promises, each read is a round trip through libuv's queue, and
// handing it to a sleeping pool thread and resolving its promise cost the main thread more
// than the bytes do (src/checkpoint/read-batch.ts has the numbers). Here a batch of tensors is
// one round trip.
//
// Errors (a read error, or end of file before a range is complete) reject with a plain
// message; the caller reads the batch again through its own path, whose errors name the
// file and the tensor.
#include <napi.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

#include "addon.h"

namespace mfp4::bindings {

using namespace napi_args;

namespace {

struct Range {
  int64_t position, length, offset;
};

// A number of a range: a non-negative integer a double holds exactly (JS numbers are doubles).
int64_t range_number(Napi::Env env, double d, const char* what) {
  if (!(d >= 0) || d > 9007199254740991.0 || std::floor(d) != d) type_error(env, std::string("readRanges: ") + what + " must be a non-negative safe integer");
  return (int64_t)d;
}

// Reads [position, position + length) of fd into dst, resuming after short reads and EINTR.
void read_fully(int fd, uint8_t* dst, int64_t length, int64_t position) {
  int64_t done = 0;
  while (done < length) {
    // Linux reads at most 0x7ffff000 bytes per call; ask for no more than 1 GiB at a time.
    const size_t want = (size_t)std::min<int64_t>(length - done, int64_t(1) << 30);
    const ssize_t n = ::pread(fd, dst + done, want, (off_t)(position + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("pread at byte ") + std::to_string(position + done) + ": " + std::strerror(errno));
    }
    if (n == 0) throw std::runtime_error("end of file at byte " + std::to_string(position + done) + ", " + std::to_string(length - done) + " bytes short");
    done += n;
  }
}

Napi::Value ReadRanges(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "readRanges(fd, target, ranges: Float64Array of [position, length, offset] triples)";
  if (info.Length() < 3 || !info[0].IsNumber() || !info[2].IsTypedArray()) type_error(env, usage);
  const double fd_d = info[0].As<Napi::Number>().DoubleValue();
  if (!(fd_d >= 0) || fd_d > 2147483647.0 || std::floor(fd_d) != fd_d) type_error(env, "readRanges: fd must be a file descriptor");
  const int fd = (int)fd_d;
  const Bytes target = get_bytes(env, info[1], "target");
  Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_float64_array) type_error(env, usage);
  Napi::Float64Array f = ta.As<Napi::Float64Array>();
  if (f.ElementLength() % 3 != 0) type_error(env, usage);
  std::vector<Range> ranges(f.ElementLength() / 3);
  for (size_t i = 0; i < ranges.size(); ++i) {
    Range& r = ranges[i];
    r.position = range_number(env, f[3 * i], "position");
    r.length = range_number(env, f[3 * i + 1], "length");
    r.offset = range_number(env, f[3 * i + 2], "offset");
    if (r.offset > (int64_t)target.size || r.length > (int64_t)target.size - r.offset)
      throw Napi::RangeError::New(env, "readRanges: range " + std::to_string(i) + " (" + std::to_string(r.length) + " bytes at offset " +
                                           std::to_string(r.offset) + ") does not fit the target's " + std::to_string(target.size) + " bytes");
  }
  WorkerGuard g(env);
  g.w->Keep(info[1]);
  uint8_t* data = const_cast<uint8_t*>(target.data);
  return g.Start(
      [fd, data, ranges = std::move(ranges)] {
        for (const Range& r : ranges) read_fully(fd, data + r.offset, r.length, r.position);
      },
      [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
}

}  // namespace

void RegisterIo(Napi::Env env, Napi::Object exports) { exports.Set("readRanges", Napi::Function::New(env, ReadRanges)); }

}  // namespace mfp4::bindings
