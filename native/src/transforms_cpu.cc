#include "transforms_cpu.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>

#include "parallel.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mfp4 {
namespace {

constexpr int64_t kRowsPerTask = 256;  // K/16 rows per task: enough work to amortise a thread hop
constexpr int64_t kUnitsPerTask = 16;

std::string shape_str(int64_t a, int64_t b) { return "[" + std::to_string(a) + ", " + std::to_string(b) + "]"; }

struct PartTask {
  size_t part;
  int64_t chunk;  // 64-column chunk (weights) or unit block (scales)
  int64_t begin, end;
};

}  // namespace

void check_weight_shapes(int64_t n, int64_t np, int64_t k, int64_t kp) {
  if (n <= 0 || k <= 0) throw InvalidInput("empty weight " + shape_str(n, k));
  if (k % kGroup != 0) throw InvalidInput("K = " + std::to_string(k) + " is not a multiple of 16");
  if (np % kTileN != 0) throw InvalidInput("N = " + std::to_string(np) + " is not a multiple of 64 (layout v1 does not pad; use v2)");
  if (kp % kGroup != 0) throw InvalidInput("padded K = " + std::to_string(kp) + " is not a multiple of 16");
  if (np < n || kp < k) throw InvalidInput("padded shape " + shape_str(np, kp) + " smaller than " + shape_str(n, k));
}

namespace {

// Loads the 16 codes (8 bytes) of row n for K-block r, or zeros in the padding.
inline uint64_t load_row_block(const WeightPart& part, int64_t n, int64_t row_bytes, int64_t r) {
  uint64_t x = 0;
  if (n < part.n) std::memcpy(&x, part.data + n * row_bytes + 8 * r, 8);
  return x;
}

// Portable path: one Marlin word at a time.
void repack_block_scalar(const WeightPart& part, int64_t row_bytes, int64_t chunk, int64_t r, uint32_t* out) {
  for (int64_t j = 0; j < 4; ++j) {
    for (int64_t n8 = 0; n8 < 8; ++n8) {
      const int64_t n = chunk * kTileN + 16 * j + n8;
      const uint64_t x0 = load_row_block(part, n, row_bytes, r), x1 = load_row_block(part, n + 8, row_bytes, r);
      for (int q = 0; q < 4; ++q) {
        const uint32_t a = (x0 >> (8 * q)) & 0xFF, b = (x0 >> (32 + 8 * q)) & 0xFF;
        const uint32_t c = (x1 >> (8 * q)) & 0xFF, d = (x1 >> (32 + 8 * q)) & 0xFF;
        out[(n8 * 4 + q) * 4 + j] = pack_marlin_word(a, b, c, d);
      }
    }
  }
}

#if defined(__x86_64__)
// SSSE3 path, same words as pack_marlin_word: the nibbles of rows n and n+8 are split and
// paired with 64-bit shifts, a byte shuffle forms the four words of one (j, n8), and a
// 4x4 transpose across j turns them into four contiguous 16-byte stores.
__attribute__((target("ssse3"))) void repack_block_ssse3(const WeightPart& part, int64_t row_bytes, int64_t chunk,
                                                         int64_t r, uint32_t* out) {
  const __m128i nib = _mm_set1_epi8(0x0F);
  const __m128i byte_transpose = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  for (int64_t n8 = 0; n8 < 8; ++n8) {
    __m128i w[4];
    for (int64_t j = 0; j < 4; ++j) {
      const int64_t n = chunk * kTileN + 16 * j + n8;
      const __m128i v = _mm_set_epi64x((long long)load_row_block(part, n + 8, row_bytes, r),
                                       (long long)load_row_block(part, n, row_bytes, r));
      const __m128i lo = _mm_and_si128(v, nib), hi = _mm_and_si128(_mm_srli_epi16(v, 4), nib);
      const __m128i pl = _mm_or_si128(lo, _mm_srli_epi64(lo, 28));  // dwords: A . B .
      const __m128i ph = _mm_or_si128(hi, _mm_srli_epi64(hi, 28));  // dwords: C . D .
      const __m128i abcd = _mm_castps_si128(
          _mm_shuffle_ps(_mm_castsi128_ps(pl), _mm_castsi128_ps(ph), _MM_SHUFFLE(2, 0, 2, 0)));
      w[j] = _mm_shuffle_epi8(abcd, byte_transpose);  // dword q = word (t = 4*n8 + q, j)
    }
    const __m128i t0 = _mm_unpacklo_epi32(w[0], w[1]), t1 = _mm_unpacklo_epi32(w[2], w[3]);
    const __m128i t2 = _mm_unpackhi_epi32(w[0], w[1]), t3 = _mm_unpackhi_epi32(w[2], w[3]);
    __m128i* o = reinterpret_cast<__m128i*>(out + n8 * 16);
    _mm_storeu_si128(o + 0, _mm_unpacklo_epi64(t0, t1));
    _mm_storeu_si128(o + 1, _mm_unpackhi_epi64(t0, t1));
    _mm_storeu_si128(o + 2, _mm_unpacklo_epi64(t2, t3));
    _mm_storeu_si128(o + 3, _mm_unpackhi_epi64(t2, t3));
  }
}

bool have_ssse3() {
  static const bool yes = __builtin_cpu_supports("ssse3");
  return yes;
}
#endif

}  // namespace

void repack_weight(const std::vector<WeightPart>& parts, int64_t k, int64_t kp, uint32_t* dst,
                   int64_t dst_row_words, int threads, int64_t row_begin, int64_t row_end) {
  const int64_t rows = row_end < 0 ? kp / kGroup : row_end;
  if (row_begin < 0 || row_begin > rows || rows > kp / kGroup) throw InvalidInput("row range outside the packed weight");
  std::vector<PartTask> tasks;
  std::vector<int64_t> word_off;
  int64_t off = 0;
  for (size_t p = 0; p < parts.size(); ++p) {
    check_weight_shapes(parts[p].n, parts[p].np, k, kp);
    word_off.push_back(off);
    off += 2 * parts[p].np;
    for (int64_t c = 0; c < parts[p].np / kTileN; ++c)
      for (int64_t r = row_begin; r < rows; r += kRowsPerTask) tasks.push_back({p, c, r, std::min(rows, r + kRowsPerTask)});
  }
  if (off > dst_row_words) throw InvalidInput("output row too narrow");
  const int64_t row_bytes = k / 2;
#if defined(__x86_64__)
  const bool simd = have_ssse3();
#endif
  parallel_for((int64_t)tasks.size(), threads, [&](int64_t ti) {
    const PartTask& t = tasks[ti];
    const WeightPart& part = parts[t.part];
    for (int64_t r = t.begin; r < t.end; ++r) {
      uint32_t* out = dst + (r - row_begin) * dst_row_words + word_off[t.part] + t.chunk * kWordsPerChunk;
      if (r * kGroup >= k) {
        std::memset(out, 0, kWordsPerChunk * 4);
        continue;
      }
#if defined(__x86_64__)
      if (simd) {
        repack_block_ssse3(part, row_bytes, t.chunk, r, out);
        continue;
      }
#endif
      repack_block_scalar(part, row_bytes, t.chunk, r, out);
    }
  });
}

int64_t unpack_weight(const uint32_t* src, int64_t src_row_words, int64_t n, int64_t np, int64_t k,
                      int64_t kp, uint8_t* dst, int threads) {
  check_weight_shapes(n, np, k, kp);
  if (2 * np > src_row_words) throw InvalidInput("source row too narrow");
  const int64_t rows = kp / kGroup, row_bytes = k / 2;
  std::vector<PartTask> tasks;
  for (int64_t c = 0; c < np / kTileN; ++c)
    for (int64_t r = 0; r < rows; r += kRowsPerTask) tasks.push_back({0, c, r, std::min(rows, r + kRowsPerTask)});
  std::atomic<int64_t> padding_nonzero{0};
  parallel_for((int64_t)tasks.size(), threads, [&](int64_t ti) {
    const PartTask& t = tasks[ti];
    int64_t stray = 0;
    for (int64_t r = t.begin; r < t.end; ++r) {
      const uint32_t* in = src + r * src_row_words + t.chunk * kWordsPerChunk;
      const bool k_real = r * kGroup < k;
      for (int64_t j = 0; j < 4; ++j) {
        for (int64_t n8 = 0; n8 < 8; ++n8) {
          const int64_t nn = t.chunk * kTileN + 16 * j + n8;
          uint64_t x0 = 0, x1 = 0;
          for (int q = 0; q < 4; ++q) {
            uint32_t a, b, c, d;
            unpack_marlin_word(in[(n8 * 4 + q) * 4 + j], a, b, c, d);
            x0 |= ((uint64_t)a << (8 * q)) | ((uint64_t)b << (32 + 8 * q));
            x1 |= ((uint64_t)c << (8 * q)) | ((uint64_t)d << (32 + 8 * q));
          }
          if (k_real && nn < n) std::memcpy(dst + nn * row_bytes + 8 * r, &x0, 8);
          else stray += x0 != 0;
          if (k_real && nn + 8 < n) std::memcpy(dst + (nn + 8) * row_bytes + 8 * r, &x1, 8);
          else stray += x1 != 0;
        }
      }
    }
    padding_nonzero += stray;
  });
  return padding_nonzero.load();
}

ScaleStats scan_scales(const uint8_t* data, int64_t count, int threads) {
  ScaleStats s;
  constexpr int64_t kBlock = 1 << 20;
  std::mutex merge;
  parallel_for((count + kBlock - 1) / kBlock, threads, [&](int64_t bi) {
    // Four sub-histograms break the store-to-load dependency of repeated byte values.
    uint32_t h[4][256] = {};
    const int64_t begin = bi * kBlock, end = std::min(count, begin + kBlock);
    int64_t i = begin;
    for (; i + 4 <= end; i += 4) {
      ++h[0][data[i]];
      ++h[1][data[i + 1]];
      ++h[2][data[i + 2]];
      ++h[3][data[i + 3]];
    }
    for (; i < end; ++i) ++h[0][data[i]];
    std::lock_guard<std::mutex> lock(merge);
    for (int b = 0; b < 256; ++b) s.histogram[b] += (int64_t)h[0][b] + h[1][b] + h[2][b] + h[3][b];
  });
  bool bad = false;
  for (int b = 0; b < 256; ++b) {
    if (!s.histogram[b]) continue;
    if (e4m3_is_nan((uint8_t)b) || e4m3_is_negative((uint8_t)b)) bad = true;
    else if (b < 0x80) s.max_byte = (uint8_t)b;  // non-negative E4M3 bytes sort like their values
  }
  if (bad) {
    for (int64_t j = 0; j < count; ++j) {
      if (e4m3_is_nan(data[j]) || e4m3_is_negative(data[j])) {
        s.bad_index = j;
        s.bad_byte = data[j];
        break;
      }
    }
  }
  return s;
}

BadBlockScale locate_bad_scale(const std::vector<std::vector<ScalePart>>& experts, int64_t k, int64_t e, int64_t p,
                               int64_t index, uint8_t byte) {
  const int64_t groups = k / kGroup;
  BadBlockScale b;
  b.expert = e;
  b.experts = (int64_t)experts.size();
  b.part = p;
  for (int64_t q = 0; q < p; ++q) b.row_offset += experts[e][q].n;
  b.row = index / groups;
  b.group = index % groups;
  b.byte = byte;
  return b;
}

StackScaleStats scan_scale_stack(const std::vector<std::vector<ScalePart>>& experts, int64_t k, int threads) {
  const int64_t groups = k / kGroup;
  StackScaleStats st;
  for (size_t e = 0; e < experts.size(); ++e) {
    for (size_t p = 0; p < experts[e].size(); ++p) {
      const ScalePart& part = experts[e][p];
      const ScaleStats s = scan_scales(part.data, part.n * groups, threads);
      if (s.bad_index >= 0) throw locate_bad_scale(experts, k, (int64_t)e, (int64_t)p, s.bad_index, s.bad_byte);
      if (s.max_byte > st.max_byte) st.max_byte = s.max_byte;
      for (int b = 0; b < 256; ++b) st.histogram[b] += s.histogram[b];
    }
  }
  return st;
}

int64_t count_lost_scales(const int64_t histogram[256], Layout layout, float sf) {
  int64_t lost = 0;
  for (int b = 0; b < 0x80; ++b)
    if (scale_is_lost((uint8_t)b, layout, sf)) lost += histogram[b];
  return lost;
}

float scale_factor(uint8_t max_byte, Layout layout, ActDtype dt) { return scale_factor_for(max_byte, layout, dt); }

namespace {

struct ScaleMap {
  std::vector<int32_t> dg, n;  // per byte of one unit of one part
};

ScaleMap build_scale_map(int64_t np, Layout layout) {
  const int64_t u = scale_unit_rows(layout);
  ScaleMap m;
  m.dg.resize(u * np);
  m.n.resize(u * np);
  for (int64_t i = 0; i < u * np; ++i) {
    int64_t dg, n;
    scale_source(i, np, layout, dg, n);
    m.dg[i] = (int32_t)dg;
    m.n[i] = (int32_t)n;
  }
  return m;
}

constexpr int64_t kUnitsPerScaleTask = 128;

}  // namespace

void check_scale_shapes(int64_t n, int64_t np, int64_t k, int64_t kp, Layout layout) {
  check_weight_shapes(n, np, k, kp);
  if (layout == Layout::V1) {
    const int64_t pair = kGroup * scale_unit_rows(layout);
    if (k % pair != 0)
      throw InvalidInput("K = " + std::to_string(k) + " is not a multiple of " + std::to_string(pair) + " (layout v1 pairs scale rows)");
    if (np != n || kp != k) throw InvalidInput("layout v1 does not pad");
  }
}

void process_scales(const std::vector<ScalePart>& parts, int64_t k, int64_t kp, Layout layout, float sf,
                    uint8_t* dst, int threads, int64_t unit_begin, int64_t unit_end) {
  const int64_t g = k / kGroup, gp = kp / kGroup;
  const int64_t u = scale_unit_rows(layout), span = u * kTileN;
  const int64_t units = unit_end < 0 ? gp / u : unit_end;
  if (unit_begin < 0 || unit_begin > units || units > gp / u) throw InvalidInput("row range outside the processed scales");
  uint8_t lut[256];
  for (int b = 0; b < 256; ++b) lut[b] = encode_scale((uint8_t)b, layout, sf);
  // The permutation repeats every 64 columns: one chunk's map serves every chunk.
  uint8_t dg[2 * kTileN], nl[2 * kTileN];
  for (int64_t i = 0; i < span; ++i) {
    int64_t d, n;
    scale_source(i, kTileN, layout, d, n);
    dg[i] = (uint8_t)d;
    nl[i] = (uint8_t)n;
  }
  int64_t total_np = 0;
  std::vector<int64_t> col_off;
  std::vector<PartTask> tasks;
  for (size_t p = 0; p < parts.size(); ++p) {
    check_scale_shapes(parts[p].n, parts[p].np, k, kp, layout);
    col_off.push_back(total_np);
    total_np += parts[p].np;
    for (int64_t c = 0; c < parts[p].np / kTileN; ++c)
      for (int64_t h = unit_begin; h < units; h += kUnitsPerScaleTask) tasks.push_back({p, c, h, std::min(units, h + kUnitsPerScaleTask)});
  }
  const std::vector<uint8_t> zero_row(g, 0);
  parallel_for((int64_t)tasks.size(), threads, [&](int64_t ti) {
    const PartTask& t = tasks[ti];
    const ScalePart& part = parts[t.part];
    const uint8_t* rows[kTileN];
    for (int64_t i = 0; i < kTileN; ++i) {
      const int64_t n = t.chunk * kTileN + i;
      rows[i] = n < part.n ? part.data + n * g : zero_row.data();
    }
    for (int64_t h = t.begin; h < t.end; ++h) {
      uint8_t* out = dst + (h - unit_begin) * u * total_np + u * (col_off[t.part] + t.chunk * kTileN);
      const int64_t g0 = h * u;
      if (g0 + u <= g) {
        for (int64_t i = 0; i < span; ++i) out[i] = lut[rows[nl[i]][g0 + dg[i]]];
      } else {
        for (int64_t i = 0; i < span; ++i) out[i] = g0 + dg[i] < g ? lut[rows[nl[i]][g0 + dg[i]]] : 0;
      }
    }
  });
}

StackScaleResult process_scales_stack(const std::vector<std::vector<ScalePart>>& experts, int64_t k, int64_t kp,
                                      Layout layout, ActDtype dt, bool has_sf, float sf, uint8_t* dst, int threads,
                                      int64_t row_begin, int64_t row_end) {
  const int64_t rows = kp / kGroup;
  if (row_end < 0) row_end = rows;
  StackScaleResult r;
  if (row_begin != 0 || row_end != rows) {
    // A slice of a tensor the caller has already scanned (it passes sf): scanning the whole
    // input again for every slice would cost more than the slice itself.
    if (experts.size() != 1 || !has_sf) throw InvalidInput("a row range of scales needs one expert and sf");
    const int64_t u = scale_unit_rows(layout);
    r.sf = sf;
    process_scales(experts[0], k, kp, layout, sf, dst, threads, row_begin / u, row_end / u);
    return r;
  }
  const StackScaleStats st = scan_scale_stack(experts, k, threads);
  r.sf = has_sf ? sf : scale_factor(st.max_byte, layout, dt);
  r.zeroed = count_lost_scales(st.histogram, layout, r.sf);
  int64_t total_np = 0;
  for (const ScalePart& p : experts[0]) total_np += p.np;
  const int64_t slab = rows * total_np;
  parallel_experts((int64_t)experts.size(), threads,
                   [&](int64_t e, int inner) { process_scales(experts[e], k, kp, layout, r.sf, dst + e * slab, inner); });
  return r;
}

int64_t decode_scales(const uint8_t* src, int64_t total_np, int64_t n, int64_t np, int64_t k,
                      int64_t kp, Layout layout, float sf, uint8_t* dst, int threads) {
  check_scale_shapes(n, np, k, kp, layout);
  if (np > total_np) throw InvalidInput("part wider than the processed scales");
  const int64_t g = k / kGroup, gp = kp / kGroup;
  const int64_t u = scale_unit_rows(layout);
  // Inverse of encode_scale over the E4M3 bytes; anything else decodes to NaN.
  uint8_t dlut[256];
  std::memset(dlut, 0x7F, sizeof dlut);
  for (int b = 0x7E; b >= 0; --b) dlut[encode_scale((uint8_t)b, layout, sf)] = (uint8_t)b;
  dlut[0] = 0;
  const ScaleMap m = build_scale_map(np, layout);
  std::vector<PartTask> tasks;
  for (int64_t h = 0; h < gp / u; h += kUnitsPerTask) tasks.push_back({0, 0, h, std::min(gp / u, h + kUnitsPerTask)});
  std::atomic<int64_t> stray{0};
  parallel_for((int64_t)tasks.size(), threads, [&](int64_t ti) {
    const PartTask& t = tasks[ti];
    const int64_t g0 = t.begin * u, g1 = t.end * u;
    std::vector<uint8_t> tile((g1 - g0) * np, 0);
    for (int64_t h = t.begin; h < t.end; ++h) {
      const uint8_t* in = src + h * u * total_np;
      uint8_t* band = tile.data() + (h - t.begin) * u * np;
      for (int64_t i = 0; i < u * np; ++i) band[m.dg[i] * np + m.n[i]] = in[i];
    }
    int64_t stray_here = 0;
    for (int64_t gg = g0; gg < g1; ++gg) {
      const uint8_t* row = tile.data() + (gg - g0) * np;
      for (int64_t nn = 0; nn < np; ++nn) {
        if (gg < g && nn < n) dst[nn * g + gg] = dlut[row[nn]];
        else stray_here += row[nn] != 0;
      }
    }
    stray += stray_here;
  });
  return stray.load();
}

void process_global_scale(float ws2, Layout layout, ActDtype dt, float sf, uint8_t out[4], int& nbytes) {
  if (!(ws2 > 0.0f) || !std::isfinite(ws2)) throw InvalidInput("global scale " + std::to_string(ws2) + " is not a positive finite number");
  const float mult = std::ldexp(1.0f, exponent_bias(dt) - 7);
  if (layout == Layout::V1) {
    // Rounded to the activation dtype first, then scaled (exact: a power of two).
    uint16_t bits;
    if (dt == ActDtype::F16) {
      const float v = half_bits_to_float(float_to_half_bits(ws2)) * mult;
      bits = float_to_half_bits(v);
      if (!std::isfinite(half_bits_to_float(bits))) throw InvalidInput("processed global scale overflows float16");
    } else {
      const float v = bf16_bits_to_float(float_to_bf16_bits(ws2)) * mult;
      bits = float_to_bf16_bits(v);
      if (!std::isfinite(bf16_bits_to_float(bits))) throw InvalidInput("processed global scale overflows bfloat16");
    }
    out[0] = bits & 0xFF;
    out[1] = bits >> 8;
  } else {
    const float v = ws2 * mult / sf;
    if (!std::isfinite(v)) throw InvalidInput("processed global scale overflows float32");
    std::memcpy(out, &v, 4);
  }
  nbytes = global_scale_bytes(layout);
}

}  // namespace mfp4
