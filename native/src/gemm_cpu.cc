#include "gemm_cpu.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "gemm_layout.h"
#include "mxfp4_layout.h"
#include "parallel.h"
#include "transforms_cpu.h"

namespace mfp4 {
namespace {

// Work is split into 64-column chunks of N (a Marlin chunk), each a task; K is walked in
// blocks whose dequantized tile (64 x kKBlock floats, 128 KB) stays in L2 while every row of X
// passes over it.
constexpr int64_t kKBlock = 512;

// y[i] += sum_k x[k] * w_i[k] for four rows of the tile; kb is a multiple of 16. Eight lanes
// per row so that the compiler vectorizes the loop (fp32 throughout).
inline __attribute__((always_inline)) void dot4(const float* x, const float* w, int64_t kb, float* out) {
  float a0[8] = {}, a1[8] = {}, a2[8] = {}, a3[8] = {};
  const float *w0 = w, *w1 = w + kb, *w2 = w + 2 * kb, *w3 = w + 3 * kb;
  for (int64_t k = 0; k < kb; k += 8) {
    for (int l = 0; l < 8; ++l) {
      const float xv = x[k + l];
      a0[l] += xv * w0[k + l];
      a1[l] += xv * w1[k + l];
      a2[l] += xv * w2[k + l];
      a3[l] += xv * w3[k + l];
    }
  }
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int l = 0; l < 8; ++l) {
    s0 += a0[l];
    s1 += a1[l];
    s2 += a2[l];
    s3 += a3[l];
  }
  out[0] += s0;
  out[1] += s1;
  out[2] += s2;
  out[3] += s3;
}

// acc[m][0..64) += X[m, k0:k0+kb] @ tile^T for every row m.
inline __attribute__((always_inline)) void tile_body(const float* xf, int64_t m, int64_t ldx, const float* tile,
                                                     int64_t kb, float* acc) {
  for (int64_t r = 0; r < m; ++r)
    for (int64_t i = 0; i < kTileN; i += 4) dot4(xf + r * ldx, tile + i * kb, kb, acc + r * kTileN + i);
}

void tile_generic(const float* xf, int64_t m, int64_t ldx, const float* tile, int64_t kb, float* acc) {
  tile_body(xf, m, ldx, tile, kb, acc);
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void tile_avx2(const float* xf, int64_t m, int64_t ldx, const float* tile, int64_t kb,
                                                   float* acc) {
  tile_body(xf, m, ldx, tile, kb, acc);
}
bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

std::vector<float> activations(const uint16_t* x, int64_t m, int64_t k, ActDtype dt) {
  std::vector<float> xf((size_t)(m * k));
  for (int64_t i = 0; i < m * k; ++i) xf[i] = act_value(x[i], dt);
  return xf;
}

// Drives the tiles: fill(chunk, k0, kb, tile) writes the dequantized W rows of the chunk's 64
// columns for k in [k0, k0+kb) as tile[i * kb + (k - k0)] (zero for columns past N).
template <typename Fill>
void tiled_gemm(const std::vector<float>& xf, int64_t m, int64_t k, int64_t n, float* y, int threads, Fill fill) {
  const int64_t chunks = (n + kTileN - 1) / kTileN;
#if defined(__x86_64__)
  const bool avx2 = have_avx2();
#endif
  parallel_for(chunks, threads, [&](int64_t c) {
    std::vector<float> tile((size_t)(kTileN * kKBlock));
    std::vector<float> acc((size_t)(m * kTileN), 0.0f);
    for (int64_t k0 = 0; k0 < k; k0 += kKBlock) {
      const int64_t kb = std::min(kKBlock, k - k0);
      fill(c, k0, kb, tile.data());
#if defined(__x86_64__)
      if (avx2) {
        tile_avx2(xf.data() + k0, m, k, tile.data(), kb, acc.data());
        continue;
      }
#endif
      tile_generic(xf.data() + k0, m, k, tile.data(), kb, acc.data());
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

void gemm_marlin_cpu(const MarlinGemmArgs& a, int threads) {
  check_marlin_gemm(a);
  const std::vector<float> xf = activations(a.x, a.m, a.k, a.dt);
  const float gval = marlin_global_value(a.global_bits, a.layout, a.dt);
  const int64_t u = scale_unit_rows(a.layout), row_words = 2 * a.np;
  const bool single = mxfp4_single(a.kp);
  tiled_gemm(xf, a.m, a.k, a.n, a.y, threads, [&](int64_t c, int64_t k0, int64_t kb, float* tile) {
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
          tile[dn * kb + r * kGroup + dk] = e2m1_to_float((w >> (4 * i)) & 0xF) * s[dn];
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

void gemm_reference_cpu(const ReferenceGemmArgs& a, int threads) {
  check_reference_gemm(a);
  const std::vector<float> xf = activations(a.x, a.m, a.k, a.dt);
  const int64_t row_bytes = a.k / 2, group = a.mxfp4 ? kMxGroup : kGroup, groups = a.k / group;
  tiled_gemm(xf, a.m, a.k, a.n, a.y, threads, [&](int64_t c, int64_t k0, int64_t kb, float* tile) {
    for (int64_t i = 0; i < kTileN; ++i) {
      const int64_t nn = c * kTileN + i;
      float* row = tile + i * kb;
      if (nn >= a.n) {
        std::fill(row, row + kb, 0.0f);
        continue;
      }
      const uint8_t* w = a.weight + nn * row_bytes;
      const uint8_t* s = a.scale + nn * groups;
      for (int64_t kk = 0; kk < kb; kk += kGroup) {
        const int64_t kabs = k0 + kk;
        const float scale = a.mxfp4 ? e8m0_to_float(s[kabs / group]) : e4m3_to_float(s[kabs / group]) * a.ws2;
        for (int64_t j = 0; j < kGroup; ++j) {
          const uint8_t byte = w[(kabs + j) / 2];
          row[kk + j] = e2m1_to_float(((kabs + j) & 1) ? byte >> 4 : byte & 0xF) * scale;
        }
      }
    }
  });
}

}  // namespace mfp4
