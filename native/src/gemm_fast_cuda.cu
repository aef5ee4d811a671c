// The tensor-core Marlin FP4 GEMM: Y[M, N] = X[M, K] @ W^T, float32 out, read straight from the
// converted tensors (FORMAT.md sections 2-4). The simple kernel of gemm_cuda.cu stays the
// reference it is tested against.
//
// The layout rule this kernel stands on, once: in the packed weight I32 [Kp/16, 2·Np], the 128
// words of one K/16 row and one 64-column chunk c are 32 runs of 4 words, and run t (16 bytes,
// words 4t..4t+3) is exactly what lane t of a warp needs for the mma.sync m16n8k16 B fragments of
// that 16x64 tile: word j covers the 16-column block j, lane t = 4·g + q owns columns
// 16j + g and 16j + g + 8 and rows 2q, 2q+1, 2q+8, 2q+9, and nibble i of the word sits at column
// 16j + g + 8·((i>>1)&1), row 2q + 8·(i&1) + (i>>2) (gemm_layout.h: marlin_nibble_source). So
// nibbles i and i+4 (bits 4i.. and 16+4i..) are one B register (rows k, k+1 of one column): a
// shift and two masks turn them into a half2 / bfloat162 pair. The processed scales of that tile
// row are 64 bytes (v2: row r at r·Np + 64c; v1: row pair r/2 at (r/2)·2Np + 128c, then 8·(r%2)
// inside each 16-byte block), and lane t reads the 8 bytes at 8·g, which hold its columns
// g + 8e' for e' = 0,2,1,3,4,6,5,7 (the 8x8 transpose and the reorder by 4 of section 3).
//
// Arithmetic (exact): an E2M1 code placed in the exponent/mantissa bits gives e2m1·2^-14
// (float16) or e2m1·2^-126 (bfloat16); the scale byte B placed at bit 7 (float16) is v·2^7, and at
// bit 4 (bfloat16) is v·2^-105, brought to v·2^119 by two exact multiplications by 2^112. Either
// way the B operand is e2m1·v·2^-7, exact in the activation dtype, and the fp32 accumulator is
// multiplied once by 128·(global value) at the end.
//
// Work split: a block of W warps owns one 64-column chunk, a 16·MT-row tile of M and a range of
// K/16 rows; its warps take the rows in turn, each streaming its 16-byte B runs (and the A
// fragments) P steps ahead in registers, with no shared memory in the main loop. The W partial
// sums meet in shared memory; when K is split across blocks (so that every SM has work at small
// N), they are added atomically into a zeroed y.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "gemm_fast_cuda.h"
#include "gemm_layout.h"
#include "transforms_cpu.h"
#include "transforms_cuda.h"

namespace mfp4 {
namespace cuda {
namespace {

void check(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();
  if (e == cudaErrorMemoryAllocation) throw CudaError("CUDA out of memory " + what);
  throw CudaError("CUDA error: " + std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ") while " + what);
}

struct Params {
  const uint16_t* x;
  const uint4* w;
  const uint8_t* s;
  float* y;
  int m, k, n, np;
  int rows;            // K/16 rows that hold real input features
  int nchunks;         // Np / 64
  int ksplit, rows_per_split, mblocks;
  int v1;
  float gmul;          // 128 · global value
};

// 16 bytes that are read once: keep them out of L1.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint2 ld_u2(const uint8_t* p) { return __ldg(reinterpret_cast<const uint2*>(p)); }

// Nibbles p and p+4 of a packed word as a pair of E2M1 values times 2^-14 (float16) or 2^-126
// (bfloat16): sign to bit 15, the three magnitude bits to the exponent's low bits and the
// mantissa's top bit.
template <bool BF16, int P>
__device__ __forceinline__ uint32_t dequant_pair(uint32_t w) {
  const uint32_t v = P == 3 ? w : w << (12 - 4 * P);
  if constexpr (BF16) return (v & 0x80008000u) | ((v >> 6) & 0x01C001C0u);
  else return (v & 0x80008000u) | ((v >> 3) & 0x0E000E00u);
}

__device__ __forceinline__ uint32_t mul2(uint32_t a, uint32_t b, bool bf16) {
  uint32_t d;
  if (bf16) asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
  else asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// Four scale bytes (b0..b3, columns of 16-col blocks j, j+1: (j,h0) (j+1,h0) (j,h1) (j+1,h1)) as
// two pairs: lo = (b0, b2) = block j's two 8-column tiles, hi = (b1, b3) = block j+1's.
template <bool BF16>
__device__ __forceinline__ void scale_pairs(uint32_t sw, uint32_t& lo, uint32_t& hi) {
  if constexpr (BF16) {
    const uint32_t two112 = 0x77807780u;  // bfloat16 2^112, twice
    lo = mul2(mul2((sw << 4) & 0x0FF00FF0u, two112, true), two112, true);
    hi = mul2(mul2((sw >> 4) & 0x0FF00FF0u, two112, true), two112, true);
  } else {
    lo = (sw << 7) & 0x7F807F80u;
    hi = (sw >> 1) & 0x7F807F80u;
  }
}

template <bool BF16>
__device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  if constexpr (BF16)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int MT>
struct Stage {
  uint4 w;
  uint2 s;
  uint32_t a[MT][4];
};

// One 16-column block j of one step: dequantize, scale, multiply into the two 8-column tiles.
template <bool BF16, int MT>
__device__ __forceinline__ void block_mma(float (&acc)[MT][8][4], const Stage<MT>& st, uint32_t word, int j, uint32_t s_pair) {
  const uint32_t s0 = __byte_perm(s_pair, 0, 0x1010), s1 = __byte_perm(s_pair, 0, 0x3232);
  const uint32_t b00 = mul2(dequant_pair<BF16, 0>(word), s0, BF16), b01 = mul2(dequant_pair<BF16, 1>(word), s0, BF16);
  const uint32_t b10 = mul2(dequant_pair<BF16, 2>(word), s1, BF16), b11 = mul2(dequant_pair<BF16, 3>(word), s1, BF16);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    mma<BF16>(acc[mt][2 * j], st.a[mt], b00, b01);
    mma<BF16>(acc[mt][2 * j + 1], st.a[mt], b10, b11);
  }
}

template <bool BF16, int MT, int W, int P, int MINB>
__global__ void __launch_bounds__(W * 32, MINB) marlin_fast_kernel(const Params p) {
  extern __shared__ float red[];  // [W][MT*32][32] partial sums
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  int b = blockIdx.x;
  const int mb = b % p.mblocks;
  b /= p.mblocks;
  const int ks = b % p.ksplit, c = b / p.ksplit;
  const int r0 = ks * p.rows_per_split, r1 = min(p.rows, r0 + p.rows_per_split);
  const int first = r0 + warp;
  const int nsteps = first < r1 ? (r1 - first + W - 1) / W : 0;

  // This lane's two rows of each 16-row tile, as 32-bit words (two k each).
  const uint32_t* xrow[MT][2];
  bool ok[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = mb * 16 * MT + mt * 16 + g + 8 * h;
      ok[mt][h] = row < p.m;
      xrow[mt][h] = reinterpret_cast<const uint32_t*>(p.x) + (size_t)(ok[mt][h] ? row : 0) * (p.k / 2);
    }

  auto load = [&](int i, Stage<MT>& st) {
    const int r = first + i * W;
    st.w = ld_stream(p.w + ((size_t)r * p.nchunks + c) * 32 + lane);
    const uint8_t* sp = p.v1 ? p.s + (size_t)(r >> 1) * 2 * p.np + 128 * c + 16 * g + 8 * (r & 1)
                             : p.s + (size_t)r * p.np + 64 * c + 8 * g;
    st.s = ld_u2(sp);
    const int kw = r * 8 + q;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      st.a[mt][0] = ok[mt][0] ? __ldg(xrow[mt][0] + kw) : 0u;
      st.a[mt][1] = ok[mt][1] ? __ldg(xrow[mt][1] + kw) : 0u;
      st.a[mt][2] = ok[mt][0] ? __ldg(xrow[mt][0] + kw + 4) : 0u;
      st.a[mt][3] = ok[mt][1] ? __ldg(xrow[mt][1] + kw + 4) : 0u;
    }
  };

  float acc[MT][8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

  Stage<MT> buf[P];
#pragma unroll
  for (int u = 0; u < P; ++u)
    if (u < nsteps) load(u, buf[u]);
  for (int base = 0; base < nsteps; base += P) {
#pragma unroll
    for (int u = 0; u < P; ++u) {
      if (base + u < nsteps) {
        const Stage<MT> cur = buf[u];
        if (base + u + P < nsteps) load(base + u + P, buf[u]);
        uint32_t s01, s23, s45, s67;
        scale_pairs<BF16>(cur.s.x, s01, s23);
        scale_pairs<BF16>(cur.s.y, s45, s67);
        block_mma<BF16, MT>(acc, cur, cur.w.x, 0, s01);
        block_mma<BF16, MT>(acc, cur, cur.w.y, 1, s23);
        block_mma<BF16, MT>(acc, cur, cur.w.z, 2, s45);
        block_mma<BF16, MT>(acc, cur, cur.w.w, 3, s67);
      }
    }
  }

  // Partial sums of the W warps meet in shared memory; every thread then sums some elements.
  constexpr int kElems = MT * 32;  // accumulator registers per lane
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) red[((warp * kElems) + (mt * 8 + nt) * 4 + i) * 32 + lane] = acc[mt][nt][i];
  __syncthreads();
  for (int e = threadIdx.x; e < kElems * 32; e += W * 32) {
    float v = 0.0f;
#pragma unroll
    for (int ww = 0; ww < W; ++ww) v += red[ww * kElems * 32 + e];
    const int reg = e / 32, ln = e % 32;
    const int mt = reg / 32, nt = (reg / 4) % 8, i = reg % 4;
    const int row = mb * 16 * MT + mt * 16 + (ln >> 2) + 8 * (i >> 1);
    const int col = 64 * c + 8 * nt + 2 * (ln & 3) + (i & 1);
    if (row >= p.m || col >= p.n) continue;
    float* out = p.y + (size_t)row * p.n + col;
    if (p.ksplit > 1) atomicAdd(out, v * p.gmul);
    else *out = v * p.gmul;
  }
}

struct Config {
  int mt, warps;
  size_t smem;
  const void* fn;
  void (*launch)(const Params&, int blocks, size_t smem, cudaStream_t);
};

template <bool BF16, int MT, int W, int P, int MINB>
Config config() {
  Config c;
  c.mt = MT;
  c.warps = W;
  c.smem = (size_t)W * MT * 32 * 32 * sizeof(float);
  c.fn = reinterpret_cast<const void*>(&marlin_fast_kernel<BF16, MT, W, P, MINB>);
  c.launch = [](const Params& p, int blocks, size_t smem, cudaStream_t s) {
    marlin_fast_kernel<BF16, MT, W, P, MINB><<<blocks, W * 32, smem, s>>>(p);
  };
  return c;
}

Config pick_config(ActDtype dt, int mt) {
  const bool bf16 = dt == ActDtype::BF16;
  if (mt == 1) return bf16 ? config<true, 1, 8, 6, 2>() : config<false, 1, 8, 6, 2>();
  if (mt == 2) return bf16 ? config<true, 2, 8, 4, 1>() : config<false, 2, 8, 4, 1>();
  return bf16 ? config<true, 4, 4, 2, 1>() : config<false, 4, 4, 2, 1>();
}

struct Plan {
  Config cfg;
  Params p;
  int blocks = 0;
};

Plan make_plan(const FastGemmDevice& a, const FastGemmTuning& t) {
  MarlinGemmArgs shape;
  shape.m = a.m;
  shape.k = a.k;
  shape.n = a.n;
  shape.np = a.np;
  shape.kp = a.kp;
  shape.layout = a.layout;
  check_marlin_gemm(shape);
  if (a.m > (1ll << 30) || a.np > (1ll << 30) || a.kp > (1ll << 30)) throw InvalidInput("shape too large for the fast GEMM");
  int mt = t.m_tiles;
  if (mt == 0) mt = a.m <= 16 ? 1 : a.m <= 32 ? 2 : 4;
  if (mt != 1 && mt != 2 && mt != 4) throw InvalidInput("m_tiles must be 1, 2 or 4");
  Plan pl;
  pl.cfg = pick_config(a.dt, mt);
  Params& p = pl.p;
  p.x = a.x;
  p.w = reinterpret_cast<const uint4*>(a.weight);
  p.s = a.scales;
  p.y = a.y;
  p.m = (int)a.m;
  p.k = (int)a.k;
  p.n = (int)a.n;
  p.np = (int)a.np;
  p.rows = (int)(a.k / kGroup);
  p.nchunks = (int)(a.np / kTileN);
  p.mblocks = (int)((a.m + 16 * mt - 1) / (16 * mt));
  p.v1 = a.layout == Layout::V1;
  p.gmul = 128.0f * marlin_global_value(a.global_bits, a.layout, a.dt);
  int ksplit = t.ksplit;
  if (ksplit <= 0) {
    // Enough blocks for about four full waves, each warp keeping at least 8 K/16 rows.
    int dev = 0, sms = 0, per_sm = 0;
    check(cudaGetDevice(&dev), "reading the current device");
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "reading the SM count");
    check(cudaFuncSetAttribute(pl.cfg.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl.cfg.smem), "raising the GEMM's shared memory");
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, pl.cfg.fn, pl.cfg.warps * 32, pl.cfg.smem), "reading the GEMM's occupancy");
    const int64_t tiles = (int64_t)p.nchunks * p.mblocks, want = 4ll * sms * std::max(per_sm, 1);
    const int64_t most = std::max<int64_t>(1, p.rows / (8 * pl.cfg.warps));
    ksplit = (int)std::min<int64_t>(most, std::max<int64_t>(1, (want + tiles - 1) / tiles));
  }
  ksplit = std::max(1, std::min(ksplit, p.rows));
  p.rows_per_split = (p.rows + ksplit - 1) / ksplit;
  p.ksplit = (p.rows + p.rows_per_split - 1) / p.rows_per_split;
  const int64_t blocks = (int64_t)p.nchunks * p.ksplit * p.mblocks;
  if (blocks > 0x7fffffffll) throw InvalidInput("shape too large for the fast GEMM");
  pl.blocks = (int)blocks;
  return pl;
}

}  // namespace

std::string describe_marlin_fast(const FastGemmDevice& a, const FastGemmTuning& t) {
  const Plan pl = make_plan(a, t);
  return "m_tiles=" + std::to_string(pl.cfg.mt) + " warps=" + std::to_string(pl.cfg.warps) + " ksplit=" +
         std::to_string(pl.p.ksplit) + " blocks=" + std::to_string(pl.blocks);
}

void launch_marlin_fast(const FastGemmDevice& a, void* stream, const FastGemmTuning& t) {
  const Plan pl = make_plan(a, t);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  check(cudaFuncSetAttribute(pl.cfg.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl.cfg.smem), "raising the GEMM's shared memory");
  if (pl.p.ksplit > 1) check(cudaMemsetAsync(a.y, 0, (size_t)(a.m * a.n) * sizeof(float), s), "zeroing the GEMM's output");
  pl.cfg.launch(pl.p, pl.blocks, pl.cfg.smem, s);
  check(cudaGetLastError(), "launching the fast Marlin GEMM");
}

void gemm_marlin_fast(const MarlinGemmArgs& a, const FastGemmTuning& tuning) {
  check_marlin_gemm(a);
  std::string why;
  if (!cuda_available(why)) throw CudaError("CUDA unavailable: " + why);
  DeviceInfo d;
  device_info(d);
  check(cudaSetDevice(d.ordinal), "selecting CUDA device " + std::to_string(d.ordinal));
  const int64_t rows = a.kp / kGroup;
  const size_t xb = (size_t)(a.m * a.k) * 2, wb = (size_t)(rows * 2 * a.np) * 4, sb = (size_t)(rows * a.np), yb = (size_t)(a.m * a.n) * 4;
  char* buf = nullptr;
  // One allocation: x, weight (16-byte aligned), scales, y.
  const size_t ox = 0, ow = (xb + 255) / 256 * 256, os = ow + (wb + 255) / 256 * 256, oy = os + (sb + 255) / 256 * 256;
  check(cudaMalloc(&buf, oy + yb), "allocating " + std::to_string((oy + yb) >> 20) + " MB for the fast GEMM");
  struct Free {
    char* p;
    ~Free() { cudaFree(p); }
  } hold{buf};
  check(cudaMemcpy(buf + ox, a.x, xb, cudaMemcpyHostToDevice), "copying activations to the device");
  check(cudaMemcpy(buf + ow, a.weight, wb, cudaMemcpyHostToDevice), "copying the packed weight to the device");
  check(cudaMemcpy(buf + os, a.scales, sb, cudaMemcpyHostToDevice), "copying the processed scales to the device");
  FastGemmDevice d2;
  d2.x = reinterpret_cast<const uint16_t*>(buf + ox);
  d2.m = a.m;
  d2.k = a.k;
  d2.n = a.n;
  d2.np = a.np;
  d2.kp = a.kp;
  d2.layout = a.layout;
  d2.dt = a.dt;
  d2.weight = reinterpret_cast<const uint32_t*>(buf + ow);
  d2.scales = reinterpret_cast<const uint8_t*>(buf + os);
  d2.global_bits = a.global_bits;
  d2.y = reinterpret_cast<float*>(buf + oy);
  launch_marlin_fast(d2, nullptr, tuning);
  check(cudaMemcpy(a.y, buf + oy, yb, cudaMemcpyDeviceToHost), "running the fast Marlin GEMM");
}

}  // namespace cuda
}  // namespace mfp4
