// The fast Marlin FP4 GEMM on a GPU without Node: checks it against the simple kernel
// (gemm_cuda.cu) on random tensors (both layouts, both dtypes, padded N and K, M not a multiple
// of 16, every kernel variant), then times it against cuBLAS (gemm_bench.h) and prints tables.
// Build: cmake --build native/build --target gemm_bench.
// Usage: gemm_bench [--check] [--bench] [--variants] [--fp16] (none given: all of them),
//        gemm_bench --one N K M DEPTH ROWS_PER_STEP (one row, for a profiler; 0 = default)
//        gemm_bench --tile N K M DEPTH KERNEL [KSPLIT [KREDUCE]] (one row through the tiled (2) or
//        wgmma (3) kernel; for wgmma KSPLIT -1 = stream-K, 1..8 = a split of K, 0 or none = by the
//        shape; KREDUCE 1 = through a cluster, 2 = through the workspace)
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "gemm_bench.h"
#include "gemm_cuda.h"
#include "gemm_fast_cuda.h"
#include "transforms_cpu.h"
#include "transforms_cuda.h"

using namespace mfp4;

namespace {

struct Rng {
  uint64_t x;
  explicit Rng(uint64_t seed) : x(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint32_t next() {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return (uint32_t)(x >> 11);
  }
};

uint16_t act_bits(float v, ActDtype dt) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return dt == ActDtype::BF16 ? (uint16_t)(b >> 16) : (uint16_t)float_to_half_bits(v);
}

int g_fail = 0;

// One random case: fast (with a given tuning) against the simple kernel.
void check_case(int64_t m, int64_t n, int64_t k, bool pad, Layout layout, ActDtype dt, const cuda::FastGemmTuning& t, uint64_t seed) {
  int64_t np = (n + 63) / 64 * 64, kp = layout == Layout::V1 ? (k + 31) / 32 * 32 : (k + 15) / 16 * 16;
  if (pad) np += 64, kp += layout == Layout::V1 ? 32 : 64;
  Rng r(seed);
  std::vector<uint16_t> x((size_t)(m * k));
  for (auto& v : x) v = act_bits(((int)(r.next() % 256) - 128) / 32.0f, dt);
  std::vector<uint32_t> w((size_t)(kp / 16 * 2 * np));
  for (auto& v : w) v = r.next();
  std::vector<uint8_t> s((size_t)(kp / 16 * np));
  for (auto& v : s) {
    const uint32_t u = r.next() % 16;
    v = u == 0 ? 0 : (uint8_t)(0x40 + r.next() % 0x80);  // some zeroed scales, v*128 from 2^-7 to 2^8
  }
  cuda::FastGemmDevice dummy;
  MarlinGemmArgs a;
  a.x = x.data();
  a.m = m;
  a.k = k;
  a.n = n;
  a.np = np;
  a.kp = kp;
  a.layout = layout;
  a.dt = dt;
  a.weight = w.data();
  a.scales = s.data();
  // A stored global scale as a converter writes it: weight_scale_2 times 2^(bias - 7).
  const float gv = std::ldexp(0.37f, exponent_bias(dt) - 7);
  uint32_t fb;
  std::memcpy(&fb, &gv, 4);
  a.global_bits = layout == Layout::V2 ? fb : act_bits(gv, dt);
  std::vector<float> ref((size_t)(m * n)), out((size_t)(m * n), NAN);
  a.y = ref.data();
  cuda::gemm_marlin(a);
  a.y = out.data();
  try {
    cuda::gemm_marlin_fast(a, t);
  } catch (const InvalidInput& e) {
    // A tuning forced by name that this shape cannot take (a split wider than one wave of blocks).
    if (t.ksplit <= 0) throw;
    std::printf("SKIP m=%-4lld n=%-5lld k=%-5lld ksplit=%d kreduce=%d mt=%d: %s\n", (long long)m, (long long)n, (long long)k, t.ksplit, t.kreduce, t.m_tiles, e.what());
    return;
  }
  double num = 0, den = 0, maxabs = 0;
  int64_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) ++bad;
    const double d = (double)out[i] - ref[i];
    num += d * d;
    den += (double)ref[i] * ref[i];
    maxabs = std::max(maxabs, std::fabs(d));
  }
  const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  const bool ok = bad == 0 && rel < 1e-5;
  if (!ok) ++g_fail;
  std::printf("%s m=%-4lld n=%-5lld np=%-5lld k=%-5lld kp=%-5lld %s %s kernel=%d mt=%d depth=%d ksplit=%d kreduce=%d rel=%.2e maxabs=%.2e nonfinite=%lld\n",
              ok ? "PASS" : "FAIL", (long long)m, (long long)n, (long long)np, (long long)k, (long long)kp,
              layout == Layout::V1 ? "v1" : "v2", dt == ActDtype::BF16 ? "bf16" : "f16", t.kernel, t.m_tiles, t.depth, t.ksplit, t.kreduce, rel, maxabs,
              (long long)bad);
}

void run_checks() {
  uint64_t seed = 1;
  for (ActDtype dt : {ActDtype::BF16, ActDtype::F16})
    for (Layout lay : {Layout::V2, Layout::V1}) {
      // The default plan: M in and past each tile size, padding, odd K/16 rows (one row per
      // step), M = 256, 300 (the wgmma kernel's two-block-row grids) and M = 512, 600 (the dense
      // route where cuBLAS loads).
      check_case(1, 64, 64, false, lay, dt, {}, seed++);
      check_case(5, 192, 320, true, lay, dt, {}, seed++);
      check_case(16, 4096, 1024, false, lay, dt, {}, seed++);
      check_case(17, 200, 544, true, lay, dt, {}, seed++);
      check_case(33, 1000, 2048, true, lay, dt, {}, seed++);
      check_case(100, 512, 768, false, lay, dt, {}, seed++);
      check_case(130, 384, 4096, true, lay, dt, {}, seed++);
      check_case(256, 320, 1088, true, lay, dt, {}, seed++);
      check_case(300, 1000, 2048, false, lay, dt, {}, seed++);
      check_case(512, 320, 1088, true, lay, dt, {}, seed++);
      check_case(600, 1000, 2048, false, lay, dt, {}, seed++);
      for (int64_t m : {1, 8, 9, 16, 17, 32, 33, 65}) {
        check_case(m, 4096, 2048, false, lay, dt, {}, seed++);
        check_case(m, 320, 1056, true, lay, dt, {}, seed++);  // odd K/16 rows
      }
      // Every instantiation: tile counts x depths x rows per step.
      for (int mn8 : {1, 2, 4, 8})
        for (int depth : {4, 8})
          for (int rps : {1, 2}) {
            cuda::FastGemmTuning t;
            t.m_tiles = mn8;
            t.depth = depth;
            t.rows_per_step = rps;
            t.kernel = 1;
            check_case(45, 320, 1088, true, lay, dt, t, seed++);
            check_case(7, 200, 544, true, lay, dt, t, seed++);
          }
      // Two chunks per step (6 chunks; odd K/16 rows with one row per step where the layout
      // allows them, v2), a zeroing of y by the kernel and by a memset (more than one wave: no
      // cooperative launch).
      for (int mn8 : {1, 2})
        for (int rps : {1, 2})
          for (int waves : {1, 2}) {
            cuda::FastGemmTuning t;
            t.m_tiles = mn8;
            t.rows_per_step = rps;
            t.chunks_per_step = 2;
            t.waves = waves;
            t.kernel = 1;
            check_case(mn8 == 1 ? 3 : 13, 320, rps == 1 && lay == Layout::V2 ? 1040 : 1088, true, lay, dt, t, seed++);
            check_case(mn8 == 1 ? 8 : 16, 330, 2048, false, lay, dt, t, seed++);
          }
      // The tiled and the wgmma kernels' instantiations, at Ms below, inside and past a block
      // row; odd K/16 rows (a last stage of fewer than 4 rows, v2) and a chunk count no block
      // shape divides.
      for (int kernel : {2, 3})
      for (int mt : {4, 8, 16})
        for (int depth : {3, 4, 5}) {
          if (kernel == 3 && !cuda::fast_gemm_has_wgmma()) continue;
          cuda::FastGemmTuning t;
          t.kernel = kernel;
          t.m_tiles = mt;
          t.depth = depth;
          check_case(7, 200, 544, true, lay, dt, t, seed++);
          check_case(45, 320, 1088, true, lay, dt, t, seed++);
          check_case(130, 1000, 2080, false, lay, dt, t, seed++);
          if (kernel == 3) {  // stream-K and cluster splits by name (one with a rank that gets no
                              // K unit), and N not a multiple of 4 (stream-K by default)
            for (int ks : {-1, 1, 2, 3, 4, 8})
              for (int kr : {1, 2}) {
                if (ks < 0 && kr == 2) continue;
                cuda::FastGemmTuning tf = t;
                tf.ksplit = ks;
                tf.kreduce = kr;
                check_case(45, 320, 1088, true, lay, dt, tf, seed++);
                check_case(130, 1000, 2080, false, lay, dt, tf, seed++);
                if (ks == 8) check_case(33, 256, 96, false, lay, dt, tf, seed++);  // ranks with no K unit
              }
            check_case(70, 198, 1056, true, lay, dt, t, seed++);
          }
          if (kernel == 3) {  // the wgmma kernel's 8- and 16-row blocks
            cuda::FastGemmTuning t2 = t;
            t2.m_tiles = mt == 4 ? 1 : mt == 8 ? 2 : 0;
            check_case(1, 200, 544, true, lay, dt, t2, seed++);
            check_case(13, 4096, 1024, false, lay, dt, t2, seed++);
          }
          if (lay == Layout::V2) check_case(77, 320, 1056, true, lay, dt, t, seed++);
        }
    }
}

std::string fmt_us(double us) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", us);
  return b;
}

std::string speedup(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2fx", x);
  return b;
}

void print_table(const cuda::BenchReport& rep, const char* title) {
  std::printf("\n## %s: %s, copy %.0f GB/s, L2 %lld MB, cuBLAS: %s\n", title, rep.device.c_str(), rep.copy_gbs,
              (long long)(rep.l2_bytes >> 20), rep.cublas.c_str());
  std::printf("| N x K | M | ours us | cuBLAS us | speed-up | ours TFLOP/s | weight GB/s | %% copy | dequant us | plan |\n|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : rep.rows) {
    const double flop = 2.0 * r.m * r.n * r.k;
    const double gbs = r.weight_bytes / (r.ours_us * 1e3);
    std::printf("| %lldx%lld | %lld | %s | %s | %s | %.1f | %.0f | %.0f%% | %s | %s |\n", (long long)r.n, (long long)r.k, (long long)r.m,
                fmt_us(r.ours_us).c_str(), r.cublas_us > 0 ? fmt_us(r.cublas_us).c_str() : "-",
                r.cublas_us > 0 ? speedup(r.cublas_us / r.ours_us).c_str() : "-", flop / (r.ours_us * 1e6), gbs,
                100.0 * gbs / rep.copy_gbs, r.dequant_us > 0 ? fmt_us(r.dequant_us).c_str() : "-", r.plan.c_str());
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  bool check = false, bench = false, variants = false, fp16 = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--check") check = true;
    else if (a == "--bench") bench = true;
    else if (a == "--variants") variants = true;
    else if (a == "--fp16") fp16 = true;
    else if (a == "--tile" && i + 5 < argc) {
      // One shape, one M through the tiled (2) or wgmma (3) kernel at a depth: for ncu.
      cuda::BenchOptions o;
      o.shapes = {{std::atoll(argv[i + 1]), std::atoll(argv[i + 2])}};
      o.ms = {std::atoll(argv[i + 3])};
      o.tuning.kernel = std::atoi(argv[i + 5]);
      o.tuning.depth = std::atoi(argv[i + 4]);
      if (i + 6 < argc && (argv[i + 6][0] != '-' || argv[i + 6][1] == '1')) o.tuning.ksplit = std::atoi(argv[i + 6]);
      if (i + 7 < argc && argv[i + 7][0] != '-') o.tuning.kreduce = std::atoi(argv[i + 7]);
      o.cublas = std::getenv("GEMM_BENCH_CUBLAS") != nullptr;
      o.dense = false;
      o.warmup = 2;
      o.iters = std::getenv("GEMM_BENCH_ITERS") ? std::atoi(std::getenv("GEMM_BENCH_ITERS")) : 3;  // few by default: for ncu
      try {
        print_table(cuda::run_gemm_bench(o), "tile");
      } catch (const std::exception& e) {
        std::printf("error: %s\n", e.what());
        return 1;
      }
      return 0;
    }
    else if (a == "--one" && i + 5 < argc) {
      // One shape, one M, one kernel version: for a profiler (ncu) run.
      cuda::BenchOptions o;
      o.shapes = {{std::atoll(argv[i + 1]), std::atoll(argv[i + 2])}};
      o.ms = {std::atoll(argv[i + 3])};
      o.tuning.depth = std::atoi(argv[i + 4]);
      o.tuning.rows_per_step = std::atoi(argv[i + 5]);
      o.cublas = false;
      o.warmup = 2;
      o.iters = 3;
      print_table(cuda::run_gemm_bench(o), "one");
      return 0;
    }
  }
  if (!check && !bench && !variants && !fp16) check = bench = variants = fp16 = true;
  try {
    std::string why;
    if (!cuda::cuda_available(why)) {
      std::printf("no usable GPU: %s\n", why.c_str());
      return 3;
    }
    if (check) {
      run_checks();
      std::printf("checks: %s (%d failed)\n", g_fail ? "FAIL" : "all PASS", g_fail);
    }
    const std::vector<cuda::BenchShape> shapes = {{4096, 4096}, {14336, 4096}, {4096, 14336}, {8192, 8192},
                                                 {28672, 8192}, {8192, 28672}, {10240, 8192}, {1536, 2048},
                                                 {2048, 768},   {4096, 7168},  {7168, 2048}};
    if (bench) {
      cuda::BenchOptions o;
      o.shapes = shapes;
      o.ms = {1, 4, 16, 32, 64, 128, 256, 1024};
      print_table(cuda::run_gemm_bench(o), "bf16, default plan");
    }
    if (fp16) {
      cuda::BenchOptions o;
      o.shapes = {{28672, 8192}, {8192, 28672}};
      o.ms = {1, 16, 128, 1024};
      o.dt = ActDtype::F16;
      print_table(cuda::run_gemm_bench(o), "fp16, default plan");
    }
    if (variants) {
      // Tuning choices on the decode sizes: depth and K/16 rows per step.
      for (int depth : {4, 8})
        for (int rps : {1, 2}) {
          cuda::BenchOptions o;
          o.shapes = {{28672, 8192}, {8192, 28672}, {10240, 8192}, {8192, 8192}, {4096, 4096}};
          o.ms = {1, 16};
          o.tuning.depth = depth;
          o.tuning.rows_per_step = rps;
          o.cublas = false;
          o.iters = 20;
          print_table(cuda::run_gemm_bench(o), ("variant depth=" + std::to_string(depth) + " k16/step=" + std::to_string(rps)).c_str());
        }
      // The streaming kernel against the tiled one around kTileMinM and up.
      for (int kernel : {1, 2, 3}) {
        if (kernel == 3 && !cuda::fast_gemm_has_wgmma()) continue;
        cuda::BenchOptions o;
        o.shapes = {{28672, 8192}, {8192, 28672}, {10240, 8192}, {4096, 4096}};
        o.ms = {1, 16, 32, 48, 64, 128, 256};
        if (kernel == 2) o.ms = {16, 32, 48, 64, 128, 256};
        o.tuning.kernel = kernel;
        o.dense = false;
        o.iters = 10;
        print_table(cuda::run_gemm_bench(o), kernel == 1 ? "streaming kernel" : kernel == 2 ? "tiled kernel" : "wgmma kernel");
      }
      for (int depth : {4, 5}) {
        if (!cuda::fast_gemm_has_wgmma()) break;
        cuda::BenchOptions o;
        o.shapes = {{28672, 8192}, {8192, 28672}};
        o.ms = {64, 128, 256, 1024};
        o.tuning.kernel = 3;
        o.tuning.depth = depth;
        o.dense = false;
        o.iters = 10;
        print_table(cuda::run_gemm_bench(o), ("wgmma kernel depth=" + std::to_string(depth)).c_str());
      }
      // The fused kernel where the dense route would be taken.
      cuda::BenchOptions o;
      o.shapes = {{28672, 8192}, {8192, 8192}};
      o.ms = {128, 256, 1024};
      o.dense = false;
      o.iters = 10;
      print_table(cuda::run_gemm_bench(o), "fused kernel only (no dense route)");
    }
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
  return g_fail ? 1 : 0;
}
