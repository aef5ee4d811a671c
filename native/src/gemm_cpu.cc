#include "gemm_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gemm_layout.h"
#include "mxfp4_layout.h"
#include "scratch.h"
#include "parallel.h"
#include "transforms_cpu.h"

namespace mfp4 {
namespace {

// Work is split into 64-column chunks of N (a Marlin chunk), each a task; K is walked in
// blocks whose dequantized tile (64 x kKBlock floats, 128 KB) stays in L2 while every row of X
// passes over it. The fill writes the tile k-major (tile[k * 64 + column]), so that the
// multiply is an outer product: per k, a few vectors of W columns times broadcast X values into
// a register block of rows x columns (the "fast" kernel; loads per FMA well below one). The
// "simple" kernel (dot products over K, kept as the test reference) reads the same tile.
constexpr int64_t kKBlock = 512;

// The simple kernel: y[r][i] += sum_k x[r][k] * tile[k][i], one column at a time with eight
// lanes over k (fp32 throughout).
inline __attribute__((always_inline)) void simple_body(const float* xf, int64_t m, int64_t ldx, const float* tile,
                                                       int64_t kb, float* acc) {
  for (int64_t r = 0; r < m; ++r) {
    const float* x = xf + r * ldx;
    for (int64_t i = 0; i < kTileN; ++i) {
      float a[8] = {};
      for (int64_t k = 0; k < kb; k += 8)
        for (int l = 0; l < 8; ++l) a[l] += x[k + l] * tile[(k + l) * kTileN + i];
      float s = 0;
      for (int l = 0; l < 8; ++l) s += a[l];
      acc[r * kTileN + i] += s;
    }
  }
}

void tile_simple(const float* xf, int64_t m, int64_t ldx, const float* tile, int64_t kb, float* acc) {
  simple_body(xf, m, ldx, tile, kb, acc);
}

// The fast kernel's register block: RM rows x NV vectors of V (GCC vector extensions, lowered
// to whatever the function's target offers), acc[r][cb .. cb + NV*lanes) += X[r, :] @ tile[:, cb ..].
template <typename V, int RM, int NV>
inline __attribute__((always_inline)) void block(const float* x, int64_t ldx, const float* tile, int64_t kb, float* acc,
                                                 int64_t cb) {
  constexpr int L = sizeof(V) / sizeof(float);
  V c[RM][NV];
  for (int r = 0; r < RM; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = V{} ;
  for (int64_t k = 0; k < kb; ++k) {
    V w[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&w[v], tile + k * kTileN + cb + v * L, sizeof(V));
    for (int r = 0; r < RM; ++r) {
      const float xv = x[r * ldx + k];
      for (int v = 0; v < NV; ++v) c[r][v] += xv * w[v];
    }
  }
  for (int r = 0; r < RM; ++r)
    for (int v = 0; v < NV; ++v) {
      V o;
      std::memcpy(&o, acc + r * kTileN + cb + v * L, sizeof(V));
      o += c[r][v];
      std::memcpy(acc + r * kTileN + cb + v * L, &o, sizeof(V));
    }
}

// Every row and column of the tile: column blocks outer (their slice of the tile stays in L1
// while the rows pass), rows in blocks of RM, the last few with a smaller block.
template <typename V, int RM, int NV>
inline __attribute__((always_inline)) void fast_body(const float* xf, int64_t m, int64_t ldx, const float* tile,
                                                     int64_t kb, float* acc) {
  constexpr int64_t W = NV * (int64_t)(sizeof(V) / sizeof(float));
  static_assert(kTileN % W == 0, "column blocks tile the chunk");
  for (int64_t cb = 0; cb < kTileN; cb += W) {
    int64_t r = 0;
    for (; r + RM <= m; r += RM) block<V, RM, NV>(xf + r * ldx, ldx, tile, kb, acc + r * kTileN, cb);
    for (; r < m; ++r) block<V, 1, NV>(xf + r * ldx, ldx, tile, kb, acc + r * kTileN, cb);
  }
}

typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));

// Portable: 128-bit vectors (SSE2 on x86-64, NEON on arm64), 4 x 8 columns.
void tile_fast_generic(const float* xf, int64_t m, int64_t ldx, const float* tile, int64_t kb, float* acc) {
  fast_body<v4f, 4, 2>(xf, m, ldx, tile, kb, acc);
}

#if defined(__x86_64__)
// AVX2 + FMA (16 ymm registers): 6 rows x 16 columns = 12 accumulators.
__attribute__((target("avx2,fma"))) void tile_fast_avx2(const float* xf, int64_t m, int64_t ldx, const float* tile,
                                                        int64_t kb, float* acc) {
  fast_body<v8f, 6, 2>(xf, m, ldx, tile, kb, acc);
}
// AVX-512 (32 zmm registers): 8 rows x 32 columns = 16 accumulators.
__attribute__((target("avx512f,fma"))) void tile_fast_avx512(const float* xf, int64_t m, int64_t ldx,
                                                             const float* tile, int64_t kb, float* acc) {
  fast_body<v16f, 8, 2>(xf, m, ldx, tile, kb, acc);
}
#endif

using TileFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, float*);

// The fast kernel for this CPU (checked at run time: the addon is built on one machine and run
// on another), or the simple one. MARLIN_FP4_CPU_GEMM=generic|avx2|avx512 caps the choice (the
// tests run every variant the CPU has).
TileFn tile_kernel(bool simple) {
  if (simple) return tile_simple;
#if defined(__x86_64__)
  const char* env = std::getenv("MARLIN_FP4_CPU_GEMM");
  const std::string cap = env ? env : "";
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
  if (cap == "generic") return tile_fast_generic;
  if (avx512 && cap != "avx2") return tile_fast_avx512;
  if (avx2) return tile_fast_avx2;
#endif
  return tile_fast_generic;
}

// The activations as float32, in scratch memory (scratch.h: not kept by a pool thread's arena).
void activations(const uint16_t* x, int64_t m, int64_t k, ActDtype dt, const Scratch& out) {
  float* xf = out.as<float>();
  for (int64_t i = 0; i < m * k; ++i) xf[i] = act_value(x[i], dt);
}

// Drives the tiles: fill(chunk, k0, kb, tile) writes the dequantized W rows of the chunk's 64
// columns for k in [k0, k0+kb) as tile[(k - k0) * 64 + i] (zero for columns past N).
template <typename Fill>
void tiled_gemm(const float* xf, int64_t m, int64_t k, int64_t n, float* y, int threads, bool simple,
                Fill fill) {
  const int64_t chunks = (n + kTileN - 1) / kTileN;
  const TileFn tile_fn = tile_kernel(simple);
  parallel_for(chunks, threads, [&](int64_t c) {
    std::vector<float> tile((size_t)(kTileN * kKBlock));
    std::vector<float> acc((size_t)(m * kTileN), 0.0f);
    for (int64_t k0 = 0; k0 < k; k0 += kKBlock) {
      const int64_t kb = std::min(kKBlock, k - k0);
      fill(c, k0, kb, tile.data());
      tile_fn(xf + k0, m, k, tile.data(), kb, acc.data());
    }
    const int64_t cols = std::min(kTileN, n - c * kTileN);
    for (int64_t r = 0; r < m; ++r) std::memcpy(y + r * n + c * kTileN, acc.data() + r * kTileN, (size_t)cols * 4);
  });
}

std::string dims(int64_t a, int64_t b) { return "[" + std::to_string(a) + ", " + std::to_string(b) + "]"; }

}  // namespace

void check_marlin_gemm(const MarlinGemmArgs& a) {
  if (a.m <= 0) throw InvalidInput("M must be at least 1");
  if (a.n <= 0 || a.n > a.np) throw InvalidInput("N = " + std::to_string(a.n) + " is not in [1, Np = " + std::to_string(a.np) + "]");
  check_weight_shapes(a.n, a.np, a.k, a.kp);
  const int64_t pair = kGroup * scale_unit_rows(a.layout);  // v1 pairs scale rows
  if (a.k % pair != 0) throw InvalidInput("K = " + std::to_string(a.k) + " is not a multiple of " + std::to_string(pair) + " (layout v1)");
  if (a.kp % pair != 0) throw InvalidInput("padded K " + dims(a.np, a.kp) + " is not a multiple of " + std::to_string(pair) + " (layout v1)");
  if (a.mxfp4 && (a.layout != Layout::V2 || a.k % kMxGroup != 0 || a.kp % kMxGroup != 0))
    throw InvalidInput("MXFP4 needs layout v2 and K, padded K multiples of 32, got " + dims(a.k, a.kp));
}

void gemm_marlin_cpu(const MarlinGemmArgs& a, int threads, bool simple) {
  check_marlin_gemm(a);
  const Scratch xf((size_t)(a.m * a.k) * 4);
  activations(a.x, a.m, a.k, a.dt, xf);
  const float gval = marlin_global_value(a.global_bits, a.layout, a.dt);
  const int64_t u = scale_unit_rows(a.layout), row_words = 2 * a.np;
  const bool single = mxfp4_single(a.kp);
  tiled_gemm(xf.as<float>(), a.m, a.k, a.n, a.y, threads, simple, [&](int64_t c, int64_t k0, int64_t kb, float* tile) {
    const int64_t g0 = k0 / kGroup, groups = kb / kGroup;
    // Decoded scale (times the global) of every (K/16 row, column) of this block.
    float sc[kKBlock / kGroup][kTileN];
    for (int64_t r = 0; a.mxfp4 && r < groups; ++r) {
      // MXFP4: K/16 row g0 + r reads scale row (g0 + r) / 2, decoded as the kernel does.
      const uint8_t* row = a.scales + ((g0 + r) / 2) * a.np + kTileN * c;
      for (int64_t i = 0; i < kTileN; ++i) sc[r][mxfp4_scale_column(i, single)] = mxfp4_kernel_scale(row[i]);
    }
    for (int64_t h = g0 / u; !a.mxfp4 && h < (g0 + groups + u - 1) / u; ++h) {
      const uint8_t* unit = a.scales + h * u * a.np + u * kTileN * c;
      for (int64_t i = 0; i < u * kTileN; ++i) {
        int64_t dg, nn;
        scale_source(i, kTileN, a.layout, dg, nn);
        const int64_t g = h * u + dg - g0;
        if (g >= 0 && g < groups) sc[g][nn] = marlin_scale_value(unit[i]) * gval;
      }
    }
    for (int64_t r = 0; r < groups; ++r) {
      const uint32_t* words = a.weight + (g0 + r) * row_words + kWordsPerChunk * c;
      const float* s = sc[r];
      for (int wi = 0; wi < kWordsPerChunk; ++wi) {
        const uint32_t w = words[wi];
        for (int i = 0; i < 8; ++i) {
          int dn, dk;
          marlin_nibble_source(wi, i, dn, dk);
          tile[(r * kGroup + dk) * kTileN + dn] = e2m1_to_float((w >> (4 * i)) & 0xF) * s[dn];
        }
      }
    }
  });
}

void check_reference_gemm(const ReferenceGemmArgs& a) {
  if (a.m <= 0) throw InvalidInput("M must be at least 1");
  if (a.n <= 0 || a.k <= 0) throw InvalidInput("empty weight " + dims(a.n, a.k));
  if (a.k % kGroup != 0) throw InvalidInput("K = " + std::to_string(a.k) + " is not a multiple of 16");
  if (a.mxfp4 && a.k % kMxGroup != 0) throw InvalidInput("K = " + std::to_string(a.k) + " is not a multiple of 32 (MXFP4)");
}

void gemm_reference_cpu(const ReferenceGemmArgs& a, int threads, bool simple) {
  check_reference_gemm(a);
  const Scratch xf((size_t)(a.m * a.k) * 4);
  activations(a.x, a.m, a.k, a.dt, xf);
  const int64_t row_bytes = a.k / 2, group = a.mxfp4 ? kMxGroup : kGroup, groups = a.k / group;
  tiled_gemm(xf.as<float>(), a.m, a.k, a.n, a.y, threads, simple, [&](int64_t c, int64_t k0, int64_t kb, float* tile) {
    for (int64_t i = 0; i < kTileN; ++i) {
      const int64_t nn = c * kTileN + i;
      if (nn >= a.n) {
        for (int64_t kk = 0; kk < kb; ++kk) tile[kk * kTileN + i] = 0.0f;
        continue;
      }
      const uint8_t* w = a.weight + nn * row_bytes;
      const uint8_t* s = a.scale + nn * groups;
      for (int64_t kk = 0; kk < kb; kk += kGroup) {
        const int64_t kabs = k0 + kk;
        const float scale = a.mxfp4 ? e8m0_to_float(s[kabs / group]) : e4m3_to_float(s[kabs / group]) * a.ws2;
        for (int64_t j = 0; j < kGroup; ++j) {
          const uint8_t byte = w[(kabs + j) / 2];
          tile[(kk + j) * kTileN + i] = e2m1_to_float(((kabs + j) & 1) ? byte >> 4 : byte & 0xF) * scale;
        }
      }
    }
  });
}

}  // namespace mfp4
