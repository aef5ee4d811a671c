#include "verify_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace mfp4 {

KeptScales::KeptScales(Layout layout, float sf) {
  for (int b = 0; b < 256; ++b) {
    lost[b] = scale_is_lost((uint8_t)b, layout, sf) ? 1 : 0;
    kept[b] = lost[b] || b == 0x80 ? 0 : (uint8_t)b;
  }
  // E4M3 is monotonic over 0x00-0x7E, so the lost bytes are the smallest non-zero ones,
  // [1, below): the blocked loops test that range instead of looking bytes up one by one.
  below = 1;
  while (below < 0x80 && lost[below]) ++below;
  for (int b = below; b < 256; ++b)
    if (lost[b]) below = 0;  // not a range after all: the byte-by-byte loops
}

bool KeptScales::changes(const uint8_t* src, int64_t count) const {
  for (int64_t i = 0; i < count; ++i)
    if (kept[src[i]] != src[i]) return true;
  return false;
}

int64_t KeptScales::apply(const uint8_t* src, int64_t count, uint8_t* dst) const {
  int64_t n = 0;
  for (int64_t i = 0; i < count; ++i) {
    n += lost[src[i]];
    dst[i] = kept[src[i]];
  }
  return n;
}

namespace {

// The byte-by-byte comparison of [i0, i1), adding to d.
void compare_bytes(const uint8_t* decoded, const uint8_t* source, int64_t i0, int64_t i1, const KeptScales& rule,
                   ScaleDiff& d, bool count_lost) {
  for (int64_t i = i0; i < i1; ++i) {
    const uint8_t s = source[i];
    if (count_lost) d.lost += rule.lost[s];
    if (decoded[i] == rule.kept[s]) continue;
    if (d.count++ == 0) {
      d.first = i;
      d.got = decoded[i];
    }
  }
}

}  // namespace

ScaleDiff compare_kept_scales(const uint8_t* decoded, const uint8_t* source, int64_t count, const KeptScales& rule) {
  ScaleDiff d;
  if (rule.below == 0) {
    compare_bytes(decoded, source, 0, count, rule, d, true);
    return d;
  }
  // Blocks of 64 bytes without a lookup (the compiler vectorizes them): a byte is lost when it
  // lies in [1, below), and kept as 0 then or when it is 0x80; a block with a difference is
  // looked at byte by byte to count it and find the first.
  constexpr int64_t kBlock = 64;
  const uint8_t span = (uint8_t)(rule.below - 1);
  int64_t i = 0;
  for (; i + kBlock <= count; i += kBlock) {
    uint8_t diff = 0;
    uint32_t lost = 0;
    for (int64_t j = 0; j < kBlock; ++j) {
      const uint8_t s = source[i + j];
      const uint8_t is_lost = (uint8_t)(s - 1) < span;
      const uint8_t want = is_lost | (s == 0x80) ? 0 : s;
      diff |= (uint8_t)(decoded[i + j] ^ want);
      lost += is_lost;
    }
    d.lost += lost;
    if (diff) compare_bytes(decoded, source, i, i + kBlock, rule, d, false);
  }
  compare_bytes(decoded, source, i, count, rule, d, true);
  return d;
}

namespace {

// JavaScript's Math.max for two doubles: NaN when either is.
inline double js_max(double a, double b) { return std::isnan(a) || std::isnan(b) ? std::numeric_limits<double>::quiet_NaN() : std::max(a, b); }

}  // namespace

ColumnErrors column_errors(const float* y, const float* ref, const ColumnShape& s) {
  ColumnErrors r;
  const int64_t m = s.m, n = s.n;
  // A non-finite output makes every measure infinite: counted first, so that the loop below
  // needs no branch per element.
  for (int64_t i = 0; i < m; ++i) {
    const float* yr = y + (s.row0 + i) * s.cols + s.col0;
    for (int64_t j = 0; j < n; ++j) r.non_finite += !std::isfinite(yr[j]);
  }
  if (r.non_finite > 0) {
    const double inf = std::numeric_limits<double>::infinity();
    r.rel = r.max_abs = r.frobenius = inf;
    return r;
  }
  std::vector<double> d2((size_t)n, 0.0), r2((size_t)n, 0.0), mx((size_t)n, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    const float* yr = y + (s.row0 + i) * s.cols + s.col0;
    const float* rr = ref + (s.ref_row0 + i) * s.ref_cols;
    for (int64_t j = 0; j < n; ++j) {
      const double a = yr[j], b = rr[j];
      const double d = a - b;
      d2[j] += d * d;
      r2[j] += b * b;
      const double ad = d < 0 ? -d : d;
      mx[j] = ad > mx[j] ? ad : mx[j];  // a NaN difference (a NaN reference) is never the largest
    }
  }
  double d_total = 0, r_total = 0;
  for (int64_t j = 0; j < n; ++j) {
    d_total += d2[j];
    r_total += r2[j];
    if (mx[j] > r.max_abs) r.max_abs = mx[j];
  }
  const double floor = r_total / (double)n;
  for (int64_t j = 0; j < n; ++j) {
    if (d2[j] == 0) continue;
    const double denom = js_max(r2[j], floor);
    const double e = denom > 0 ? std::sqrt(d2[j] / denom) : std::numeric_limits<double>::infinity();
    if (e > r.rel || r.column < 0) {
      r.rel = e;
      r.column = j;
    }
  }
  r.frobenius = r_total > 0 ? std::sqrt(d_total / r_total) : d_total > 0 ? std::numeric_limits<double>::infinity() : 0;
  return r;
}

}  // namespace mfp4
