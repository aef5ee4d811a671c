// GPU == CPU, byte for byte, without Node: every transform of transforms_cuda.h against its
// CPU twin on random tensors (padded shapes, MoE stacks, sliced path, inverses, errors), then
// kernel and end-to-end timings. Build: cmake --build native/build --target cuda_selftest.
// Usage: cuda_selftest [--quick] [--bench]
#include <chrono>
#include <exception>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "transforms_cpu.h"
#include "bench_cuda.h"
#include "transforms_cuda.h"

using namespace mfp4;

namespace {

int g_failures = 0, g_checks = 0;

struct Rng {
  uint64_t x;
  explicit Rng(uint64_t seed) : x(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  }
};

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  std::vector<uint8_t> v(n);
  Rng r(seed);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t w = r.next();
    std::memcpy(&v[i], &w, 8);
  }
  for (; i < n; ++i) v[i] = (uint8_t)r.next();
  return v;
}

// Valid non-negative E4M3 scales: zeros, subnormals and normals.
std::vector<uint8_t> scale_bytes(size_t n, uint64_t seed) {
  std::vector<uint8_t> v = random_bytes(n, seed);
  for (auto& b : v) b = b % 9 == 0 ? 0 : b % 0x7F;
  return v;
}

bool same(const char* what, const std::string& ctx, const void* a, const void* b, size_t n) {
  ++g_checks;
  if (std::memcmp(a, b, n) == 0) return true;
  const uint8_t *x = (const uint8_t*)a, *y = (const uint8_t*)b;
  size_t i = 0;
  while (i < n && x[i] == y[i]) ++i;
  std::printf("FAIL %s [%s]: first difference at byte %zu of %zu (gpu 0x%02x, cpu 0x%02x)\n", what, ctx.c_str(), i, n,
              x[i], y[i]);
  ++g_failures;
  return false;
}

void expect(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    std::printf("FAIL %s\n", what.c_str());
    ++g_failures;
  }
}

const char* lname(Layout l) { return l == Layout::V1 ? "v1" : "v2"; }
const char* dname(ActDtype d) { return d == ActDtype::F16 ? "f16" : "bf16"; }

// One stack: E experts x P parts of n rows (padded to np), K = k (padded to kp).
struct Case {
  int64_t experts, parts, n, np, k, kp;
  uint64_t seed;
};

std::string ctx_of(const Case& c) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "E=%lld P=%lld n=%lld np=%lld k=%lld kp=%lld", (long long)c.experts,
                (long long)c.parts, (long long)c.n, (long long)c.np, (long long)c.k, (long long)c.kp);
  return buf;
}

void run_case(const Case& c, bool do_v1) {
  const std::string ctx = ctx_of(c);
  const int64_t g = c.k / 16, rows = c.kp / 16;
  std::vector<std::vector<uint8_t>> wdata, sdata;
  cuda::HostStack ws, ss;
  for (int64_t e = 0; e < c.experts; ++e) {
    ws.emplace_back();
    ss.emplace_back();
    for (int64_t p = 0; p < c.parts; ++p) {
      wdata.push_back(random_bytes(c.n * c.k / 2, c.seed * 1000 + e * 10 + p));
      sdata.push_back(scale_bytes(c.n * g, c.seed * 1000 + e * 10 + p + 5));
    }
  }
  for (int64_t e = 0, i = 0; e < c.experts; ++e)
    for (int64_t p = 0; p < c.parts; ++p, ++i) {
      ws[e].push_back({wdata[i].data(), c.n, c.np});
      ss[e].push_back({sdata[i].data(), c.n, c.np});
    }
  // Weights.
  const int64_t row_words = 2 * c.np * c.parts, slab = rows * row_words;
  std::vector<uint32_t> cpu(slab * c.experts), gpu(slab * c.experts, 0xDEADBEEF);
  for (int64_t e = 0; e < c.experts; ++e) {
    std::vector<WeightPart> parts;
    for (auto& p : ws[e]) parts.push_back({p.data, p.n, p.np});
    repack_weight(parts, c.k, c.kp, cpu.data() + e * slab, row_words, 0);
  }
  cuda::run_repack_stack(ws, c.k, c.kp, gpu.data());
  same("qweight", ctx, gpu.data(), cpu.data(), cpu.size() * 4);
  // A row range: rows [rb, re) of every expert, packed one expert after the other.
  const int64_t rb = rows / 3 / 2 * 2, re = std::max(rb, (2 * rows / 3 + 1) / 2 * 2);
  if (re > rb) {
    std::vector<uint32_t> part((re - rb) * row_words * c.experts, 0xDEADBEEF), want;
    for (int64_t e = 0; e < c.experts; ++e)
      want.insert(want.end(), cpu.begin() + e * slab + rb * row_words, cpu.begin() + e * slab + re * row_words);
    cuda::run_repack_stack(ws, c.k, c.kp, part.data(), rb, re);
    same("qweight rows", ctx + " rows " + std::to_string(rb) + ".." + std::to_string(re), part.data(), want.data(),
         want.size() * 4);
  }

  // Inverse of every part of expert 0 and the last expert.
  for (int64_t e : {int64_t(0), c.experts - 1}) {
    for (int64_t p = 0; p < c.parts; ++p) {
      const uint32_t* src = cpu.data() + e * slab + 2 * c.np * p;
      std::vector<uint8_t> a(c.n * c.k / 2), b(c.n * c.k / 2, 0xAB);
      const int64_t sa = unpack_weight(src, row_words, c.n, c.np, c.k, c.kp, a.data(), 0);
      const int64_t sb = cuda::run_unpack_weight(src, row_words, c.n, c.np, c.k, c.kp, b.data());
      same("unpack", ctx, b.data(), a.data(), a.size());
      same("unpack==source", ctx, b.data(), ws[e][p].data, a.size());
      expect(sa == sb && sa == 0, "unpack padding count " + ctx + ": gpu " + std::to_string(sb) + " cpu " + std::to_string(sa));
    }
  }
  // Padding noise: both backends must count the same non-zero blocks.
  if (c.np > c.n || c.kp > c.k) {
    std::vector<uint32_t> noisy(cpu.begin(), cpu.begin() + slab);
    Rng r(c.seed + 77);
    for (int i = 0; i < 50; ++i) noisy[r.next() % slab] ^= 1u << (r.next() % 32);
    std::vector<uint8_t> a(c.n * c.k / 2), b(c.n * c.k / 2);
    const int64_t sa = unpack_weight(noisy.data(), row_words, c.n, c.np, c.k, c.kp, a.data(), 0);
    const int64_t sb = cuda::run_unpack_weight(noisy.data(), row_words, c.n, c.np, c.k, c.kp, b.data());
    same("unpack noisy", ctx, b.data(), a.data(), a.size());
    expect(sa == sb, "unpack noisy padding count " + ctx + ": gpu " + std::to_string(sb) + " cpu " + std::to_string(sa));
  }

  // Scales, both layouts and dtypes, sf computed and given.
  for (Layout layout : {Layout::V1, Layout::V2}) {
    if (layout == Layout::V1 && (!do_v1 || c.np != c.n || c.kp != c.k || c.k % (kGroup * scale_unit_rows(layout)) != 0)) continue;
    for (ActDtype dt : {ActDtype::F16, ActDtype::BF16}) {
      for (int given = 0; given < 2; ++given) {
        const std::string cx = ctx + " " + lname(layout) + " " + dname(dt) + (given ? " sf=8" : "");
        // CPU reference, as addon.cc's ProcessScalesStack does it.
        int64_t hist[256] = {};
        uint8_t max_byte = 0;
        for (auto& v : sdata) {
          const ScaleStats s = scan_scales(v.data(), (int64_t)v.size(), 0);
          for (int b = 0; b < 256; ++b) hist[b] += s.histogram[b];
          if (s.max_byte > max_byte) max_byte = s.max_byte;
        }
        const float sf = given ? 8.0f : scale_factor(max_byte, layout, dt);
        const int64_t zeroed = count_lost_scales(hist, layout, sf);
        const int64_t total_np = c.np * c.parts, sslab = rows * total_np;
        std::vector<uint8_t> a(sslab * c.experts), b(sslab * c.experts, 0xCD);
        for (int64_t e = 0; e < c.experts; ++e) {
          std::vector<ScalePart> parts;
          for (auto& p : ss[e]) parts.push_back({p.data, p.n, p.np});
          process_scales(parts, c.k, c.kp, layout, sf, a.data() + e * sslab, 0);
        }
        const cuda::ScaleRunResult r = cuda::run_scales_stack(ss, c.k, c.kp, layout, dt, given, 8.0f, b.data());
        expect(r.bad_expert < 0, "unexpected bad scale " + cx);
        expect(r.sf == sf, "sf " + cx + ": gpu " + std::to_string(r.sf) + " cpu " + std::to_string(sf));
        expect(r.zeroed == zeroed, "zeroed " + cx + ": gpu " + std::to_string(r.zeroed) + " cpu " + std::to_string(zeroed));
        expect(r.max_byte == max_byte, "max byte " + cx);
        same("scales", cx, b.data(), a.data(), a.size());
        if (re > rb) {  // a row range without a scan, sf given
          std::vector<uint8_t> part((re - rb) * total_np * c.experts, 0xCD), want;
          for (int64_t e = 0; e < c.experts; ++e)
            want.insert(want.end(), a.begin() + e * sslab + rb * total_np, a.begin() + e * sslab + re * total_np);
          const cuda::ScaleRunResult rr =
              cuda::run_scales_stack(ss, c.k, c.kp, layout, dt, true, sf, part.data(), rb, re, false);
          expect(rr.sf == sf && rr.bad_expert < 0, "row range sf " + cx);
          same("scales rows", cx + " rows " + std::to_string(rb) + ".." + std::to_string(re), part.data(), want.data(),
               want.size());
        }
        if (given) continue;
        // Inverse of every part of the last expert.
        const int64_t u = scale_unit_rows(layout);
        for (int64_t p = 0; p < c.parts; ++p) {
          const uint8_t* src = a.data() + (c.experts - 1) * sslab + u * c.np * p;
          std::vector<uint8_t> da(c.n * g), db(c.n * g, 0xEE);
          const int64_t sa = decode_scales(src, total_np, c.n, c.np, c.k, c.kp, layout, sf, da.data(), 0);
          const int64_t sb = cuda::run_decode_scales(src, total_np, c.n, c.np, c.k, c.kp, layout, sf, db.data());
          same("decode", cx, db.data(), da.data(), da.size());
          expect(sa == sb, "decode padding count " + cx + ": gpu " + std::to_string(sb) + " cpu " + std::to_string(sa));
        }
        if (c.np > c.n || c.kp > c.k) {
          std::vector<uint8_t> noisy(a.begin(), a.begin() + sslab);
          Rng rr(c.seed + 99);
          for (int i = 0; i < 50; ++i) noisy[rr.next() % sslab] ^= (uint8_t)(1u << (rr.next() % 8));
          std::vector<uint8_t> da(c.n * g), db(c.n * g);
          const int64_t sa = decode_scales(noisy.data(), total_np, c.n, c.np, c.k, c.kp, layout, sf, da.data(), 0);
          const int64_t sb = cuda::run_decode_scales(noisy.data(), total_np, c.n, c.np, c.k, c.kp, layout, sf, db.data());
          same("decode noisy", cx, db.data(), da.data(), da.size());
          expect(sa == sb, "decode noisy padding count " + cx + ": gpu " + std::to_string(sb) + " cpu " + std::to_string(sa));
        }
      }
    }
  }

  // Negative and NaN scales: the GPU finds the first one in (expert, part, row, group) order.
  {
    std::vector<std::vector<uint8_t>> bad = sdata;
    Rng r(c.seed + 5);
    const size_t i1 = (size_t)(r.next() % bad.size()), i2 = (size_t)(r.next() % bad.size());
    const size_t j1 = (size_t)(r.next() % bad[i1].size()), j2 = (size_t)(r.next() % bad[i2].size());
    bad[i1][j1] = 0xB8;  // -1.0
    bad[i2][j2] = 0x7F;  // NaN
    cuda::HostStack bs = ss;
    for (int64_t e = 0, i = 0; e < c.experts; ++e)
      for (int64_t p = 0; p < c.parts; ++p, ++i) bs[e][p].data = bad[i].data();
    const size_t first = std::min(i1 * (1ull << 40) + j1, i2 * (1ull << 40) + j2);
    const size_t fi = first >> 40, fj = first & ((1ull << 40) - 1);
    std::vector<uint8_t> out(rows * c.np * c.parts * c.experts, 0x11);
    const cuda::ScaleRunResult res = cuda::run_scales_stack(bs, c.k, c.kp, Layout::V2, ActDtype::BF16, false, 1, out.data());
    expect(res.bad_expert == (int64_t)(fi / c.parts) && res.bad_part == (int64_t)(fi % c.parts) &&
               res.bad_index == (int64_t)fj && res.bad_byte == bad[fi][fj],
           "bad scale position " + ctx + ": gpu e=" + std::to_string(res.bad_expert) + " p=" + std::to_string(res.bad_part) +
               " i=" + std::to_string(res.bad_index) + " want e=" + std::to_string(fi / c.parts) + " p=" +
               std::to_string(fi % c.parts) + " i=" + std::to_string(fj));
    bool untouched = true;
    for (uint8_t b : out) untouched &= b == 0x11;
    expect(untouched, "output written despite a bad scale " + ctx);
  }
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void bench() {
  std::printf("\nkernel-only (device-resident, v2 bfloat16; GB/s counts input + output bytes)\n");
  std::printf("%-12s %9s %9s %9s %9s | %9s %9s %9s\n", "shape", "repack", "scan", "scales", "memcpy", "repackGB/s",
              "scalesGB/s", "copyGB/s");
  for (auto [n, k] : {std::pair<int64_t, int64_t>{8192, 8192}, {28672, 8192}, {8192, 28672}}) {
    const cuda::BenchResult b = cuda::bench_kernels(n, k, 50);
    const double wb = 2.0 * b.weight_bytes, sb = 2.0 * b.scale_bytes;
    std::printf("%5lldx%-6lld %7.3fms %7.3fms %7.3fms %7.3fms | %9.0f %9.0f %9.0f\n", (long long)n, (long long)k,
                b.repack_ms, b.scan_ms, b.scales_ms, b.copy_ms, wb / b.repack_ms / 1e6,
                sb / (b.scales_ms + b.scan_ms) / 1e6, (wb + sb) / b.copy_ms / 1e6);
  }
  std::printf("\nend to end from host buffers (v2 bfloat16; best of 3)\n");
  for (auto [n, k] : {std::pair<int64_t, int64_t>{8192, 8192}, {28672, 8192}}) {
    std::vector<uint8_t> w = random_bytes(n * k / 2, 1), s = scale_bytes(n * k / 16, 2);
    int64_t np, kp;
    pad_shape_v2(n, k, np, kp);
    std::vector<uint32_t> qw(kp / 16 * 2 * np);
    std::vector<uint8_t> qs(kp / 16 * np);
    cuda::HostStack wst{{{w.data(), n, np}}}, sst{{{s.data(), n, np}}};
    double best_w = 1e30, best_s = 1e30, best_cw = 1e30, best_cs = 1e30;
    for (int i = 0; i < 3; ++i) {
      double t0 = now_ms();
      cuda::run_repack_stack(wst, k, kp, qw.data());
      double t1 = now_ms();
      cuda::run_scales_stack(sst, k, kp, Layout::V2, ActDtype::BF16, false, 1, qs.data());
      double t2 = now_ms();
      best_w = std::min(best_w, t1 - t0);
      best_s = std::min(best_s, t2 - t1);
      t0 = now_ms();
      repack_weight({{w.data(), n, np}}, k, kp, qw.data(), 2 * np, 0);
      t1 = now_ms();
      process_scales({{s.data(), n, np}}, k, kp, Layout::V2, 1, qs.data(), 0);
      t2 = now_ms();
      best_cw = std::min(best_cw, t1 - t0);
      best_cs = std::min(best_cs, t2 - t1);
    }
    const double in_mb = (w.size() + s.size()) / 1e6;
    std::printf("%5lldx%-6lld gpu: repack %.1f ms, scales %.1f ms (%.0f MB/s of input) | cpu all threads: repack %.1f ms, scales %.1f ms (%.0f MB/s)\n",
                (long long)n, (long long)k, best_w, best_s, in_mb / ((best_w + best_s) / 1e3), best_cw, best_cs,
                in_mb / ((best_cw + best_cs) / 1e3));
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, do_bench = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    if (!std::strcmp(argv[i], "--bench")) do_bench = true;
  }
  std::string why;
  if (!cuda::cuda_available(why)) {
    std::printf("CUDA unavailable: %s\n", why.c_str());
    return 2;
  }
  cuda::DeviceInfo info;
  cuda::device_info(info);
  std::printf("device %d of %d: %s (sm_%d%d), built for %s\n", info.ordinal, info.devices, info.name.c_str(), info.major,
              info.minor, cuda::compiled_archs());
  std::vector<Case> cases = {
      {1, 1, 64, 64, 32, 32, 1},      {1, 1, 128, 128, 64, 64, 2},     {1, 1, 320, 320, 160, 160, 3},
      {1, 1, 200, 256, 48, 64, 4},    {1, 1, 64, 64, 400, 512, 5},     {1, 1, 136, 192, 272, 320, 6},
      {1, 1, 96, 128, 256, 256, 7},   {1, 1, 1000, 1024, 1008, 1024, 8}, {1, 1, 4096, 4096, 1024, 1024, 9},
      {3, 2, 100, 128, 128, 128, 10}, {4, 2, 192, 192, 256, 256, 11}, {5, 1, 256, 256, 192, 192, 12},
      {1, 3, 64, 64, 4096, 4096, 13}, {2, 2, 130, 256, 192, 192, 14}, {1, 1, 64, 64, 16, 16, 15},
      {1, 1, 72, 128, 8208, 8256, 16},
  };
  if (!quick) {
    cases.push_back({1, 1, 28672, 28672, 8192, 8192, 20});
    cases.push_back({64, 2, 1536, 1536, 2048, 2048, 21});
    cases.push_back({8, 1, 2048, 2048, 1536, 1536, 22});
  }
  auto guarded = [](const Case& c) {
    try {
      run_case(c, true);
    } catch (const std::exception& e) {
      std::printf("FAIL exception [%s]: %s\n", ctx_of(c).c_str(), e.what());
      ++g_failures;
    }
  };
  const double t0 = now_ms();
  for (const Case& c : cases) guarded(c);
  std::printf("unsliced: %d checks, %d failures (%.1f s)\n", g_checks, g_failures, (now_ms() - t0) / 1e3);
  // The sliced path: a device budget too small for the whole tensor, big enough for one
  // expert's 16 K-blocks.
  for (int64_t limit : {int64_t(40000), int64_t(300000), int64_t(3000000)}) {
    cuda::set_memory_limit(limit);
    int ran = 0;
    for (const Case& c : cases)
      if (c.parts * 256 * c.np + 8192 <= limit && c.experts * c.parts * c.n * c.k < 64ll * 1536 * 2048) {
        guarded(c);
        ++ran;
      }
    std::printf("sliced with a %lld-byte budget: %d cases, %d failures so far\n", (long long)limit, ran, g_failures);
  }
  cuda::set_memory_limit(0);
  std::printf("all: %d checks, %d failures (%.1f s)\n", g_checks, g_failures, (now_ms() - t0) / 1e3);
  // Out of memory even for the smallest slice: a clear error.
  cuda::set_memory_limit(1000);
  try {
    std::vector<uint8_t> w(64 * 4096 / 2);
    std::vector<uint32_t> q(4096 / 16 * 128);
    cuda::run_repack_stack({{{w.data(), 64, 64}}}, 4096, 4096, q.data());
    expect(false, "no out-of-memory error");
  } catch (const cuda::CudaError& e) {
    std::printf("expected error: %s\n", e.what());
    expect(std::string(e.what()).find("CUDA out of memory allocating") == 0, "out-of-memory message");
  }
  cuda::set_memory_limit(0);
  if (do_bench) bench();
  std::printf("%s: %d checks, %d failures\n", g_failures ? "FAILED" : "PASSED", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
