#include "mxfp4_cpu.h"

#include <atomic>
#include <string>

#include "mxfp4_layout.h"
#include "parallel.h"

namespace mfp4 {

void check_mxfp4_shapes(int64_t n, int64_t np, int64_t k, int64_t kp) {
  if (n <= 0 || k <= 0) throw InvalidInput("empty scales [" + std::to_string(n) + ", " + std::to_string(k) + "]");
  if (k % kMxGroup != 0) throw InvalidInput("K = " + std::to_string(k) + " is not a multiple of 32 (the MXFP4 group size)");
  if (kp % kMxGroup != 0) throw InvalidInput("padded K = " + std::to_string(kp) + " is not a multiple of 32");
  if (np % kTileN != 0) throw InvalidInput("padded N = " + std::to_string(np) + " is not a multiple of 64");
  if (np < n || kp < k) throw InvalidInput("padded shape smaller than [" + std::to_string(n) + ", " + std::to_string(k) + "]");
}

void process_mxfp4_scales(const std::vector<Mxfp4ScalePart>& parts, int64_t k, int64_t kp, uint8_t* dst, int threads,
                          int64_t row_begin, int64_t row_end) {
  const int64_t g = k / kMxGroup, gp = kp / kMxGroup;
  const int64_t rows = row_end < 0 ? gp : row_end;
  int64_t total = 0;
  for (const auto& p : parts) {
    check_mxfp4_shapes(p.n, p.np, k, kp);
    total += p.np;
  }
  if (row_begin < 0 || row_begin > rows || rows > gp) throw InvalidInput("row range outside the processed scales");
  const bool single = mxfp4_single(kp);
  parallel_for(rows - row_begin, threads, [&](int64_t ri) {
    const int64_t r = row_begin + ri;
    uint8_t* out = dst + ri * total;
    for (const auto& p : parts) {
      for (int64_t i = 0; i < p.np; ++i) {
        const int64_t col = mxfp4_scale_column(i, single);
        out[i] = col < p.n && r < g ? p.data[col * g + r] : 0;
      }
      out += p.np;
    }
  });
}

int64_t decode_mxfp4_scales(const uint8_t* src, int64_t total_np, int64_t col_offset, int64_t n, int64_t np, int64_t k,
                            int64_t kp, uint8_t* dst, int threads) {
  check_mxfp4_shapes(n, np, k, kp);
  if (col_offset + np > total_np) throw InvalidInput("part outside the processed scales");
  const int64_t g = k / kMxGroup, gp = kp / kMxGroup;
  const bool single = mxfp4_single(kp);
  std::atomic<int64_t> stray{0};
  parallel_for(gp, threads, [&](int64_t r) {
    const uint8_t* in = src + r * total_np + col_offset;
    int64_t here = 0;
    for (int64_t i = 0; i < np; ++i) {
      const int64_t col = mxfp4_scale_column(i, single);
      if (col < n && r < g) dst[col * g + r] = in[i];
      else here += in[i] != 0;
    }
    stray += here;
  });
  return stray.load();
}

}  // namespace mfp4
