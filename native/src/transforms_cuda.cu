// CUDA backend of the Marlin FP4 transforms. The kernels take their index math and byte
// encodings from layout.h / fp_formats.h, the same functions the CPU backend uses, so both
// backends are derived from one statement of FORMAT.md.
#include "transforms_cuda.cuh"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "transforms_cpu.h"

#ifndef MFP4_CUDA_ARCHS
#define MFP4_CUDA_ARCHS "80;86;89;90"
#endif

namespace mfp4 {
namespace cuda {
namespace {

constexpr int kThreads = 256;        // every kernel but finalize
constexpr int kRepackRows = 16;      // K-blocks (output rows) per repack/unpack tile
constexpr int kScaleCols = 128;      // groups (scale columns) per scale tile
constexpr int kScaleStride = kScaleCols + 4;  // bytes per shared row: an odd number of words spreads the banks
constexpr int kScanIters = 8;
constexpr int64_t kScanBlockBytes = int64_t(kThreads) * 16 * kScanIters;
constexpr int64_t kMaxGridX = 0x7FFFFFFF;
constexpr int64_t kMaxGridZ = 65535;
constexpr int64_t kAlign = 256;

std::string cuda_text(cudaError_t e) { return std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ")"; }

void check(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clears a non-sticky error so that later launches are not blamed for it
  throw CudaError("CUDA error: " + cuda_text(e) + " while " + what);
}

void check_launch(const char* kernel) { check(cudaGetLastError(), std::string("launching the ") + kernel + " kernel"); }

int64_t align_up(int64_t x) { return round_up(x, kAlign); }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::string mb(int64_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", (double)bytes / 1e6);
  return buf;
}

// ---------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------

// One block: one 64-column chunk of N x kRepackRows K-blocks of one expert. The 64 source
// rows' 8-byte K-blocks are staged in shared memory (coalesced 8-byte loads: a half-warp reads
// one 128-byte row segment); then each warp writes one output row of the chunk, 128 words,
// as one coalesced 16-byte store per thread. Thread t owns words 4t..4t+3, i.e. (n8, q) =
// (t/4, t%4) and j = 0..3, exactly the CPU's out[(n8*4 + q)*4 + j].
__global__ void __launch_bounds__(kThreads) repack_kernel(DevPart part, int64_t chunks, int64_t rows,
                                                          int64_t rows_real, uint32_t* __restrict__ dst,
                                                          int64_t dst_row_words, int64_t dst_expert_words) {
  __shared__ uint2 tile[kTileN][kRepackRows + 1];  // +1: rows 34 words apart, no bank conflicts
  const int64_t chunk = blockIdx.x % chunks, r0 = (int64_t)(blockIdx.x / chunks) * kRepackRows;
  const int64_t e = blockIdx.z;
  const uint8_t* __restrict__ src = part.data + e * part.expert_stride;
#pragma unroll
  for (int it = 0; it < kTileN * kRepackRows / kThreads; ++it) {
    const int idx = threadIdx.x + it * kThreads;
    const int row = idx / kRepackRows, c = idx % kRepackRows;
    const int64_t n = chunk * kTileN + row, r = r0 + c;
    uint2 v = make_uint2(0u, 0u);
    if (n < part.n && r < rows_real) v = __ldg(reinterpret_cast<const uint2*>(src + n * part.pitch + 8 * r));
    tile[row][c] = v;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n8 = lane >> 2, q = lane & 3;
  uint32_t* out = dst + e * dst_expert_words + chunk * kWordsPerChunk + 4 * lane;
  for (int rr = warp; rr < kRepackRows; rr += kThreads / 32) {
    const int64_t r = r0 + rr;
    if (r >= rows) break;
    uint32_t w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint2 x0 = tile[16 * j + n8][rr], x1 = tile[16 * j + n8 + 8][rr];
      // a/b: bytes q and 4+q of row n; c/d: the same of row n+8 (layout.h's pack_marlin_word).
      w[j] = pack_marlin_word((x0.x >> (8 * q)) & 0xFF, (x0.y >> (8 * q)) & 0xFF, (x1.x >> (8 * q)) & 0xFF,
                              (x1.y >> (8 * q)) & 0xFF);
    }
    *reinterpret_cast<uint4*>(out + r * dst_row_words) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// Inverse of repack_kernel: stage 16 rows x 128 words of one chunk (16-byte loads), then each
// thread rebuilds one 8-byte K-block of one row; a half-warp writes one row's 128 bytes.
__global__ void __launch_bounds__(kThreads) unpack_kernel(const uint32_t* __restrict__ src, int64_t src_row_words,
                                                          int64_t n_real, int64_t chunks, int64_t rows,
                                                          int64_t rows_real, uint8_t* __restrict__ dst,
                                                          int64_t dst_pitch, unsigned long long* stray) {
  __shared__ __align__(16) uint32_t tile[kRepackRows][kWordsPerChunk + 4];
  const int64_t chunk = blockIdx.x % chunks, r0 = (int64_t)(blockIdx.x / chunks) * kRepackRows;
#pragma unroll
  for (int it = 0; it < kRepackRows * (kWordsPerChunk / 4) / kThreads; ++it) {
    const int idx = threadIdx.x + it * kThreads;
    const int rr = idx / (kWordsPerChunk / 4), c4 = idx % (kWordsPerChunk / 4);
    const int64_t r = r0 + rr;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (r < rows) v = __ldg(reinterpret_cast<const uint4*>(src + r * src_row_words + chunk * kWordsPerChunk + 4 * c4));
    *reinterpret_cast<uint4*>(&tile[rr][4 * c4]) = v;
  }
  __syncthreads();
  unsigned count = 0;
#pragma unroll
  for (int it = 0; it < kTileN * kRepackRows / kThreads; ++it) {
    const int idx = threadIdx.x + it * kThreads;
    const int m = idx / kRepackRows, rr = idx % kRepackRows;  // row m = 16j + n8 (+8 for c/d)
    const int64_t r = r0 + rr;
    if (r >= rows) continue;
    const int j = m / 16, n8 = m % 8;
    const bool upper = (m % 16) >= 8;
    uint32_t lo = 0, hi = 0;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      uint32_t a, b, c, d;
      unpack_marlin_word(tile[rr][(n8 * 4 + q) * 4 + j], a, b, c, d);
      lo |= (upper ? c : a) << (8 * q);
      hi |= (upper ? d : b) << (8 * q);
    }
    const int64_t n = chunk * kTileN + m;
    if (r < rows_real && n < n_real) {
      *reinterpret_cast<uint2*>(dst + n * dst_pitch + 8 * r) = make_uint2(lo, hi);
    } else {
      count += (lo | hi) != 0;
    }
  }
  count = __reduce_add_sync(0xFFFFFFFFu, count);
  if ((threadIdx.x & 31) == 0 && count) atomicAdd(stray, (unsigned long long)count);
}

// scale_source() for the bytes of one unit of one 64-column chunk (the map repeats every
// chunk), into shared memory: the CPU's dg/nl tables.
__device__ __forceinline__ void build_scale_map(Layout layout, uint8_t* map_dg, uint8_t* map_nl) {
  const int u = scale_unit_rows(layout);
  if ((int)threadIdx.x < u * kTileN) {
    int64_t dg, nl;
    scale_source(threadIdx.x, kTileN, layout, dg, nl);
    map_dg[threadIdx.x] = (uint8_t)dg;
    map_nl[threadIdx.x] = (uint8_t)nl;
  }
}

// One block: one 64-column chunk x kScaleCols groups (kScaleCols/U units) of one expert. Source
// rows are staged in shared memory. Then each thread makes word wi (output bytes i = 4wi..4wi+3)
// of four consecutive units at once: byte i of every unit comes from the same tile row
// nl = scale_source(i), and the four units' groups are adjacent there, so one or two shared
// words serve all four (the CPU's out[i] = lut[rows[nl[i]][g0 + dg[i]]], unit by unit).
// The LUT is replicated per lane (word (b/4)*32 + lane), so its lookups never conflict.
template <Layout L>
__global__ void __launch_bounds__(kThreads) scales_kernel(DevPart part, int64_t chunks, int64_t rows,
                                                          int64_t rows_real, const uint8_t* __restrict__ lut_g,
                                                          uint8_t* __restrict__ dst, int64_t dst_unit_bytes,
                                                          int64_t dst_expert_bytes) {
  constexpr Layout layout = L;
  constexpr int U = scale_unit_rows(L);
  __shared__ __align__(16) uint8_t tile[kTileN * kScaleStride];
  __shared__ uint32_t lut[64 * 32];
  __shared__ uint8_t map_dg[2 * kTileN], map_nl[2 * kTileN];
  for (int i = threadIdx.x; i < 64 * 32; i += kThreads) {
    const int w = i / 32;
    lut[i] = (uint32_t)lut_g[4 * w] | ((uint32_t)lut_g[4 * w + 1] << 8) | ((uint32_t)lut_g[4 * w + 2] << 16) |
             ((uint32_t)lut_g[4 * w + 3] << 24);
  }
  build_scale_map(layout, map_dg, map_nl);
  const int lane = threadIdx.x & 31;
  const int64_t chunk = blockIdx.x % chunks, c0 = (int64_t)(blockIdx.x / chunks) * kScaleCols;
  const int64_t e = blockIdx.z;
  const uint8_t* __restrict__ src = part.data + e * part.expert_stride;
  const bool words = ((part.pitch | rows_real) & 3) == 0 && (reinterpret_cast<uintptr_t>(src) & 3) == 0;
#pragma unroll
  for (int it = 0; it < kTileN * (kScaleCols / 4) / kThreads; ++it) {
    const int idx = threadIdx.x + it * kThreads;
    const int row = idx / (kScaleCols / 4), cw = idx % (kScaleCols / 4);
    const int64_t n = chunk * kTileN + row, col = c0 + 4 * cw;
    uint32_t v = 0;
    if (n < part.n) {
      const uint8_t* p = src + n * part.pitch + col;
      if (words) {
        if (col < rows_real) v = __ldg(reinterpret_cast<const uint32_t*>(p));
      } else {
#pragma unroll
        for (int b = 0; b < 4; ++b)
          if (col + b < rows_real) v |= (uint32_t)__ldg(p + b) << (8 * b);
      }
    }
    *reinterpret_cast<uint32_t*>(tile + row * kScaleStride + 4 * cw) = v;
  }
  __syncthreads();
  constexpr int kWordsPerUnit = 16 * U;                  // U*64 bytes
  constexpr int kQuads = kScaleCols / U / 4;             // groups of four units per tile
  constexpr int kItems = kQuads * kWordsPerUnit;
  uint8_t* out = dst + e * dst_expert_bytes + chunk * U * kTileN;
#pragma unroll
  for (int it = 0; it < kItems / kThreads; ++it) {
    const int idx = threadIdx.x + it * kThreads;
    const int uq = idx / kWordsPerUnit, wi = idx % kWordsPerUnit;
    const int64_t g_first = c0 + (int64_t)uq * 4 * U;  // first group of the quad's first unit
    uint32_t word[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int i = 4 * wi + b, dg = map_dg[i], nl = map_nl[i];
      const uint8_t* rowp = tile + nl * kScaleStride + uq * 4 * U;
      const uint32_t w0 = *reinterpret_cast<const uint32_t*>(rowp);
      const uint32_t w1 = U == 2 ? *reinterpret_cast<const uint32_t*>(rowp + 4) : 0u;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t ws = (j * U) / 4 == 0 ? w0 : w1;
        const uint32_t v = (ws >> (8 * ((j * U + dg) & 3))) & 0xFF;
        const uint32_t enc = (lut[(v >> 2) * 32 + lane] >> (8 * (v & 3))) & 0xFF;
        word[j] |= (g_first + j * U + dg < rows_real ? enc : 0u) << (8 * b);
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t g0 = g_first + j * U;
      if (g0 < rows) *reinterpret_cast<uint32_t*>(out + (g0 / U) * dst_unit_bytes + 4 * wi) = word[j];
    }
  }
}

// Inverse of scales_kernel: scatter the units of one chunk x kScaleCols groups into a [64 rows][kScaleCols]
// tile through scale_source, then write the rows out through the decoding LUT.
__global__ void __launch_bounds__(kThreads) decode_kernel(const uint8_t* __restrict__ src, int64_t src_unit_bytes,
                                                          int64_t n_real, int64_t chunks, int64_t rows,
                                                          int64_t rows_real, Layout layout,
                                                          const uint8_t* __restrict__ dlut_g,
                                                          uint8_t* __restrict__ dst, int64_t dst_pitch,
                                                          unsigned long long* stray) {
  __shared__ __align__(16) uint8_t tile[kTileN * kScaleStride];
  __shared__ uint8_t lut[256];
  __shared__ uint8_t map_dg[2 * kTileN], map_nl[2 * kTileN];
  lut[threadIdx.x] = dlut_g[threadIdx.x];
  build_scale_map(layout, map_dg, map_nl);
  __syncthreads();
  const int u = scale_unit_rows(layout);
  const int64_t chunk = blockIdx.x % chunks, c0 = (int64_t)(blockIdx.x / chunks) * kScaleCols;
  const int words_per_unit = 16 * u;
  unsigned count = 0;
#pragma unroll
  for (int it = 0; it < kTileN * (kScaleCols / 4) / kThreads; ++it) {
    const int idx = threadIdx.x + it * kThreads;
    const int ul = idx / words_per_unit, wi = idx % words_per_unit;
    const int64_t g0 = c0 + (int64_t)ul * u;
    if (g0 >= rows) continue;
    const uint32_t v =
        __ldg(reinterpret_cast<const uint32_t*>(src + (g0 / u) * src_unit_bytes + chunk * u * kTileN + 4 * wi));
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int i = 4 * wi + b, dg = map_dg[i], nl = map_nl[i];
      const uint8_t byte = (v >> (8 * b)) & 0xFF;
      tile[nl * kScaleStride + ul * u + dg] = byte;
      if ((g0 + dg >= rows_real || chunk * kTileN + nl >= n_real) && byte) ++count;
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kTileN * kScaleCols; idx += kThreads) {
    const int nl = idx / kScaleCols, gl = idx % kScaleCols;
    const int64_t n = chunk * kTileN + nl, gc = c0 + gl;
    if (n < n_real && gc < rows_real) dst[n * dst_pitch + gc] = lut[tile[nl * kScaleStride + gl]];
  }
  count = __reduce_add_sync(0xFFFFFFFFu, count);
  if ((threadIdx.x & 31) == 0 && count) atomicAdd(stray, (unsigned long long)count);
}

__device__ __forceinline__ unsigned long long warp_min(unsigned long long v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long w = __shfl_xor_sync(0xFFFFFFFFu, v, o);
    v = w < v ? w : v;
  }
  return v;
}

// Histogram of the E4M3 bytes and the smallest key of a negative or NaN one. A block covers
// kScanBlockBytes of one expert's part. Shared counters are [bin pair][lane]: lane l adds to
// word (b/2)*32 + l, always its own bank, so the atomics never conflict; each word holds two
// 16-bit counts (bins 2p and 2p+1), which cannot overflow: a lane column receives at most
// (kThreads/32) * 16 * kScanIters = 1024 bytes per block.
static_assert((kThreads / 32) * 16 * kScanIters < 65536, "16-bit scan counters would overflow");
__global__ void __launch_bounds__(kThreads) scan_kernel(DevPart part, int64_t cols, ScanKey key,
                                                        DeviceScaleStats* stats) {
  __shared__ uint32_t hist[128 * 32];
  for (int i = threadIdx.x; i < 128 * 32; i += kThreads) hist[i] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t e = blockIdx.z;
  const uint8_t* __restrict__ src = part.data + e * part.expert_stride;
  const int64_t total = part.n * part.pitch;
  const int64_t begin = (int64_t)blockIdx.x * kScanBlockBytes;
  const int64_t end = total < begin + kScanBlockBytes ? total : begin + kScanBlockBytes;
  const bool dense = part.pitch == cols;
  const bool aligned = (reinterpret_cast<uintptr_t>(src) & 15) == 0;
  unsigned long long bad = ~0ull;
  // Counts one byte; true when it is negative or NaN.
  auto count = [&](uint32_t b) {
    atomicAdd(&hist[(b >> 1) * 32 + lane], 1u << ((b & 1) * 16));
    return e4m3_is_nan((uint8_t)b) || e4m3_is_negative((uint8_t)b);
  };
  // The key of the first bad byte of a flagged 16-byte group (rare: kept out of the hot loop).
  auto record = [&](int64_t base, const uint32_t w[4]) {
    for (int i = 0; i < 16; ++i) {
      const uint32_t b = (w[i / 4] >> (8 * (i % 4))) & 0xFF;
      if (!(e4m3_is_nan((uint8_t)b) || e4m3_is_negative((uint8_t)b))) continue;
      const int64_t idx = base + i, row = idx / part.pitch, col = idx - row * part.pitch;
      const unsigned long long k = (unsigned long long)((key.first_expert + e) * key.key_expert + key.key_part_offset +
                                                        row * key.groups + key.first_group + col);
      bad = k < bad ? k : bad;
      return;
    }
  };
  if (dense && aligned && end - begin == kScanBlockBytes) {
    // A full block: every load in flight before the first count.
    uint4 v[kScanIters];
#pragma unroll
    for (int it = 0; it < kScanIters; ++it)
      v[it] = __ldg(reinterpret_cast<const uint4*>(src + begin + 16 * ((int64_t)it * kThreads + threadIdx.x)));
#pragma unroll
    for (int it = 0; it < kScanIters; ++it) {
      const uint32_t w[4] = {v[it].x, v[it].y, v[it].z, v[it].w};
      bool flagged = false;
#pragma unroll
      for (int i = 0; i < 16; ++i) flagged |= count((w[i / 4] >> (8 * (i % 4))) & 0xFF);
      if (flagged) record(begin + 16 * ((int64_t)it * kThreads + threadIdx.x), w);
    }
  } else {
    for (int64_t base = begin + 16 * (int64_t)threadIdx.x; base < end; base += 16 * kThreads) {
      const int64_t stop = end < base + 16 ? end : base + 16;
      uint32_t w[4] = {0u, 0u, 0u, 0u};
      bool flagged = false;
      for (int64_t idx = base; idx < stop; ++idx) {
        if (!dense && idx % part.pitch >= cols) continue;
        const uint32_t b = src[idx];
        w[(idx - base) / 4] |= b << (8 * ((idx - base) % 4));
        flagged |= count(b);
      }
      // Skipped bytes (beyond cols) read as 0, which is never bad.
      if (flagged) record(base, w);
    }
  }
  bad = warp_min(bad);
  if (lane == 0 && bad != ~0ull) atomicMin(&stats->bad_key, bad);
  __syncthreads();
  for (int b = threadIdx.x; b < 256; b += kThreads) {
    const uint32_t* row = hist + (b >> 1) * 32;
    const int shift = (b & 1) * 16;
    unsigned long long sum = 0;
    for (int c = 0; c < 32; ++c) sum += (row[(c + b) & 31] >> shift) & 0xFFFF;  // rotated: no bank conflicts
    if (sum) atomicAdd(&stats->hist[b], sum);
  }
}

// The largest valid scale byte, sf (given or v2's), the lost count and the encoding LUT, as
// transforms_cpu.cc's scan_scales / scale_factor / count_lost_scales / process_scales do:
// thread t looks after byte value t.
__global__ void __launch_bounds__(256) finalize_kernel(DeviceScaleStats* stats, Layout layout, ActDtype dt,
                                                       int has_sf, float given_sf) {
  __shared__ uint32_t warp_max[8];
  __shared__ unsigned long long warp_lost[8];
  __shared__ float sf_s;
  __shared__ uint32_t max_s;
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const unsigned long long count = stats->hist[t];
  // Non-negative E4M3 bytes sort like their values; NaN (0x7F) and negatives are excluded.
  const bool valid = count && !e4m3_is_nan((uint8_t)t) && !e4m3_is_negative((uint8_t)t) && t < 0x80;
  const uint32_t m = __reduce_max_sync(0xFFFFFFFFu, valid ? (uint32_t)t : 0u);
  if (lane == 0) warp_max[warp] = m;
  __syncthreads();
  if (t == 0) {
    uint32_t mx = 0;
    for (int w = 0; w < 8; ++w) mx = warp_max[w] > mx ? warp_max[w] : mx;
    max_s = mx;
    sf_s = has_sf ? given_sf : scale_factor_for((uint8_t)mx, layout, dt);
  }
  __syncthreads();
  const float sf = sf_s;
  unsigned long long lost = t < 0x80 && scale_is_lost((uint8_t)t, layout, sf) ? count : 0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) lost += __shfl_xor_sync(0xFFFFFFFFu, lost, o);
  if (lane == 0) warp_lost[warp] = lost;
  stats->lut[t] = encode_scale((uint8_t)t, layout, sf);
  __syncthreads();
  if (t == 0) {
    unsigned long long total = 0;
    for (int w = 0; w < 8; ++w) total += warp_lost[w];
    stats->lost = total;
    stats->sf = sf;
    stats->max_byte = max_s;
  }
}

// Deterministic pseudo-random data for the benchmark.
__device__ __forceinline__ uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void fill_kernel(uint8_t* dst, int64_t bytes, uint64_t seed, int scales) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < bytes; i += (int64_t)gridDim.x * blockDim.x) {
    const uint64_t r = mix64(seed ^ (uint64_t)i);
    dst[i] = scales ? (uint8_t)(0x20 + r % 0x50) : (uint8_t)r;  // normal-range E4M3 scales, like real checkpoints
  }
}

// ---------------------------------------------------------------------------------------
// Device state
// ---------------------------------------------------------------------------------------

std::atomic<int64_t> g_memory_limit{0};

struct Availability {
  bool ok = false;
  std::string why;
  DeviceInfo info;
  double probe_ms = 0;  // how long the probe took (driver initialization included)
};

int min_compiled_arch() {
  int best = 0;
  std::string s = MFP4_CUDA_ARCHS;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find_first_of(";, ", i);
    if (j == std::string::npos) j = s.size();
    const int a = std::atoi(s.substr(i, j - i).c_str());
    if (a > 0 && (best == 0 || a < best)) best = a;
    i = j + 1;
  }
  return best;
}

std::string version_text(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }

Availability probe() {
  Availability a;
  int driver = 0;
  cudaError_t e = cudaDriverGetVersion(&driver);
  if (e != cudaSuccess || driver == 0) {
    (void)cudaGetLastError();
    a.why = "no CUDA driver (libcuda.so.1 was not found)";
    return a;
  }
  int runtime = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  int count = 0;
  e = cudaGetDeviceCount(&count);
  if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
    (void)cudaGetLastError();
    a.why = "no CUDA device";
    return a;
  }
  if (e == cudaErrorInsufficientDriver) {
    (void)cudaGetLastError();
    a.why = "the CUDA driver (CUDA " + version_text(driver) + ") is older than this build's runtime (CUDA " +
            version_text(runtime) + ")";
    return a;
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    a.why = "CUDA error: " + cuda_text(e);
    return a;
  }
  a.info.devices = count;
  const char* env = std::getenv("MARLIN_FP4_CUDA_DEVICE");
  a.info.ordinal = env && *env ? std::atoi(env) : 0;
  if (a.info.ordinal < 0 || a.info.ordinal >= count) {
    a.why = "MARLIN_FP4_CUDA_DEVICE=" + std::string(env ? env : "") + " but there are " + std::to_string(count) +
            " CUDA devices";
    return a;
  }
  cudaDeviceProp prop;
  e = cudaGetDeviceProperties(&prop, a.info.ordinal);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    a.why = "CUDA error: " + cuda_text(e);
    return a;
  }
  a.info.name = prop.name;
  a.info.major = prop.major;
  a.info.minor = prop.minor;
  a.info.total_memory = (int64_t)prop.totalGlobalMem;
  const int cc = prop.major * 10 + prop.minor, need = min_compiled_arch();
  if (cc < need) {
    a.why = std::string(prop.name) + " has compute capability " + std::to_string(prop.major) + "." +
            std::to_string(prop.minor) + "; this build needs sm_" + std::to_string(need) + " or newer";
    return a;
  }
  a.ok = true;
  return a;
}

const Availability& availability() {
  static const Availability a = [] {
    const auto t0 = std::chrono::steady_clock::now();
    Availability r = probe();
    r.probe_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }();
  return a;
}

std::atomic<double> g_context_ms{0};  // creation of the primary context (the first require_device)

cudaMemPool_t g_pool = nullptr;  // the device's default pool, when it supports stream-ordered allocation

// Selects the device on this thread and returns it; throws when there is none.
void require_device() {
  const Availability& a = availability();
  if (!a.ok) throw CudaError("CUDA unavailable: " + a.why);
  static std::once_flag context_once;
  std::call_once(context_once, [&] {
    // The first use creates the device's primary context, which takes a while (warm_up does
    // it early, on a pool thread); other threads wait here rather than inside the driver.
    const auto t0 = std::chrono::steady_clock::now();
    if (cudaSetDevice(a.info.ordinal) == cudaSuccess) (void)cudaFree(nullptr);
    (void)cudaGetLastError();
    g_context_ms.store(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  });
  check(cudaSetDevice(a.info.ordinal), "selecting CUDA device " + std::to_string(a.info.ordinal));
  static std::once_flag once;
  static cudaError_t pool_error = cudaSuccess;
  std::call_once(once, [&] {
    int pools = 0;
    pool_error = cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, a.info.ordinal);
    if (pool_error != cudaSuccess || !pools) return;  // plain cudaMalloc then
    cudaMemPool_t pool = nullptr;
    pool_error = cudaDeviceGetDefaultMemPool(&pool, a.info.ordinal);
    if (pool_error != cudaSuccess) return;
    // Keep freed memory cached between tensors (up to a quarter of the device, 8 GiB at
    // most) instead of returning it to the driver at every synchronization.
    uint64_t keep = std::min<uint64_t>((uint64_t)a.info.total_memory / 4, 8ull << 30);
    pool_error = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
    if (pool_error == cudaSuccess) g_pool = pool;
  });
  check(pool_error, "configuring the device memory pool");
}

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "creating a CUDA stream"); }
  ~Stream() {
    cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

// One device allocation per call, handed out in 256-byte aligned pieces.
class Arena {
 public:
  explicit Arena(cudaStream_t s = nullptr) : s_(s) {}
  void bind(cudaStream_t s) { s_ = s; }
  ~Arena() { release(); }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // false when the device (or the testing limit) cannot give `bytes`.
  bool reserve(int64_t bytes) {
    release();
    const int64_t limit = g_memory_limit.load();
    if (limit > 0 && bytes > limit) return false;
    void* p = nullptr;
    const size_t size = (size_t)std::max<int64_t>(bytes, 1);
    const cudaError_t e = g_pool ? cudaMallocAsync(&p, size, s_) : cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      return false;
    }
    check(e, "allocating " + mb(bytes) + " MB of device memory");
    base_ = static_cast<uint8_t*>(p);
    size_ = bytes;
    used_ = 0;
    return true;
  }
  template <typename T>
  T* take(int64_t bytes) {
    const int64_t at = used_;
    used_ += align_up(bytes);
    if (used_ > size_) throw CudaError("internal error: device arena overflow");
    return reinterpret_cast<T*>(base_ + at);
  }
  void release() {
    if (base_) {
      if (g_pool) {
        cudaFreeAsync(base_, s_);
      } else {
        cudaStreamSynchronize(s_);
        cudaFree(base_);
      }
    }
    base_ = nullptr;
    size_ = used_ = 0;
  }

 private:
  cudaStream_t s_;
  uint8_t* base_ = nullptr;
  int64_t size_ = 0, used_ = 0;
};

struct Piece {
  int64_t experts, rows;
};

// The largest piece (first every expert and row, then fewer experts, then fewer rows in
// multiples of row_step) whose device buffers fit in one allocation; reserves it.
Piece plan_pieces(Arena& arena, cudaStream_t s, int64_t experts, int64_t rows, int64_t row_step,
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

// Rows of `width` bytes, host <-> device; one flat copy when the rows are contiguous.
void copy_rows(void* dst, int64_t dpitch, const void* src, int64_t spitch, int64_t width, int64_t height,
               cudaMemcpyKind kind, cudaStream_t s, const char* what) {
  if (width <= 0 || height <= 0) return;
  cudaError_t e;
  if (height == 1 || (width == dpitch && width == spitch)) {
    e = cudaMemcpyAsync(dst, src, (size_t)(width * height), kind, s);
  } else {
    e = cudaMemcpy2DAsync(dst, (size_t)dpitch, src, (size_t)spitch, (size_t)width, (size_t)height, kind, s);
  }
  check(e, std::string("copying ") + what + (kind == cudaMemcpyHostToDevice ? " to the device" : " from the device"));
}

void sync(cudaStream_t s, const char* what) { check(cudaStreamSynchronize(s), what); }

// ---------------------------------------------------------------------------------------
// Pinned host memory and profiling
// ---------------------------------------------------------------------------------------

std::mutex g_pin_mutex;
std::map<uintptr_t, size_t> g_pinned;  // base -> bytes of every live pin_host registration

bool host_is_pinned(const void* p, int64_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(g_pin_mutex);
  auto it = g_pinned.upper_bound(a);
  if (it == g_pinned.begin()) return false;
  --it;
  return a + (uintptr_t)bytes <= it->first + it->second;
}

std::atomic<bool> g_profiling{false};
std::mutex g_profile_mutex;
Profile g_profile;

enum class Stage { H2D, Kernel, D2H };

// Brackets the stages of one host-level call with CUDA events when profiling is on (nothing
// otherwise), and adds their elapsed times to g_profile once the call's streams are idle.
// begin() and end() pairs do not nest: each stage is issued whole before the next begins.
class StageTimer {
 public:
  StageTimer() : on_(g_profiling.load(std::memory_order_relaxed)) {
    if (on_) t0_ = std::chrono::steady_clock::now();
  }
  ~StageTimer() {
    if (open_) cudaEventDestroy(open_);
    for (const Mark& m : marks_) {
      cudaEventDestroy(m.a);
      cudaEventDestroy(m.b);
    }
  }
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;

  bool on() const { return on_; }
  void begin(cudaStream_t s) {
    if (!on_) return;
    open_ = record(s);
  }
  // bytes: what the stage moved; pageable: how much of it from or to unpinned host memory.
  void end(cudaStream_t s, Stage st, int64_t bytes = 0, int64_t pageable = 0) {
    if (!on_) return;
    marks_.push_back({open_, record(s), st});
    open_ = nullptr;
    if (st == Stage::H2D) delta_.h2d_bytes += bytes;
    if (st == Stage::D2H) delta_.d2h_bytes += bytes;
    delta_.pageable_bytes += pageable;
  }
  void add_pieces(int64_t n) { delta_.pieces += n; }
  // After the streams are synchronized.
  void finish() {
    if (!on_) return;
    for (const Mark& m : marks_) {
      float ms = 0;
      if (cudaEventElapsedTime(&ms, m.a, m.b) != cudaSuccess) {
        (void)cudaGetLastError();
        continue;
      }
      (m.stage == Stage::H2D ? delta_.h2d_ms : m.stage == Stage::Kernel ? delta_.kernel_ms : delta_.d2h_ms) += ms;
    }
    delta_.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count();
    std::lock_guard<std::mutex> lock(g_profile_mutex);
    g_profile.calls += 1;
    g_profile.h2d_ms += delta_.h2d_ms;
    g_profile.kernel_ms += delta_.kernel_ms;
    g_profile.d2h_ms += delta_.d2h_ms;
    g_profile.wall_ms += delta_.wall_ms;
    g_profile.h2d_bytes += delta_.h2d_bytes;
    g_profile.d2h_bytes += delta_.d2h_bytes;
    g_profile.pageable_bytes += delta_.pageable_bytes;
    g_profile.pieces += delta_.pieces;
  }

 private:
  struct Mark {
    cudaEvent_t a, b;
    Stage stage;
  };
  static cudaEvent_t record(cudaStream_t s) {
    cudaEvent_t e = nullptr;
    check(cudaEventCreate(&e), "creating a timing event");
    const cudaError_t r = cudaEventRecord(e, s);
    if (r != cudaSuccess) cudaEventDestroy(e);
    check(r, "recording a timing event");
    return e;
  }
  bool on_;
  std::chrono::steady_clock::time_point t0_;
  cudaEvent_t open_ = nullptr;
  std::vector<Mark> marks_;
  Profile delta_;
};

// Whether host range [p, p + bytes) is pageable (not pinned); only asked when profiling.
bool pageable(const StageTimer& t, const void* p, int64_t bytes) {
  return t.on() && bytes > 0 && !host_is_pinned(p, bytes);
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

dim3 tile_grid(int64_t chunks, int64_t tiles, int64_t experts) {
  if (chunks * tiles > kMaxGridX) throw CudaError("tensor too large for one launch");
  return dim3((unsigned)(chunks * tiles), 1, (unsigned)experts);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Device-pointer API
// ---------------------------------------------------------------------------------------

void launch_repack(const DevPart& part, int64_t experts, int64_t rows, int64_t rows_real, uint32_t* dst,
                   int64_t dst_row_words, int64_t dst_expert_words, cudaStream_t stream) {
  if (experts <= 0 || rows <= 0) return;
  const int64_t chunks = part.np / kTileN, tiles = ceil_div(rows, kRepackRows);
  for (int64_t e0 = 0; e0 < experts; e0 += kMaxGridZ) {
    DevPart p = part;
    p.data += e0 * part.expert_stride;
    const int64_t ne = std::min(kMaxGridZ, experts - e0);
    repack_kernel<<<tile_grid(chunks, tiles, ne), kThreads, 0, stream>>>(p, chunks, rows, rows_real,
                                                                          dst + e0 * dst_expert_words, dst_row_words,
                                                                          dst_expert_words);
    check_launch("weight repack");
  }
}

void launch_reset_stats(DeviceScaleStats* stats, cudaStream_t stream) {
  check(cudaMemsetAsync(stats, 0, sizeof(DeviceScaleStats), stream), "clearing the scale statistics");
  check(cudaMemsetAsync(&stats->bad_key, 0xFF, sizeof(stats->bad_key), stream), "clearing the scale statistics");
}

void launch_scan(const DevPart& part, int64_t experts, int64_t cols, const ScanKey& key, DeviceScaleStats* stats,
                 cudaStream_t stream) {
  if (experts <= 0 || cols <= 0 || part.n <= 0) return;
  const int64_t blocks = ceil_div(part.n * part.pitch, kScanBlockBytes);
  if (blocks > kMaxGridX) throw CudaError("tensor too large for one launch");
  for (int64_t e0 = 0; e0 < experts; e0 += kMaxGridZ) {
    DevPart p = part;
    p.data += e0 * part.expert_stride;
    ScanKey k = key;
    k.first_expert += e0;
    const int64_t ne = std::min(kMaxGridZ, experts - e0);
    scan_kernel<<<dim3((unsigned)blocks, 1, (unsigned)ne), kThreads, 0, stream>>>(p, cols, k, stats);
    check_launch("scale scan");
  }
}

void launch_finalize(DeviceScaleStats* stats, Layout layout, ActDtype dt, bool has_sf, float sf, cudaStream_t stream) {
  finalize_kernel<<<1, 256, 0, stream>>>(stats, layout, dt, has_sf ? 1 : 0, sf);
  check_launch("scale statistics");
}

void launch_scales(const DevPart& part, int64_t experts, int64_t rows, int64_t rows_real, Layout layout,
                   const DeviceScaleStats* stats, uint8_t* dst, int64_t dst_unit_bytes, int64_t dst_expert_bytes,
                   cudaStream_t stream) {
  if (experts <= 0 || rows <= 0) return;
  const int64_t chunks = part.np / kTileN, tiles = ceil_div(rows, kScaleCols);
  for (int64_t e0 = 0; e0 < experts; e0 += kMaxGridZ) {
    DevPart p = part;
    p.data += e0 * part.expert_stride;
    const int64_t ne = std::min(kMaxGridZ, experts - e0);
    if (layout == Layout::V1) {
      scales_kernel<Layout::V1><<<tile_grid(chunks, tiles, ne), kThreads, 0, stream>>>(
          p, chunks, rows, rows_real, stats->lut, dst + e0 * dst_expert_bytes, dst_unit_bytes, dst_expert_bytes);
    } else {
      scales_kernel<Layout::V2><<<tile_grid(chunks, tiles, ne), kThreads, 0, stream>>>(
          p, chunks, rows, rows_real, stats->lut, dst + e0 * dst_expert_bytes, dst_unit_bytes, dst_expert_bytes);
    }
    check_launch("scale processing");
  }
}

void launch_unpack(const uint32_t* src, int64_t src_row_words, int64_t n, int64_t np, int64_t rows,
                   int64_t rows_real, uint8_t* dst, int64_t dst_pitch, unsigned long long* stray,
                   cudaStream_t stream) {
  if (rows <= 0) return;
  const int64_t chunks = np / kTileN, tiles = ceil_div(rows, kRepackRows);
  unpack_kernel<<<tile_grid(chunks, tiles, 1), kThreads, 0, stream>>>(src, src_row_words, n, chunks, rows, rows_real,
                                                                       dst, dst_pitch, stray);
  check_launch("weight unpack");
}

void launch_decode(const uint8_t* src, int64_t src_unit_bytes, int64_t n, int64_t np, int64_t rows,
                   int64_t rows_real, Layout layout, const uint8_t* dlut, uint8_t* dst, int64_t dst_pitch,
                   unsigned long long* stray, cudaStream_t stream) {
  if (rows <= 0) return;
  const int64_t chunks = np / kTileN, tiles = ceil_div(rows, kScaleCols);
  decode_kernel<<<tile_grid(chunks, tiles, 1), kThreads, 0, stream>>>(src, src_unit_bytes, n, chunks, rows,
                                                                       rows_real, layout, dlut, dst, dst_pitch, stray);
  check_launch("scale decoding");
}

// ---------------------------------------------------------------------------------------
// Host-level API
// ---------------------------------------------------------------------------------------

bool cuda_available(std::string& why) {
  const Availability& a = availability();
  why = a.why;
  return a.ok;
}

bool device_info(DeviceInfo& info) {
  const Availability& a = availability();
  info = a.info;
  return a.ok;
}

const char* compiled_archs() {
  static const std::string s = [] {
    std::string in = MFP4_CUDA_ARCHS, out;
    size_t i = 0;
    while (i < in.size()) {
      size_t j = in.find_first_of(";, ", i);
      if (j == std::string::npos) j = in.size();
      if (j > i) out += (out.empty() ? "sm_" : ",sm_") + in.substr(i, j - i);
      i = j + 1;
    }
    return out;
  }();
  return s.c_str();
}

void set_memory_limit(int64_t bytes) { g_memory_limit.store(bytes < 0 ? 0 : bytes); }

bool pin_host(void* data, size_t bytes) {
  if (!data || bytes == 0 || !availability().ok) return false;
  const auto t0 = std::chrono::steady_clock::now();
  bool ok = false;
  try {
    require_device();
    const cudaError_t e = cudaHostRegister(data, bytes, cudaHostRegisterPortable);
    if (e == cudaSuccess) {
      std::lock_guard<std::mutex> lock(g_pin_mutex);
      g_pinned[reinterpret_cast<uintptr_t>(data)] = bytes;
      ok = true;
    } else {
      (void)cudaGetLastError();
    }
  } catch (const CudaError&) {
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(g_profile_mutex);
  if (ok) {
    g_profile.pinned += 1;
    g_profile.pinned_bytes += (int64_t)bytes;
  } else {
    g_profile.pin_failures += 1;
  }
  g_profile.pin_ms += ms;
  return ok;
}

bool unpin_host(void* data) {
  {
    std::lock_guard<std::mutex> lock(g_pin_mutex);
    if (!g_pinned.erase(reinterpret_cast<uintptr_t>(data))) return false;
  }
  const cudaError_t e = cudaHostUnregister(data);
  if (e != cudaSuccess) (void)cudaGetLastError();
  return e == cudaSuccess;
}

void set_profiling(bool on, bool reset) {
  std::lock_guard<std::mutex> lock(g_profile_mutex);
  if (reset) g_profile = Profile{};
  g_profiling.store(on);
}

bool profiling() { return g_profiling.load(); }

Profile profile() {
  std::lock_guard<std::mutex> lock(g_profile_mutex);
  Profile p = g_profile;
  p.probe_ms = availability().probe_ms;
  p.context_ms = g_context_ms.load();
  return p;
}

bool warm_up() {
  if (!availability().ok) return false;
  require_device();
  return true;
}

namespace {

// Per-part byte offsets of one expert's source slice: part p holds n_p rows of `row_bytes`.
struct SourceLayout {
  std::vector<int64_t> offset;
  int64_t expert_bytes = 0;
};

SourceLayout source_layout(const std::vector<HostPart>& parts, int64_t row_bytes) {
  SourceLayout l;
  for (const HostPart& p : parts) {
    l.offset.push_back(l.expert_bytes);
    l.expert_bytes += align_up(p.n * row_bytes);
  }
  return l;
}

// Uploads K-columns [col0, col0 + width) of every part of experts [e0, e0 + ne) (bytes of each
// source row, source rows `src_row_bytes` apart) into a SourceLayout of `width`-byte rows.
void upload_parts(const HostStack& experts, int64_t e0, int64_t ne, int64_t col0, int64_t width,
                  int64_t src_row_bytes, const SourceLayout& l, uint8_t* dev, cudaStream_t s, const char* what) {
  if (width <= 0) return;
  for (int64_t e = 0; e < ne; ++e)
    for (size_t p = 0; p < experts[e0 + e].size(); ++p) {
      const HostPart& hp = experts[e0 + e][p];
      copy_rows(dev + e * l.expert_bytes + l.offset[p], width, hp.data + col0, src_row_bytes, width, hp.n,
                cudaMemcpyHostToDevice, s, what);
    }
}

void check_stack(const HostStack& experts) {
  if (experts.empty() || experts[0].empty()) throw InvalidInput("empty stack");
}

}  // namespace

namespace {

// Output rows [begin, end) of the kp/16; end < 0 means all of them.
void resolve_rows(int64_t kp, int64_t step, int64_t& begin, int64_t& end) {
  const int64_t rows = kp / kGroup;
  if (end < 0) end = rows;
  if (begin < 0 || begin > end || end > rows || begin % step || end % step)
    throw InvalidInput("row range [" + std::to_string(begin) + ", " + std::to_string(end) + ") outside the " +
                       std::to_string(rows) + " rows");
}

}  // namespace

void run_repack_stack(const HostStack& experts, int64_t k, int64_t kp, uint32_t* dst, int64_t row_begin,
                      int64_t row_end) {
  check_stack(experts);
  const std::vector<HostPart>& parts = experts[0];
  for (const HostPart& p : parts) check_weight_shapes(p.n, p.np, k, kp);
  resolve_rows(kp, 1, row_begin, row_end);
  if (row_begin == row_end) return;
  require_device();
  StageTimer timer;
  const int64_t E = (int64_t)experts.size(), rows = row_end - row_begin, g = k / kGroup;
  std::vector<int64_t> word_off;
  int64_t row_words = 0, max_np = 0;
  for (const HostPart& p : parts) {
    word_off.push_back(row_words);
    row_words += 2 * p.np;
    max_np = std::max(max_np, p.np);
  }
  const int64_t slab = rows * row_words;  // words per expert in dst

  // Pieces: ne experts x nr output rows x (one part's) c columns. Output rows depend only on
  // their own K-block columns of the source, and output columns only on the same source rows,
  // so a piece reads rows [n0, n0 + c) of one part (contiguous when nr covers K) and writes a
  // column block of the output rows. About kPieceBytes of output each, so that a big tensor
  // becomes several pieces whose copies and kernels overlap; small experts are grouped.
  constexpr int64_t kPieceBytes = 4 << 20;
  const int64_t expert_out = rows * 8 * max_np;
  const int64_t group = std::min<int64_t>(E, std::max<int64_t>(1, kPieceBytes / std::max<int64_t>(1, expert_out)));
  auto count_pieces = [&](int64_t ne, int64_t nr, int64_t c) {
    int64_t blocks = 0;
    for (const HostPart& p : parts) blocks += ceil_div(p.np, c);
    return ceil_div(E, ne) * ceil_div(rows, nr) * blocks;
  };
  int max_slots = Pipeline::kMaxSlots;
  auto slots = [&](int64_t ne, int64_t nr, int64_t c) {
    return (int)std::min<int64_t>(max_slots, count_pieces(ne, nr, c));
  };
  auto in_bytes = [&](int64_t ne, int64_t nr, int64_t c) { return ne * align_up(c * 8 * std::min(nr, g)); };
  auto out_bytes = [&](int64_t ne, int64_t nr, int64_t c) { return align_up(ne * nr * 8 * c); };

  // The largest pieces whose buffers fit in one allocation: fewer experts first, then
  // narrower column blocks (uploads stay contiguous), then fewer rows (in multiples of 16),
  // and at last one set of buffers (no overlap).
  Pipeline pl;
  int64_t pe = group, pr = rows;
  int64_t c = std::min(max_np, std::max<int64_t>(kTileN, kPieceBytes / (8 * pe * pr) / kTileN * kTileN));
  for (bool trimmed = false;;) {
    const int64_t b = slots(pe, pr, c) * (in_bytes(pe, pr, c) + out_bytes(pe, pr, c));
    if (pl.arena().reserve(b)) break;
    if (!trimmed && g_memory_limit.load() == 0) {
      // Memory cached by the pool (freed by earlier calls) may be what is missing.
      cudaStreamSynchronize(pl.in());
      if (g_pool) cudaMemPoolTrimTo(g_pool, 0);
      trimmed = true;
    } else if (pe > 1) {
      pe = (pe + 1) / 2;
    } else if (c > kTileN) {
      c = round_up((c + 1) / 2, kTileN);
    } else if (pr > kRepackRows) {
      pr = round_up((pr + 1) / 2, kRepackRows);
    } else if (max_slots > 1) {
      max_slots = 1;
    } else {
      throw CudaError("CUDA out of memory allocating " + mb(b) + " MB for the weight (already sliced to one expert, " +
                      std::to_string(kTileN) + " columns and " + std::to_string(pr) + " K-blocks)");
    }
  }
  const Piece pc{pe, pr};
  const int S = slots(pe, pr, c);
  uint8_t* din[Pipeline::kMaxSlots];
  uint32_t* dout[Pipeline::kMaxSlots];
  for (int i = 0; i < S; ++i) {
    din[i] = pl.arena().take<uint8_t>(in_bytes(pe, pr, c));
    dout[i] = pl.arena().take<uint32_t>(out_bytes(pe, pr, c));
  }
  int64_t issued = 0;
  for (int64_t e0 = 0; e0 < E; e0 += pc.experts) {
    const int64_t ne = std::min(pc.experts, E - e0);
    for (int64_t d0 = 0; d0 < rows; d0 += pc.rows) {
      const int64_t nr = std::min(pc.rows, rows - d0), r0 = row_begin + d0;  // r0: row of the whole tensor
      const int64_t w = std::max<int64_t>(0, std::min(r0 + nr, g) - r0);  // K-blocks with data
      for (size_t p = 0; p < parts.size(); ++p) {
        for (int64_t n0 = 0; n0 < parts[p].np; n0 += c) {
          const int64_t cp = std::min(c, parts[p].np - n0);                  // columns (a multiple of 64)
          const int64_t nreal = std::clamp<int64_t>(parts[p].n - n0, 0, cp);  // of them, rows of the source
          const int64_t stride = align_up(cp * 8 * w);                       // device bytes per expert
          const int slot = (int)(issued++ % S);
          uint8_t* const in = din[slot];
          uint32_t* const out = dout[slot];
          pl.piece(
              slot, timer,
              [&](cudaStream_t st) {
                Pipeline::Moved m;
                if (nreal == 0 || w == 0) return m;
                for (int64_t e = 0; e < ne; ++e) {
                  const uint8_t* src = experts[e0 + e][p].data + n0 * (k / 2) + 8 * r0;
                  copy_rows(in + e * stride, 8 * w, src, k / 2, 8 * w, nreal, cudaMemcpyHostToDevice, st, "the weight");
                  m.bytes += nreal * 8 * w;
                  if (pageable(timer, src, (nreal - 1) * (k / 2) + 8 * w)) m.pageable += nreal * 8 * w;
                }
                return m;
              },
              [&](cudaStream_t st) {
                const DevPart dp{in, stride, 8 * w, nreal, cp};
                launch_repack(dp, ne, nr, w, out, 2 * cp, nr * 2 * cp, st);
              },
              [&](cudaStream_t st) {
                Pipeline::Moved m;
                if (2 * cp == row_words) {  // the whole width: one copy (contiguous when nr covers the rows)
                  uint32_t* to = dst + e0 * slab + d0 * row_words;
                  copy_rows(to, slab * 4, out, nr * row_words * 4, nr * row_words * 4, ne, cudaMemcpyDeviceToHost, st,
                            "the packed weight");
                  if (pageable(timer, to, ((ne - 1) * slab + nr * row_words) * 4)) m.pageable += ne * nr * row_words * 4;
                } else {
                  for (int64_t e = 0; e < ne; ++e) {
                    uint32_t* to = dst + (e0 + e) * slab + d0 * row_words + word_off[p] + 2 * n0;
                    copy_rows(to, row_words * 4, out + e * nr * 2 * cp, 8 * cp, 8 * cp, nr, cudaMemcpyDeviceToHost, st,
                              "the packed weight");
                    if (pageable(timer, to, ((nr - 1) * row_words + 2 * cp) * 4)) m.pageable += nr * 8 * cp;
                  }
                }
                m.bytes = ne * nr * 8 * cp;
                return m;
              });
        }
      }
    }
  }
  pl.sync("repacking the weight");
  timer.add_pieces(issued);
  timer.finish();
}

ScaleRunResult run_scales_stack(const HostStack& experts, int64_t k, int64_t kp, Layout layout, ActDtype dt,
                                bool has_sf, float sf, uint8_t* dst, int64_t row_begin, int64_t row_end, bool scan) {
  check_stack(experts);
  const std::vector<HostPart>& parts = experts[0];
  for (const HostPart& p : parts) check_scale_shapes(p.n, p.np, k, kp, layout);
  const int64_t u = scale_unit_rows(layout);
  resolve_rows(kp, u, row_begin, row_end);
  if (!scan && !has_sf) throw InvalidInput("processing scales without a scan needs sf");
  ScaleRunResult result;
  result.sf = has_sf ? sf : 1.0f;
  if (row_begin == row_end && !scan) return result;
  require_device();
  StageTimer timer;
  const int64_t E = (int64_t)experts.size(), rows = row_end - row_begin, g = k / kGroup;
  const int64_t all_rows = kp / kGroup;
  std::vector<int64_t> col_off, key_off;
  int64_t total_np = 0, key_expert = 0;
  for (const HostPart& p : parts) {
    col_off.push_back(total_np);
    total_np += p.np;
    key_off.push_back(key_expert);
    key_expert += p.n * g;
  }
  const int64_t slab = rows * total_np;  // bytes per expert
  Stream stream;
  Arena arena(stream.s);
  auto bytes = [&](int64_t ne, int64_t nr) {
    return align_up(sizeof(DeviceScaleStats)) + ne * source_layout(parts, std::min(nr, g)).expert_bytes +
           align_up(ne * nr * total_np);
  };
  const Piece pc = plan_pieces(arena, stream.s, E, scan ? std::max(rows, all_rows) : rows, kRepackRows, bytes,
                               "the block scales");
  DeviceScaleStats* stats = arena.take<DeviceScaleStats>(sizeof(DeviceScaleStats));
  uint8_t* din = arena.take<uint8_t>(pc.experts * source_layout(parts, std::min(pc.rows, g)).expert_bytes);
  uint8_t* dout = arena.take<uint8_t>(pc.experts * pc.rows * total_np);
  // The scan's upload serves pass 2 when one piece holds everything.
  const bool whole = scan && pc.experts == E && pc.rows >= all_rows && rows == all_rows;
  // Groups [r0, r0 + w) of every part of experts [e0, e0 + ne), timed as one upload.
  auto upload = [&](int64_t e0, int64_t ne, int64_t r0, int64_t w, const SourceLayout& l) {
    timer.begin(stream.s);
    upload_parts(experts, e0, ne, r0, w, g, l, din, stream.s, "the block scales");
    int64_t moved = 0, slow = 0;
    for (int64_t e = 0; timer.on() && e < ne; ++e)
      for (const HostPart& hp : experts[e0 + e]) {
        moved += hp.n * w;
        if (pageable(timer, hp.data, hp.n * g)) slow += hp.n * w;
      }
    timer.end(stream.s, Stage::H2D, moved, slow);
  };

  // Pass 1: validate and count every scale of the stack (sf spans all experts and rows).
  launch_reset_stats(stats, stream.s);
  for (int64_t e0 = 0; scan && e0 < E; e0 += pc.experts) {
    const int64_t ne = std::min(pc.experts, E - e0);
    for (int64_t r0 = 0; r0 < all_rows; r0 += pc.rows) {
      const int64_t nr = std::min(pc.rows, all_rows - r0);
      const int64_t w = std::max<int64_t>(0, std::min(r0 + nr, g) - r0);
      if (w == 0) continue;
      const SourceLayout l = source_layout(parts, w);
      upload(e0, ne, r0, w, l);
      timer.begin(stream.s);
      for (size_t p = 0; p < parts.size(); ++p) {
        const DevPart dp{din + l.offset[p], l.expert_bytes, w, parts[p].n, parts[p].np};
        launch_scan(dp, ne, w, ScanKey{e0, key_expert, key_off[p], g, r0}, stats, stream.s);
      }
      timer.end(stream.s, Stage::Kernel);
    }
  }
  timer.begin(stream.s);
  launch_finalize(stats, layout, dt, has_sf, sf, stream.s);
  timer.end(stream.s, Stage::Kernel);
  DeviceScaleStats host;
  timer.begin(stream.s);
  check(cudaMemcpyAsync(&host, stats, sizeof host, cudaMemcpyDeviceToHost, stream.s), "reading the scale statistics");
  timer.end(stream.s, Stage::D2H);  // a few KB of statistics, not counted as data
  sync(stream.s, "scanning the block scales");

  if (host.bad_key != ~0ull) {
    const int64_t key = (int64_t)host.bad_key;
    result.bad_expert = key / key_expert;
    const int64_t rem = key % key_expert;
    for (size_t p = 0; p < parts.size(); ++p) {
      if (rem >= key_off[p] && rem < key_off[p] + parts[p].n * g) {
        result.bad_part = (int64_t)p;
        result.bad_index = rem - key_off[p];
        result.bad_byte = experts[result.bad_expert][p].data[result.bad_index];
        break;
      }
    }
    if (result.bad_part < 0 || result.bad_expert >= E) throw CudaError("internal error: bad scale key out of range");
    return result;
  }
  result.sf = host.sf;
  result.zeroed = (int64_t)host.lost;
  result.max_byte = (uint8_t)host.max_byte;

  // Pass 2: the processed scales of rows [row_begin, row_end).
  for (int64_t e0 = 0; e0 < E; e0 += pc.experts) {
    const int64_t ne = std::min(pc.experts, E - e0);
    for (int64_t d0 = 0; d0 < rows; d0 += pc.rows) {
      const int64_t nr = std::min(pc.rows, rows - d0), r0 = row_begin + d0;
      const int64_t w = std::max<int64_t>(0, std::min(r0 + nr, g) - r0);
      const SourceLayout l = source_layout(parts, w);
      if (!whole) upload(e0, ne, r0, w, l);
      timer.begin(stream.s);
      for (size_t p = 0; p < parts.size(); ++p) {
        const DevPart dp{din + l.offset[p], l.expert_bytes, w, parts[p].n, parts[p].np};
        launch_scales(dp, ne, nr, w, layout, stats, dout + u * col_off[p], u * total_np, nr * total_np, stream.s);
      }
      timer.end(stream.s, Stage::Kernel);
      uint8_t* to = dst + e0 * slab + d0 * total_np;
      timer.begin(stream.s);
      copy_rows(to, slab, dout, nr * total_np, nr * total_np, ne, cudaMemcpyDeviceToHost, stream.s,
                "the processed scales");
      timer.end(stream.s, Stage::D2H, ne * nr * total_np,
                pageable(timer, to, (ne - 1) * slab + nr * total_np) ? ne * nr * total_np : 0);
    }
  }
  sync(stream.s, "processing the block scales");
  timer.finish();
  return result;
}

int64_t run_unpack_weight(const uint32_t* src, int64_t src_row_words, int64_t n, int64_t np, int64_t k, int64_t kp,
                          uint8_t* dst) {
  check_weight_shapes(n, np, k, kp);
  if (2 * np > src_row_words) throw InvalidInput("source row too narrow");
  require_device();
  const int64_t rows = kp / kGroup, g = k / kGroup, part_words = 2 * np;
  Stream stream;
  Arena arena(stream.s);
  auto bytes = [&](int64_t, int64_t nr) {
    return align_up(8) + align_up(nr * part_words * 4) + align_up(n * 8 * std::min(nr, g));
  };
  const Piece pc = plan_pieces(arena, stream.s, 1, rows, kRepackRows, bytes, "the packed weight");
  auto* stray = arena.take<unsigned long long>(8);
  uint32_t* din = arena.take<uint32_t>(pc.rows * part_words * 4);
  uint8_t* dout = arena.take<uint8_t>(n * 8 * std::min(pc.rows, g));
  check(cudaMemsetAsync(stray, 0, 8, stream.s), "clearing a counter");
  for (int64_t r0 = 0; r0 < rows; r0 += pc.rows) {
    const int64_t nr = std::min(pc.rows, rows - r0);
    const int64_t w = std::max<int64_t>(0, std::min(r0 + nr, g) - r0);
    copy_rows(din, part_words * 4, src + r0 * src_row_words, src_row_words * 4, part_words * 4, nr,
              cudaMemcpyHostToDevice, stream.s, "the packed weight");
    launch_unpack(din, part_words, n, np, nr, w, dout, 8 * w, stray, stream.s);
    copy_rows(dst + 8 * r0, k / 2, dout, 8 * w, 8 * w, n, cudaMemcpyDeviceToHost, stream.s, "the weight");
  }
  unsigned long long count = 0;
  check(cudaMemcpyAsync(&count, stray, 8, cudaMemcpyDeviceToHost, stream.s), "reading a counter");
  sync(stream.s, "unpacking the weight");
  return (int64_t)count;
}

int64_t run_decode_scales(const uint8_t* src, int64_t total_np, int64_t n, int64_t np, int64_t k, int64_t kp,
                          Layout layout, float sf, uint8_t* dst) {
  check_scale_shapes(n, np, k, kp, layout);
  if (np > total_np) throw InvalidInput("part wider than the processed scales");
  require_device();
  const int64_t rows = kp / kGroup, g = k / kGroup, u = scale_unit_rows(layout);
  const int64_t unit_bytes = u * total_np, part_unit = u * np;
  // Inverse of encode_scale over the E4M3 bytes, built exactly as the CPU's decode_scales does.
  uint8_t dlut[256];
  std::memset(dlut, 0x7F, sizeof dlut);
  for (int b = 0x7E; b >= 0; --b) dlut[encode_scale((uint8_t)b, layout, sf)] = (uint8_t)b;
  dlut[0] = 0;
  Stream stream;
  Arena arena(stream.s);
  auto bytes = [&](int64_t, int64_t nr) {
    return align_up(8) + align_up(256) + align_up(nr / u * part_unit) + align_up(n * std::min(nr, g));
  };
  const Piece pc = plan_pieces(arena, stream.s, 1, rows, kRepackRows, bytes, "the processed scales");
  auto* stray = arena.take<unsigned long long>(8);
  uint8_t* dlut_dev = arena.take<uint8_t>(256);
  uint8_t* din = arena.take<uint8_t>(pc.rows / u * part_unit);
  uint8_t* dout = arena.take<uint8_t>(n * std::min(pc.rows, g));
  check(cudaMemsetAsync(stray, 0, 8, stream.s), "clearing a counter");
  check(cudaMemcpyAsync(dlut_dev, dlut, 256, cudaMemcpyHostToDevice, stream.s), "copying the decoding table");
  for (int64_t r0 = 0; r0 < rows; r0 += pc.rows) {
    const int64_t nr = std::min(pc.rows, rows - r0);
    const int64_t w = std::max<int64_t>(0, std::min(r0 + nr, g) - r0);
    copy_rows(din, part_unit, src + (r0 / u) * unit_bytes, unit_bytes, part_unit, nr / u, cudaMemcpyHostToDevice,
              stream.s, "the processed scales");
    launch_decode(din, part_unit, n, np, nr, w, layout, dlut_dev, dout, w, stray, stream.s);
    copy_rows(dst + r0, g, dout, w, w, n, cudaMemcpyDeviceToHost, stream.s, "the block scales");
  }
  unsigned long long count = 0;
  check(cudaMemcpyAsync(&count, stray, 8, cudaMemcpyDeviceToHost, stream.s), "reading a counter");
  sync(stream.s, "decoding the scales");
  return (int64_t)count;
}

BenchResult bench_kernels(int64_t n, int64_t k, int reps) {
  if (n <= 0 || k <= 0 || k % kGroup != 0) throw InvalidInput("bench shape must have K a multiple of 16");
  if (reps < 1) reps = 1;
  require_device();
  int64_t np, kp;
  pad_shape_v2(n, k, np, kp);
  const int64_t rows = kp / kGroup, g = k / kGroup;
  BenchResult r;
  r.weight_bytes = n * k / 2;
  r.scale_bytes = n * g;
  const int64_t wout = rows * 2 * np * 4, sout = rows * np;
  Stream stream;
  Arena arena(stream.s);
  const int64_t total = align_up(r.weight_bytes) + align_up(wout) + align_up(r.scale_bytes) + align_up(sout) +
                        align_up(sizeof(DeviceScaleStats));
  if (!arena.reserve(total)) throw CudaError("CUDA out of memory allocating " + mb(total) + " MB for the benchmark");
  uint8_t* win = arena.take<uint8_t>(r.weight_bytes);
  uint32_t* wo = arena.take<uint32_t>(wout);
  uint8_t* sin = arena.take<uint8_t>(r.scale_bytes);
  uint8_t* so = arena.take<uint8_t>(sout);
  DeviceScaleStats* stats = arena.take<DeviceScaleStats>(sizeof(DeviceScaleStats));
  fill_kernel<<<1024, 256, 0, stream.s>>>(win, r.weight_bytes, 1, 0);
  check_launch("fill");
  fill_kernel<<<1024, 256, 0, stream.s>>>(sin, r.scale_bytes, 2, 1);
  check_launch("fill");
  const DevPart wp{win, 0, k / 2, n, np}, sp{sin, 0, g, n, np};
  cudaEvent_t t0, t1;
  check(cudaEventCreate(&t0), "creating an event");
  check(cudaEventCreate(&t1), "creating an event");
  auto time = [&](const std::function<void()>& body) {
    body();  // warm-up
    check(cudaEventRecord(t0, stream.s), "recording an event");
    for (int i = 0; i < reps; ++i) body();
    check(cudaEventRecord(t1, stream.s), "recording an event");
    check(cudaEventSynchronize(t1), "timing");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, t0, t1), "timing");
    return (double)ms / reps;
  };
  try {
    r.repack_ms = time([&] { launch_repack(wp, 1, rows, g, wo, 2 * np, 0, stream.s); });
    r.scan_ms = time([&] {
      launch_reset_stats(stats, stream.s);
      launch_scan(sp, 1, g, ScanKey{0, n * g, 0, g, 0}, stats, stream.s);
      launch_finalize(stats, Layout::V2, ActDtype::BF16, false, 1.0f, stream.s);
    });
    r.scales_ms = time([&] { launch_scales(sp, 1, rows, g, Layout::V2, stats, so, np, 0, stream.s); });
    r.copy_ms = time([&] {
      check(cudaMemcpyAsync(wo, win, r.weight_bytes, cudaMemcpyDeviceToDevice, stream.s), "copying");
      check(cudaMemcpyAsync(so, sin, r.scale_bytes, cudaMemcpyDeviceToDevice, stream.s), "copying");
    });
  } catch (...) {
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    throw;
  }
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  return r;
}

}  // namespace cuda
}  // namespace mfp4
