// A minimal fork-join loop: big tensors use every core, small ones stay on the caller.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace mfp4 {

inline int resolve_threads(int threads) {
  if (threads > 0) return threads;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? (int)hw : 1;
}

// Calls fn(i) for i in [0, count) on up to `threads` threads, handing out indices dynamically.
template <typename Fn>
void parallel_for(int64_t count, int threads, Fn&& fn) {
  const int nt = (int)std::min<int64_t>(resolve_threads(threads), count);
  if (nt <= 1) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto body = [&]() {
    try {
      for (int64_t i; !failed.load(std::memory_order_relaxed) && (i = next.fetch_add(1)) < count;) fn(i);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(nt - 1);
  for (int t = 1; t < nt; ++t) pool.emplace_back(body);
  body();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

// Runs fn(e, inner_threads) for each of `count` experts of a stack. Several experts run side
// by side, each on fewer threads (one on a machine with no more cores than experts): one
// fork-join for the call instead of one per expert, whose thread start-ups cost more than a
// small expert's work.
template <typename Fn>
void parallel_experts(int64_t count, int threads, Fn&& fn) {
  const int t = resolve_threads(threads);
  if (count <= 1) {
    for (int64_t e = 0; e < count; ++e) fn(e, t);
    return;
  }
  const int outer = (int)std::min<int64_t>(count, t);
  const int inner = std::max(1, t / outer);
  parallel_for(count, outer, [&](int64_t e) { fn(e, inner); });
}

}  // namespace mfp4
