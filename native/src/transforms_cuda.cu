// Host-level entry points of the CUDA backend (transforms_cuda.h): host buffers in, host
// buffers out. Each call checks shapes as the CPU does, sizes its pieces to the free device
// memory (cuda_pipeline.cuh), uploads, launches the kernels of cuda_kernels.cu and downloads;
// the weight repack overlaps its pieces over three streams.
#include "transforms_cuda.cuh"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_device.cuh"
#include "cuda_host.cuh"
#include "cuda_pipeline.cuh"
#include "transforms_cpu.h"

namespace mfp4 {
namespace cuda {
namespace {

using namespace detail;

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
  for_each_piece(E, row_begin, rows, g, pc, [&](const PieceSpan& span) {
    const int64_t e0 = span.e0, ne = span.ne, d0 = span.d0, nr = span.nr;
    const int64_t r0 = span.r0, w = span.w;  // r0: row of the whole tensor; w: K-blocks with data
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
  });
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
  if (scan) {
    for_each_piece(E, 0, all_rows, g, pc, [&](const PieceSpan& span) {
      const int64_t e0 = span.e0, ne = span.ne, r0 = span.r0, w = span.w;
      if (w == 0) return;
      const SourceLayout l = source_layout(parts, w);
      upload(e0, ne, r0, w, l);
      timer.begin(stream.s);
      for (size_t p = 0; p < parts.size(); ++p) {
        const DevPart dp{din + l.offset[p], l.expert_bytes, w, parts[p].n, parts[p].np};
        launch_scan(dp, ne, w, ScanKey{e0, key_expert, key_off[p], g, r0}, stats, stream.s);
      }
      timer.end(stream.s, Stage::Kernel);
    });
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
  for_each_piece(E, row_begin, rows, g, pc, [&](const PieceSpan& span) {
    const int64_t e0 = span.e0, ne = span.ne, d0 = span.d0, r0 = span.r0, nr = span.nr, w = span.w;
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
  });
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
  for_each_piece(1, 0, rows, g, pc, [&](const PieceSpan& span) {
    const int64_t r0 = span.r0, nr = span.nr, w = span.w;
    copy_rows(din, part_words * 4, src + r0 * src_row_words, src_row_words * 4, part_words * 4, nr,
              cudaMemcpyHostToDevice, stream.s, "the packed weight");
    launch_unpack(din, part_words, n, np, nr, w, dout, 8 * w, stray, stream.s);
    copy_rows(dst + 8 * r0, k / 2, dout, 8 * w, 8 * w, n, cudaMemcpyDeviceToHost, stream.s, "the weight");
  });
  unsigned long long count = 0;
  check(cudaMemcpyAsync(&count, stray, 8, cudaMemcpyDeviceToHost, stream.s), "reading a counter");
  sync(stream.s, "unpacking the weight");
  return (int64_t)count;
}

UnpackDiff run_unpack_compare(const uint32_t* src, int64_t src_row_words, int64_t n, int64_t np, int64_t k, int64_t kp,
                              const uint8_t* want) {
  check_weight_shapes(n, np, k, kp);
  if (2 * np > src_row_words) throw InvalidInput("source row too narrow");
  require_device();
  const int64_t rows = kp / kGroup, g = k / kGroup, part_words = 2 * np;
  Stream stream;
  Arena arena(stream.s);
  // The source's piece goes where the packed piece was once it is unpacked (stream order):
  // n·8·w <= 8·nr·np bytes, so the compare needs no more device memory than the unpack.
  auto bytes = [&](int64_t, int64_t nr) { return align_up(3 * 8) + align_up(nr * part_words * 4) + align_up(n * 8 * std::min(nr, g)); };
  const Piece pc = plan_pieces(arena, stream.s, 1, rows, kRepackRows, bytes, "the packed weight");
  auto* counters = arena.take<unsigned long long>(3 * 8);  // stray, count, first key
  uint32_t* din = arena.take<uint32_t>(pc.rows * part_words * 4);
  uint8_t* dout = arena.take<uint8_t>(n * 8 * std::min(pc.rows, g));
  uint8_t* dwant = reinterpret_cast<uint8_t*>(din);
  check(cudaMemsetAsync(counters, 0, 2 * 8, stream.s), "clearing the counters");
  check(cudaMemsetAsync(counters + 2, 0xFF, 8, stream.s), "clearing the counters");
  for_each_piece(1, 0, rows, g, pc, [&](const PieceSpan& span) {
    const int64_t r0 = span.r0, nr = span.nr, w = span.w;
    copy_rows(din, part_words * 4, src + r0 * src_row_words, src_row_words * 4, part_words * 4, nr,
              cudaMemcpyHostToDevice, stream.s, "the packed weight");
    launch_unpack(din, part_words, n, np, nr, w, dout, 8 * w, counters, stream.s);
    copy_rows(dwant, 8 * w, want + 8 * r0, k / 2, 8 * w, n, cudaMemcpyHostToDevice, stream.s, "the source weight");
    launch_diff(dout, dwant, n, 8 * w, 8 * w, k / 2, 8 * r0, counters + 1, counters + 2, stream.s);
  });
  unsigned long long host[3] = {};
  check(cudaMemcpyAsync(host, counters, sizeof host, cudaMemcpyDeviceToHost, stream.s), "reading the counters");
  sync(stream.s, "comparing the unpacked weight");
  UnpackDiff d;
  d.stray = (int64_t)host[0];
  d.count = (int64_t)host[1];
  if (d.count > 0) {
    d.first = (int64_t)(host[2] >> 8);
    d.got = (uint8_t)(host[2] & 0xFF);
  }
  return d;
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
  for_each_piece(1, 0, rows, g, pc, [&](const PieceSpan& span) {
    const int64_t r0 = span.r0, nr = span.nr, w = span.w;
    copy_rows(din, part_unit, src + (r0 / u) * unit_bytes, unit_bytes, part_unit, nr / u, cudaMemcpyHostToDevice,
              stream.s, "the processed scales");
    launch_decode(din, part_unit, n, np, nr, w, layout, dlut_dev, dout, w, stray, stream.s);
    copy_rows(dst + r0, g, dout, w, w, n, cudaMemcpyDeviceToHost, stream.s, "the block scales");
  });
  unsigned long long count = 0;
  check(cudaMemcpyAsync(&count, stray, 8, cudaMemcpyDeviceToHost, stream.s), "reading a counter");
  sync(stream.s, "decoding the scales");
  return (int64_t)count;
}
}  // namespace cuda
}  // namespace mfp4
