#include "scratch.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define MFP4_SCRATCH_MMAP 1
#endif

namespace mfp4 {
namespace {

struct Block {
  uint8_t* data;
  size_t capacity;
};

std::mutex g_mutex;
std::vector<Block> g_idle;  // oldest first
size_t g_idle_bytes = 0;

uint8_t* map_block(size_t capacity) {
#if defined(MFP4_SCRATCH_MMAP)
  void* p = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  return static_cast<uint8_t*>(p);
#else
  void* p = std::malloc(capacity);
  if (!p) throw std::bad_alloc();
  return static_cast<uint8_t*>(p);
#endif
}

void unmap_block(const Block& b) {
#if defined(MFP4_SCRATCH_MMAP)
  munmap(b.data, b.capacity);
#else
  std::free(b.data);
#endif
}

// Whole megabytes (64 KB steps below one), so that slightly different sizes share a block.
size_t capacity_for(size_t bytes) {
  const size_t step = bytes >= (size_t(1) << 20) ? size_t(1) << 20 : size_t(64) << 10;
  return (bytes + step - 1) / step * step;
}

}  // namespace

Scratch::Scratch(size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    // The smallest idle block that holds it.
    size_t best = g_idle.size();
    for (size_t i = 0; i < g_idle.size(); ++i)
      if (g_idle[i].capacity >= bytes && (best == g_idle.size() || g_idle[i].capacity < g_idle[best].capacity)) best = i;
    if (best < g_idle.size()) {
      data_ = g_idle[best].data;
      capacity_ = g_idle[best].capacity;
      g_idle_bytes -= capacity_;
      g_idle.erase(g_idle.begin() + (std::ptrdiff_t)best);
      return;
    }
  }
  capacity_ = capacity_for(bytes);
  data_ = map_block(capacity_);
}

Scratch::~Scratch() {
  if (!data_) return;
  std::vector<Block> dropped;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_idle.push_back({data_, capacity_});
    g_idle_bytes += capacity_;
    while (g_idle_bytes > kKeepBytes) {
      dropped.push_back(g_idle.front());
      g_idle_bytes -= g_idle.front().capacity;
      g_idle.erase(g_idle.begin());
    }
  }
  for (const Block& b : dropped) unmap_block(b);
}

}  // namespace mfp4
