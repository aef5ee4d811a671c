// The CUDA kernels of the Marlin FP4 transforms and their launches: the device-pointer API of
// transforms_cuda.cuh. Each kernel takes its index math and byte encodings from layout.h /
// fp_formats.h, the functions the CPU backend (transforms_cpu.cc) uses, so both backends are
// derived from one statement of FORMAT.md; the comment above each kernel says how it tiles.
//
//   repack_kernel / unpack_kernel     weight <-> Marlin words (FORMAT.md section 2)
//   scan_kernel + finalize_kernel     validate and count the block scales; sf, lost count, LUT
//   scales_kernel / decode_kernel     block scales <-> processed scales (section 3)
#include "transforms_cuda.cuh"

#include <algorithm>
#include <string>

#include "cuda_device.cuh"

namespace mfp4 {
namespace cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;        // every kernel but finalize
constexpr int kScaleCols = 128;      // groups (scale columns) per scale tile
constexpr int kScaleStride = kScaleCols + 4;  // bytes per shared row: an odd number of words spreads the banks
constexpr int kScanIters = 8;
constexpr int64_t kScanBlockBytes = int64_t(kThreads) * 16 * kScanIters;
constexpr int64_t kMaxGridX = 0x7FFFFFFF;
constexpr int64_t kMaxGridZ = 65535;

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

dim3 tile_grid(int64_t chunks, int64_t tiles, int64_t experts) {
  if (chunks * tiles > kMaxGridX) throw CudaError("tensor too large for one launch");
  return dim3((unsigned)(chunks * tiles), 1, (unsigned)experts);
}

// A launch covers at most kMaxGridZ experts (gridDim.z): calls launch(p, e0, ne) for each group
// of experts [e0, e0 + ne), p being the part with its data at expert e0.
template <typename Launch>
void for_expert_groups(const DevPart& part, int64_t experts, Launch&& launch) {
  for (int64_t e0 = 0; e0 < experts; e0 += kMaxGridZ) {
    DevPart p = part;
    p.data += e0 * part.expert_stride;
    launch(p, e0, std::min(kMaxGridZ, experts - e0));
  }
}

}  // namespace

void launch_repack(const DevPart& part, int64_t experts, int64_t rows, int64_t rows_real, uint32_t* dst,
                   int64_t dst_row_words, int64_t dst_expert_words, cudaStream_t stream) {
  if (experts <= 0 || rows <= 0) return;
  const int64_t chunks = part.np / kTileN, tiles = ceil_div(rows, kRepackRows);
  for_expert_groups(part, experts, [&](const DevPart& p, int64_t e0, int64_t ne) {
    repack_kernel<<<tile_grid(chunks, tiles, ne), kThreads, 0, stream>>>(p, chunks, rows, rows_real,
                                                                          dst + e0 * dst_expert_words, dst_row_words,
                                                                          dst_expert_words);
    check_launch("weight repack");
  });
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
  for_expert_groups(part, experts, [&](const DevPart& p, int64_t e0, int64_t ne) {
    ScanKey k = key;
    k.first_expert += e0;
    scan_kernel<<<dim3((unsigned)blocks, 1, (unsigned)ne), kThreads, 0, stream>>>(p, cols, k, stats);
    check_launch("scale scan");
  });
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
  for_expert_groups(part, experts, [&](const DevPart& p, int64_t e0, int64_t ne) {
    if (layout == Layout::V1) {
      scales_kernel<Layout::V1><<<tile_grid(chunks, tiles, ne), kThreads, 0, stream>>>(
          p, chunks, rows, rows_real, stats->lut, dst + e0 * dst_expert_bytes, dst_unit_bytes, dst_expert_bytes);
    } else {
      scales_kernel<Layout::V2><<<tile_grid(chunks, tiles, ne), kThreads, 0, stream>>>(
          p, chunks, rows, rows_real, stats->lut, dst + e0 * dst_expert_bytes, dst_unit_bytes, dst_expert_bytes);
    }
    check_launch("scale processing");
  });
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

// Byte comparison of two [n, width] pieces (pitch bytes apart) that sit at bytes
// [col0, col0 + width) of rows row_bytes long: counts the differing bytes and keeps, as one
// atomicMin over (index << 8 | got byte), the first one in the whole tensor and its value.
__global__ void __launch_bounds__(kThreads) diff_kernel(const uint8_t* __restrict__ got, const uint8_t* __restrict__ want,
                                                        int64_t n, int64_t width, int64_t pitch, int64_t row_bytes,
                                                        int64_t col0, unsigned long long* count,
                                                        unsigned long long* first_key) {
  const int64_t total = n * width;
  unsigned long long mine = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / width, col = i % width;
    const uint8_t g = got[row * pitch + col];
    if (g != want[row * pitch + col]) {
      ++mine;
      atomicMin(first_key, ((unsigned long long)(row * row_bytes + col0 + col) << 8) | g);
    }
  }
  if (mine) atomicAdd(count, mine);
}

void launch_diff(const uint8_t* got, const uint8_t* want, int64_t n, int64_t width, int64_t pitch, int64_t row_bytes,
                 int64_t col0, unsigned long long* count, unsigned long long* first_key, cudaStream_t stream) {
  if (n <= 0 || width <= 0) return;
  const int64_t blocks = std::min<int64_t>(ceil_div(n * width, kThreads), 4096);
  diff_kernel<<<(unsigned)blocks, kThreads, 0, stream>>>(got, want, n, width, pitch, row_bytes, col0, count, first_key);
  check_launch("byte comparison");
}

}  // namespace cuda
}  // namespace mfp4
