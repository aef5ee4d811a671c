// How a host-level call moves a tensor through the device in pieces (internal to the CUDA
// backend): the largest piece whose buffers fit (plan_pieces), the walk over the pieces of a
// stack (for_each_piece), and Pipeline, which overlaps the upload, kernels and download of
// successive pieces over three streams.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>

#include "cuda_device.cuh"
#include "cuda_host.cuh"

namespace mfp4 {
namespace cuda {
namespace detail {

struct Piece {
  int64_t experts, rows;
};


// The largest piece (first every expert and row, then fewer experts, then fewer rows in
// multiples of row_step) whose device buffers fit in one allocation; reserves it.
inline Piece plan_pieces(Arena& arena, cudaStream_t s, int64_t experts, int64_t rows, int64_t row_step,
                  const std::function<int64_t(int64_t, int64_t)>& bytes, const std::string& what) {
  int64_t ne = experts, nr = rows;
  bool trimmed = false;
  for (;;) {
    const int64_t b = bytes(ne, nr);
    if (arena.reserve(b)) return {ne, nr};
    if (!trimmed && g_memory_limit.load() == 0) {
      // Memory cached by the pool (freed by earlier calls) may be what is missing.
      cudaStreamSynchronize(s);
      if (g_pool) cudaMemPoolTrimTo(g_pool, 0);
      trimmed = true;
      continue;
    }
    if (ne > 1) {
      ne = (ne + 1) / 2;
    } else if (nr > row_step) {
      nr = round_up((nr + 1) / 2, row_step);
    } else {
      throw CudaError("CUDA out of memory allocating " + mb(b) + " MB for " + what + " (already sliced to one expert and " +
                      std::to_string(nr) + " K-blocks)");
    }
  }
}

// One piece of a stack: experts [e0, e0 + ne) x output rows [r0, r0 + nr) (d0 = r0 minus the
// first row asked for); of those rows, the first w hold source K-blocks (the rest are K padding).
struct PieceSpan {
  int64_t e0, ne, d0, r0, nr, w;
};

// Walks the pieces of experts [0, experts) x output rows [row_begin, row_begin + rows) in steps
// of pc, expert groups outermost; g = K-blocks of the source.
template <typename Fn>
void for_each_piece(int64_t experts, int64_t row_begin, int64_t rows, int64_t g, const Piece& pc, Fn&& fn) {
  for (int64_t e0 = 0; e0 < experts; e0 += pc.experts) {
    const int64_t ne = std::min(pc.experts, experts - e0);
    for (int64_t d0 = 0; d0 < rows; d0 += pc.rows) {
      const int64_t nr = std::min(pc.rows, rows - d0), r0 = row_begin + d0;
      fn(PieceSpan{e0, ne, d0, r0, nr, std::max<int64_t>(0, std::min(r0 + nr, g) - r0)});
    }
  }
}

// A software pipeline over three streams, so that the upload of one piece, the kernels of the
// piece before it and the download of the one before that run at once (the GPU has a copy
// engine for each direction). Piece i uses set i % slots of device buffers; its upload waits
// until the download of the piece that used the set before it is done. The destructor waits
// for everything issued before it frees the arena, so an exception midway frees nothing in use.
class Pipeline {
 public:
  static constexpr int kMaxSlots = 3;
  Pipeline() {
    try {
      for (cudaStream_t* s : {&in_, &run_, &out_})
        check(cudaStreamCreateWithFlags(s, cudaStreamNonBlocking), "creating a CUDA stream");
      for (int i = 0; i < kMaxSlots; ++i)
        for (cudaEvent_t* e : {&loaded_[i], &computed_[i], &drained_[i]})
          check(cudaEventCreateWithFlags(e, cudaEventDisableTiming), "creating a CUDA event");
    } catch (...) {
      destroy();
      throw;
    }
    arena_.bind(in_);  // allocated and freed in the upload stream, which every piece starts from
  }
  ~Pipeline() { destroy(); }
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  Arena& arena() { return arena_; }
  cudaStream_t in() const { return in_; }

  // What a stage's copies moved, for the profile.
  struct Moved {
    int64_t bytes = 0, pageable = 0;
  };
  // Issues one piece: up(stream) enqueues its uploads, run(stream) its kernels, down(stream)
  // its downloads, each on its own stream, ordered by events; up and down return a Moved.
  template <typename Up, typename Run, typename Down>
  void piece(int slot, StageTimer& t, Up&& up, Run&& run, Down&& down) {
    if (used_[slot]) check(cudaStreamWaitEvent(in_, drained_[slot], 0), "ordering the pipeline");
    used_[slot] = true;
    t.begin(in_);
    const Moved a = up(in_);
    t.end(in_, Stage::H2D, a.bytes, a.pageable);
    check(cudaEventRecord(loaded_[slot], in_), "ordering the pipeline");
    check(cudaStreamWaitEvent(run_, loaded_[slot], 0), "ordering the pipeline");
    t.begin(run_);
    run(run_);
    t.end(run_, Stage::Kernel);
    check(cudaEventRecord(computed_[slot], run_), "ordering the pipeline");
    check(cudaStreamWaitEvent(out_, computed_[slot], 0), "ordering the pipeline");
    t.begin(out_);
    const Moved b = down(out_);
    t.end(out_, Stage::D2H, b.bytes, b.pageable);
    check(cudaEventRecord(drained_[slot], out_), "ordering the pipeline");
  }

  void sync(const char* what) {
    for (cudaStream_t s : {in_, run_, out_}) check(cudaStreamSynchronize(s), what);
  }

 private:
  void destroy() {
    for (cudaStream_t s : {in_, run_, out_})
      if (s) cudaStreamSynchronize(s);
    if (in_) {
      arena_.release();
      cudaStreamSynchronize(in_);
    }
    for (int i = 0; i < kMaxSlots; ++i)
      for (cudaEvent_t* e : {&loaded_[i], &computed_[i], &drained_[i]})
        if (*e) {
          cudaEventDestroy(*e);
          *e = nullptr;
        }
    for (cudaStream_t* s : {&in_, &run_, &out_})
      if (*s) {
        cudaStreamDestroy(*s);
        *s = nullptr;
      }
  }
  cudaStream_t in_ = nullptr, run_ = nullptr, out_ = nullptr;
  cudaEvent_t loaded_[kMaxSlots] = {}, computed_[kMaxSlots] = {}, drained_[kMaxSlots] = {};
  bool used_[kMaxSlots] = {};
  Arena arena_;
};

}  // namespace detail
}  // namespace cuda
}  // namespace mfp4
