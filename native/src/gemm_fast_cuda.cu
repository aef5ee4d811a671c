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
// Work split (persistent, stream-K): blockIdx.y picks a 16·MT-row tile of M; the warps of a
// one-wave grid share all (64-column chunk, K/16 row) steps evenly, each walking one contiguous
// range chunk-major (a team of G warps reads G adjacent chunks of a row side by side), streaming
// its 16-byte B runs and A fragments P steps ahead in registers, with no shared memory. Whenever
// a warp's chunk changes it adds its partial tile into y with fp32 atomics (y is zeroed first),
// so every SM has work at any N and the tail is at most one step per warp.
//
// Status (bench/notes/gemm.md): about 1.3x cuBLAS bf16 at M <= 16 on the large shapes, far behind
// it from M = 32 up; the issue-14 targets are not met yet.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "cuda_check.cuh"
#include "gemm_fast_cuda.h"
#include "gemm_layout.h"
#include "transforms_cpu.h"
#include "transforms_cuda.h"

namespace mfp4 {
namespace cuda {
namespace {

struct Params {
  const uint16_t* x;
  const uint4* w;
  const uint8_t* s;
  float* y;
  int m, k, n, np;
  int rows;            // K/16 rows that hold real input features
  int nchunks;         // Np / 64
  int v1;
  int group;           // adjacent chunks read side by side by a team of warps (divides nchunks and W)
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

// Adds a warp's partial 16·MT x 64 tile of chunk c into y (atomically: other warps own other
// K ranges of the same chunk) and clears it.
template <int MT>
__device__ __forceinline__ void flush(float (&acc)[MT][8][4], const Params& p, int mb, int c, int lane) {
  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = (mb * MT + mt) * 16 + g + 8 * h;
      if (row < p.m) {
        float* out = p.y + (size_t)row * p.n;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          const int col = 64 * c + 8 * nt + 2 * q;
          if (col < p.n) atomicAdd(out + col, acc[mt][nt][2 * h] * p.gmul);
          if (col + 1 < p.n) atomicAdd(out + col + 1, acc[mt][nt][2 * h + 1] * p.gmul);
        }
      }
    }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
}

// Persistent, stream-K: blockIdx.y picks the 16·MT-row tile of M; the warps of the x-slice share
// the (chunk, K/16 row) steps of the whole weight evenly, chunk-major, each walking a contiguous
// range and flushing its partial tile whenever its chunk changes.
template <bool BF16, int MT, int W, int P, int MINB>
__global__ void __launch_bounds__(W * 32, MINB) marlin_fast_kernel(const Params p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int mb = blockIdx.y;
  // Teams of `group` warps of one block walk (group of chunks, row) steps; warp wg of a team
  // takes chunk group·G + wg, so a team reads G·512 contiguous bytes of each row.
  const int G = p.group, wg = warp % G;
  const int64_t total = (int64_t)(p.nchunks / G) * p.rows;
  const int64_t gw = ((int64_t)blockIdx.x * W + warp) / G, nw = (int64_t)gridDim.x * W / G;
  const int64_t s0 = total * gw / nw, s1 = total * (gw + 1) / nw;
  const int nsteps = (int)(s1 - s0);
  if (nsteps <= 0) return;

  // This lane's two rows of each 16-row tile, as 32-bit words (two k each).
  const uint32_t* xrow[MT][2];
  bool ok[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = (mb * MT + mt) * 16 + g + 8 * h;
      ok[mt][h] = row < p.m;
      xrow[mt][h] = reinterpret_cast<const uint32_t*>(p.x) + (size_t)(ok[mt][h] ? row : 0) * (p.k / 2);
    }

  // The load cursor: chunk lc, row lr of the next step to fetch.
  int lc = (int)(s0 / p.rows) * G + wg, lr = (int)(s0 % p.rows);
  auto load = [&](Stage<MT>& st) {
    st.w = ld_stream(p.w + ((size_t)lr * p.nchunks + lc) * 32 + lane);
    const uint8_t* sp = p.v1 ? p.s + (size_t)(lr >> 1) * 2 * p.np + 128 * lc + 16 * g + 8 * (lr & 1)
                             : p.s + (size_t)lr * p.np + 64 * lc + 8 * g;
    st.s = ld_u2(sp);
    const int kw = lr * 8 + q;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      st.a[mt][0] = ok[mt][0] ? __ldg(xrow[mt][0] + kw) : 0u;
      st.a[mt][1] = ok[mt][1] ? __ldg(xrow[mt][1] + kw) : 0u;
      st.a[mt][2] = ok[mt][0] ? __ldg(xrow[mt][0] + kw + 4) : 0u;
      st.a[mt][3] = ok[mt][1] ? __ldg(xrow[mt][1] + kw + 4) : 0u;
    }
    if (++lr == p.rows) {
      lr = 0;
      lc += G;
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
    if (u < nsteps) load(buf[u]);
  // Segments: the steps of one chunk. The ring buf holds the next P steps in order buf[0..P-1];
  // the flush sits outside the unrolled loop, and a segment that ends inside a round of P
  // rotates the ring so that its head is buf[0] again.
  int cur_c = (int)(s0 / p.rows) * G + wg, first_row = (int)(s0 % p.rows);
  for (int done = 0; done < nsteps;) {
    const int seg = min(nsteps - done, p.rows - first_row);
    for (int i = 0; i < seg; i += P) {
#pragma unroll
      for (int u = 0; u < P; ++u) {
        if (i + u < seg) {
          const Stage<MT> cur = buf[u];
          if (done + i + u + P < nsteps) load(buf[u]);
          uint32_t sj0, sj1, sj2, sj3;
          scale_pairs<BF16>(cur.s.x, sj0, sj1);
          scale_pairs<BF16>(cur.s.y, sj2, sj3);
          block_mma<BF16, MT>(acc, cur, cur.w.x, 0, sj0);
          block_mma<BF16, MT>(acc, cur, cur.w.y, 1, sj1);
          block_mma<BF16, MT>(acc, cur, cur.w.z, 2, sj2);
          block_mma<BF16, MT>(acc, cur, cur.w.w, 3, sj3);
        }
      }
    }
    flush<MT>(acc, p, mb, cur_c, lane);
    cur_c += G;
    first_row = 0;
    done += seg;
    for (int t = seg % P; t > 0 && done < nsteps; --t) {
      const Stage<MT> head = buf[0];
#pragma unroll
      for (int u = 0; u + 1 < P; ++u) buf[u] = buf[u + 1];
      buf[P - 1] = head;
    }
  }
}

// The dense weight W'[n, k] = e2m1 · v · 2^-7 in the activation dtype (exact), [n, k] row-major,
// for products that are better done by a dense GEMM (multiply its result by 128 · global): one
// warp per (K/16 row, chunk) tile, lane t writing exactly its B-fragment registers.
template <bool BF16>
__global__ void __launch_bounds__(256) marlin_dequant_kernel(const Params p, uint4* __restrict__ dense) {
  __shared__ uint32_t tile[64][64 + 4];  // [n][k/2] of 64 columns x 128 k, padded against bank conflicts
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int row_groups = (p.rows + 7) / 8;
  const int64_t units = (int64_t)row_groups * p.nchunks;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const int c = (int)(u % p.nchunks), r0 = (int)(u / p.nchunks) * 8, r = r0 + warp;
    if (r < p.rows) {
      const uint4 w = ld_stream(p.w + ((size_t)r * p.nchunks + c) * 32 + lane);
      const uint8_t* sp = p.v1 ? p.s + (size_t)(r >> 1) * 2 * p.np + 128 * c + 16 * g + 8 * (r & 1) : p.s + (size_t)r * p.np + 64 * c + 8 * g;
      const uint2 sv = ld_u2(sp);
      uint32_t sj[4];
      scale_pairs<BF16>(sv.x, sj[0], sj[1]);
      scale_pairs<BF16>(sv.y, sj[2], sj[3]);
      const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t s0 = __byte_perm(sj[j], 0, 0x1010), s1 = __byte_perm(sj[j], 0, 0x3232);
        const int n = 16 * j + g, kw = warp * 8 + q;
        tile[n][kw] = mul2(dequant_pair<BF16, 0>(words[j]), s0, BF16);
        tile[n][kw + 4] = mul2(dequant_pair<BF16, 1>(words[j]), s0, BF16);
        tile[n + 8][kw] = mul2(dequant_pair<BF16, 2>(words[j]), s1, BF16);
        tile[n + 8][kw + 4] = mul2(dequant_pair<BF16, 3>(words[j]), s1, BF16);
      }
    }
    __syncthreads();
    // 64 rows of 16 uint4 (128 k); only real rows and k.
    for (int i = threadIdx.x; i < 64 * 16; i += 256) {
      const int n = i / 16, v = i % 16;
      const int64_t col = 64ll * c + n, k8 = (int64_t)r0 * 2 + v;  // in units of 8 k
      if (col < p.n && k8 * 8 < p.k) {
        const uint32_t* t = &tile[n][v * 4];
        dense[(col * p.k) / 8 + k8] = make_uint4(t[0], t[1], t[2], t[3]);
      }
    }
    __syncthreads();
  }
}

struct Config {
  int mt, warps;
  const void* fn;
  void (*launch)(const Params&, dim3 grid, cudaStream_t);
  int per_sm = 0;  // resident blocks per SM (filled once)
};

template <bool BF16, int MT, int W, int P, int MINB>
Config& config() {
  static Config c = [] {
    Config k;
    k.mt = MT;
    k.warps = W;
    k.fn = reinterpret_cast<const void*>(&marlin_fast_kernel<BF16, MT, W, P, MINB>);
    k.launch = [](const Params& p, dim3 grid, cudaStream_t s) { marlin_fast_kernel<BF16, MT, W, P, MINB><<<grid, W * 32, 0, s>>>(p); };
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&k.per_sm, k.fn, W * 32, 0), "reading the GEMM's occupancy");
    k.per_sm = std::max(k.per_sm, 1);
    return k;
  }();
  return c;
}

Config& pick_config(ActDtype dt, int mt, int depth) {
  const bool bf16 = dt == ActDtype::BF16;
  if (mt == 1 && depth == 4) return bf16 ? config<true, 1, 8, 4, 2>() : config<false, 1, 8, 4, 2>();
  if (mt == 1 && depth == 10) return bf16 ? config<true, 1, 4, 10, 3>() : config<false, 1, 4, 10, 3>();
  if (mt == 1) return bf16 ? config<true, 1, 8, 6, 2>() : config<false, 1, 8, 6, 2>();
  if (mt == 2) return bf16 ? config<true, 2, 8, 4, 1>() : config<false, 2, 8, 4, 1>();
  return bf16 ? config<true, 4, 4, 2, 1>() : config<false, 4, 4, 2, 1>();
}

int sm_count() {
  static int sms = [] {
    int dev = 0, n = 0;
    check(cudaGetDevice(&dev), "reading the current device");
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "reading the SM count");
    return n;
  }();
  return sms;
}

struct Plan {
  Config* cfg = nullptr;
  Params p;
  dim3 grid;
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
  pl.cfg = &pick_config(a.dt, mt, t.depth);
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
  p.v1 = a.layout == Layout::V1;
  p.gmul = 128.0f * marlin_global_value(a.global_bits, a.layout, a.dt);
  p.group = 1;
  const int want_group = t.group > 0 ? t.group : pl.cfg->warps;
  for (int gsz = pl.cfg->warps; gsz > 1; gsz /= 2)
    if (gsz <= want_group && p.nchunks % gsz == 0) {
      p.group = gsz;
      break;
    }
  const int64_t mblocks = (a.m + 16 * mt - 1) / (16 * mt);
  if (mblocks > 65535) throw InvalidInput("M too large for the fast GEMM");
  // One wave of resident blocks, shared among the row tiles of M (at least one block each).
  const int64_t slots = (int64_t)sm_count() * pl.cfg->per_sm * std::max(1, t.waves);
  const int64_t total = (int64_t)(p.nchunks / p.group) * p.rows;  // team steps
  int64_t bx = std::max<int64_t>(1, slots / mblocks);
  bx = std::min<int64_t>(bx, (total * p.group + pl.cfg->warps - 1) / pl.cfg->warps);
  pl.grid = dim3((unsigned)bx, (unsigned)mblocks);
  return pl;
}

}  // namespace

std::string describe_marlin_fast(const FastGemmDevice& a, const FastGemmTuning& t) {
  const Plan pl = make_plan(a, t);
  return "m_tiles=" + std::to_string(pl.cfg->mt) + " warps=" + std::to_string(pl.cfg->warps) + " group=" +
         std::to_string(pl.p.group) + " grid=" +
         std::to_string(pl.grid.x) + "x" + std::to_string(pl.grid.y);
}

void launch_marlin_fast(const FastGemmDevice& a, void* stream, const FastGemmTuning& t) {
  const Plan pl = make_plan(a, t);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  check(cudaMemsetAsync(a.y, 0, (size_t)(a.m * a.n) * sizeof(float), s), "zeroing the GEMM's output");
  pl.cfg->launch(pl.p, pl.grid, s);
  check(cudaGetLastError(), "launching the fast Marlin GEMM");
}

float launch_marlin_dequant(const FastGemmDevice& a, uint16_t* dense, void* stream) {
  const Plan pl = make_plan(a, {});
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int blocks = sm_count() * 8;
  if (a.dt == ActDtype::BF16) marlin_dequant_kernel<true><<<blocks, 256, 0, s>>>(pl.p, reinterpret_cast<uint4*>(dense));
  else marlin_dequant_kernel<false><<<blocks, 256, 0, s>>>(pl.p, reinterpret_cast<uint4*>(dense));
  check(cudaGetLastError(), "launching the Marlin dequantization");
  return pl.p.gmul;
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
