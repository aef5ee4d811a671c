// Host memory for a native call's temporaries of megabytes (decoded scales to compare, the
// activations as float32, a clamped copy of block scales, an unpacked weight): blocks of pages of
// their own, handed out and taken back through one process-wide list that keeps at most
// kKeepBytes of them idle. malloc would serve each from the calling pool thread's own arena,
// which keeps a freed block of that size for that thread: with 16 pool threads that held about
// 100 MB of resident memory that did nothing (verify, 4 lanes). A reused block also costs no
// page faults.
#pragma once
#include <cstddef>
#include <cstdint>

namespace mfp4 {

class Scratch {
 public:
  // Keeps at most this many idle bytes in the list (the oldest go back to the system first).
  static constexpr size_t kKeepBytes = size_t(64) << 20;

  explicit Scratch(size_t bytes);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  template <typename T>
  T* as() const {
    return reinterpret_cast<T*>(data_);
  }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;      // what was asked for
  size_t capacity_ = 0;  // what the block holds
};

}  // namespace mfp4
