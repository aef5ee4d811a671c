// The tensor-core Marlin FP4 GEMM: Y[M, N] = X[M, K] @ W^T, float32 out, read straight from the
// converted tensors (FORMAT.md sections 2-4). The simple kernel of gemm_cuda.cu stays the
// reference it is tested against.
//
// The layout rule this kernel stands on, once: in the packed weight I32 [Kp/16, 2·Np], the 128
// words of one K/16 row and one 64-column chunk c are 32 runs of 4 words, and run t (16 bytes,
// words 4t..4t+3) belongs to lane t = 4·g + q: word j covers the 16-column block j, and nibble i
// of the word sits at column 16j + g + 8·((i>>1)&1), row 2q + 8·(i&1) + (i>>2) (gemm_layout.h:
// marlin_nibble_source). Read with the weight as the mma's A operand (Y^T = W · X^T), word j is
// exactly lane t's A fragment of the m16n8k16 tile "16 weight columns of block j x 16 k":
// nibbles 0/4 -> a0 (column g, k 2q, 2q+1), 2/6 -> a1 (column g+8), 1/5 -> a2 (column g,
// k 2q+8, 2q+9), 3/7 -> a3. A shift and two masks turn nibbles p and p+4 into one half2 /
// bfloat162 register. The processed scales of that tile row are 64 bytes (v2: row r at
// r·Np + 64c; v1: row pair r/2 at (r/2)·2Np + 128c, then 8·(r%2) inside each 16-byte block), and
// lane t reads the 8 bytes at 8·g, which hold its columns g + 8e' for e' = 0,2,1,3,4,6,5,7 (the
// 8x8 transpose and the reorder by 4 of section 3). x^T is the B operand: lane t brings x[row g]
// at k 2q, 2q+1 and 2q+8, 2q+9, so one mma covers 8 rows of x (M <= 8 costs 4 mma per step).
//
// Arithmetic (exact): an E2M1 code placed in the exponent/mantissa bits gives e2m1·2^-14
// (float16) or e2m1·2^-126 (bfloat16); the scale byte B placed at bit 7 (float16) is v·2^7, and at
// bit 4 (bfloat16) is v·2^-105, brought to v·2^119 by two exact multiplications by 2^112. Either
// way the A operand is e2m1·v·2^-7, exact in the activation dtype, and the fp32 accumulator is
// multiplied once by 128·(global value) at the end.
//
// Work split (persistent, stream-K): blockIdx.y picks 8·MN8 rows of M; the warps of a one-wave
// grid share all (64-column chunk, K/16 row) steps evenly, each walking one contiguous range
// chunk-major, and add their partial tile into y with fp32 atomics (y is zeroed first, by the
// kernel itself where the launch can be cooperative: zero_y_and_arrive) whenever their chunk
// changes, so every SM has work at any N and the tail is at most one step per warp. Each lane
// copies its own 16 bytes of W, the first lanes the warp's scale bytes once, and 16-byte pieces
// of x (zero-filled past M), with cp.async into a per-warp ring of S steps in shared memory, and
// reads back its W and scales; x is read as B fragments with ldmatrix, so a __syncwarp after the
// wait (other lanes copied it) and one before the slot is refilled are all the synchronisation
// there is, and S steps of W per warp are in flight without costing registers. (x was 4-byte
// copies per lane before: at M = 16 the L1 was the bottleneck, bench/notes/gemm.md.) A step is
// two K/16 rows where a chunk's rows are even and two adjacent chunks where pick_config says so
// (less loop and address work per byte).
//
// Where it stands (bench/notes/gemm.md, ncu on the H200): at M <= 8 about 115 instructions per
// 512-byte (K/16 row, chunk) unit, 92 of them the dequantization; with 2 warps per scheduler
// (its registers) issue is 62% busy, the ALU pipe 57%, DRAM 61%, and warps rarely wait on memory
// (long scoreboard 2.5% of the stall samples): the dependency chains of the decode bound it. It
// reaches ~65% of the copy bandwidth at M = 1. Which kernel
// runs: this one up to M = 16; from kTileMinM the tiled mma.sync kernel of gemm_tile_cuda.cu and
// from kWgmmaMinM, on sm_90, the wgmma kernel of gemm_wgmma_cuda.cu, both sharing x among the
// warps of a block; from kDenseMinM the dense route, taken when the caller
// gives a scratch buffer: the weight dequantized into [N, K] (marlin_dequant_kernel) and
// cuBLAS's GEMM on it.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_check.cuh"
#include "cuda_device.cuh"
#include "gemm_cuda.h"
#include "gemm_fast_cuda.h"
#include "gemm_fast_device.cuh"
#include "gemm_tile_cuda.cuh"
#include "gemm_wgmma_cuda.cuh"
#include "gemm_layout.h"
#include "transforms_cpu.h"
#include "transforms_cuda.h"

namespace mfp4 {
namespace cuda {
namespace {

using namespace fastgemm;

template <int MN8, int U, int C>
struct RingSlot {  // one step (U rows of K/16, C adjacent chunks) of one warp
  uint4 w[U][C][32];  // per lane: its run
  uint2 s[U][C][8];   // per 8-column group g: its 8 scale bytes (the 4 lanes of quad g read them)
  // The 8·MN8 rows of x of each K/16 row, 32 bytes (16 k) each in two 16-byte halves, half h of
  // row r at 32r + 16·(h ^ (r >> 2 & 1)): copied 16 bytes per lane, read as mma B fragments with
  // ldmatrix, the swizzle keeping its 8 row reads on distinct banks. The C chunks share them.
  uint4 x[U][MN8 * 16];
};

// Byte offset of half h of x row r inside one K/16 row's block of a ring slot.
__device__ __forceinline__ int x_at(int r, int h) { return 32 * r + 16 * (h ^ ((r >> 2) & 1)); }

// Piece i of a lane's x copy (16 bytes; lane + 32i of a step's U · MN8 · 16): K/16 row u, x row
// r, half h.
template <int MN8>
struct XPiece {
  int u, r, h;
  __device__ __forceinline__ XPiece(int piece) : u(piece / (MN8 * 16)), r((piece >> 1) % (MN8 * 8)), h(piece & 1) {}
};

// The streaming kernel zeroes y itself where the launch is cooperative (p.zero_y): each block
// zeroes its share, then arrives on a grid barrier in the workspace (p.wsc[kWsBarrierWord]
// counts arrivals and wraps to zero at the last, which bumps the generation word after it), and
// a warp waits for the generation to move before its first atomic into y. The zeroing and the
// arrival overlap the first copies; the wait is over long before a warp's first flush. This
// replaces a cudaMemsetAsync before the launch, which cost ~2 us (bench/notes/gemm.md).
__device__ __forceinline__ void zero_y_and_arrive(const Params& p) {
  const int64_t total = (int64_t)p.m * p.n, nb = (int64_t)gridDim.x * gridDim.y, b = (int64_t)blockIdx.y * gridDim.x + blockIdx.x;
  for (int64_t i = total * b / nb + threadIdx.x, e = total * (b + 1) / nb; i < e; i += blockDim.x) p.y[i] = 0.0f;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicInc(&p.wsc[kWsBarrierWord], (unsigned)(nb - 1)) == (unsigned)(nb - 1)) {
      __threadfence();
      atomicAdd(&p.wsc[kWsBarrierWord + 1], 1u);
    }
  }
}

// The B fragments of one step's x (U K/16 rows of 8·MN8 x rows at xs, swizzled as x_at):
// xsrc is this lane's ldmatrix row address (see the kernels).
template <int MN8, int U>
__device__ __forceinline__ void load_x_frags(uint2 (&xb)[U][MN8], const uint8_t* xs, int xsrc) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const uint8_t* xu = xs + u * MN8 * 256;
    if constexpr (MN8 == 1) {
      ldmatrix_x2(xb[u][0].x, xb[u][0].y, xu + xsrc);
    } else {
#pragma unroll
      for (int t = 0; t < MN8; t += 2) ldmatrix_x4(xb[u][t].x, xb[u][t].y, xb[u][t + 1].x, xb[u][t + 1].y, xu + t * 256 + xsrc);
    }
  }
}

// One step's products: the U x C runs of weights (w) and their scales (sv) decoded into A
// fragments and multiplied into the C accumulator tiles.
template <bool BF16, int MN8, int U, int C>
__device__ __forceinline__ void step_mma(float (&acc)[C][MN8][4][4], const uint4 (&w)[U][C], const uint2 (&sv)[U][C], const uint2 (&xb)[U][MN8]) {
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int c = 0; c < C; ++c) {
      uint32_t sj[4];
      scale_pairs<BF16>(sv[u][c].x, sj[0], sj[1]);
      scale_pairs<BF16>(sv[u][c].y, sj[2], sj[3]);
      const uint32_t words[4] = {w[u][c].x, w[u][c].y, w[u][c].z, w[u][c].w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t sa = half_bcast<0>(sj[j]), sb = half_bcast<1>(sj[j]);
        uint32_t a[4];
        a[0] = mul2(dequant_pair<BF16, 0>(words[j]), sa, BF16);
        a[1] = mul2(dequant_pair<BF16, 2>(words[j]), sb, BF16);
        a[2] = mul2(dequant_pair<BF16, 1>(words[j]), sa, BF16);
        a[3] = mul2(dequant_pair<BF16, 3>(words[j]), sb, BF16);
#pragma unroll
        for (int t = 0; t < MN8; ++t) mma<BF16>(acc[c][t][j], a, xb[u][t].x, xb[u][t].y);
      }
    }
}

template <bool BF16, int MN8, int W, int S, int MINB, int U, int C>
__global__ void __launch_bounds__(W * 32, MINB) marlin_stream_kernel(const Params p) {
  extern __shared__ uint4 ring_smem[];
  using Slot = RingSlot<MN8, U, C>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int mb = blockIdx.y;
  // The barrier's generation before this block arrives (it cannot move before then).
  const unsigned gen0 = p.zero_y && lane == 0 ? ld_acquire(&p.wsc[kWsBarrierWord + 1]) : 0;
  bool y_ready = !p.zero_y;
  Slot* const ring = reinterpret_cast<Slot*>(ring_smem) + warp * S;
  // Steps of U rows and C chunks (U divides the rows of a chunk, C the chunks: the plan checks).
  const int urows = p.rows / U;
  const int64_t total = (int64_t)(p.nchunks / C) * urows;
  const int64_t gw = (int64_t)blockIdx.x * W + warp, nw = (int64_t)gridDim.x * W;
  const int64_t s0 = total * gw / nw, s1 = total * (gw + 1) / nw;
  const int nsteps = (int)(s1 - s0);

  // The fetch cursor: first chunk lc, row lr, and the global addresses of that step for this
  // lane, advanced by U rows at a time (64-bit multiplies only when the chunks change).
  int lc = (int)(s0 / urows) * C, lr = (int)(s0 % urows) * U;
  const uint4* wp;
  const uint8_t* sp;  // the scales of 8-column group lane & 7 (its copy's source, below)
  // x: XL 16-byte pieces per lane and step (the same place in every step's slot).
  constexpr int XN = U * MN8 * 16, XL = (XN + 31) / 32;
  const uint16_t* xp[XL];
  bool xok[XL];
  int xdst[XL];  // its byte offset in the slot's x
#pragma unroll
  for (int i = 0; i < XL; ++i) {
    const XPiece<MN8> x(lane + 32 * i);
    xdst[i] = x.u * MN8 * 256 + x_at(x.r, x.h);
  }
  const size_t wstep = (size_t)p.nchunks * 32;
  // The scales of row lr + u relative to row lr (lr even when U = 2): v1 keeps a row pair's
  // bytes 8 apart in one 16-byte block; the next chunk's are 64 (v2) or 128 (v1) bytes on.
  const int s_in = p.v1 ? 8 : p.np, s_chunk = p.v1 ? 128 : 64;
  // The scale bytes are copied once per warp, not once per lane: 8 bytes by each of the first
  // 8·U·C lanes, lane 8·(u·C + c) + g' bringing group g' of row lr + u, chunk lc + c. (Each
  // lane copying its own 8 bytes made 4 copies of each, and 4x the shared-memory wavefronts.)
  const int s_unit = lane >> 3, s_group = lane & 7;
  const bool s_mine = s_unit < U * C;
  const int s_off = s_mine ? (s_unit / C) * s_in + (s_unit % C) * s_chunk : 0;
  auto seek = [&] {
    wp = p.w + ((size_t)lr * p.nchunks + lc) * 32 + lane;
    sp = (p.v1 ? p.s + (size_t)(lr >> 1) * 2 * p.np + 128 * lc + 16 * s_group + 8 * (lr & 1) : p.s + (size_t)lr * p.np + 64 * lc + 8 * s_group) + s_off;
#pragma unroll
    for (int i = 0; i < XL; ++i) {
      const XPiece<MN8> x(lane + 32 * i);
      const int row = mb * MN8 * 8 + x.r;
      xok[i] = (XN % 32 == 0 || lane + 32 * i < XN) && row < p.m;
      xp[i] = p.x + (size_t)(xok[i] ? row : 0) * p.k + (lr + x.u) * 16 + 8 * x.h;
    }
  };
  auto fetch = [&](Slot* slot) {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int c = 0; c < C; ++c) cp_async16(&slot->w[u][c][lane], wp + u * wstep + c * 32);
    if (s_mine) cp_async8(&slot->s[0][0][0] + lane, sp);  // s[u][c][g'], flattened: lane
    // Rows past M zero-filled; a lane with no piece (U · MN8 = 1) copies nothing.
#pragma unroll
    for (int i = 0; i < XL; ++i)
      if (XN % 32 == 0 || lane + 32 * i < XN) cp_async16z(reinterpret_cast<uint8_t*>(slot->x) + xdst[i], xp[i], xok[i]);
    lr += U;
    if (lr == p.rows) {
      lr = 0;
      lc += C;
      seek();
    } else {
      wp += U * wstep;
      // One row: v1 moves 8 bytes inside a row pair, then on to the next pair; U = 2 rows
      // (lr even): the next pair (v1) or two rows (v2), 2·Np either way.
      sp += U == 2 ? 2 * p.np : p.v1 ? ((lr & 1) ? 8 : 2 * p.np - 8) : p.np;
#pragma unroll
      for (int i = 0; i < XL; ++i) xp[i] += 16 * U;
    }
  };

  if (nsteps > 0) seek();
  // One cp.async group per step, empty ones past the end, so that "step i has landed" is
  // always "at most S-1 groups pending".
#pragma unroll
  for (int u = 0; u < S; ++u) {
    if (u < nsteps) fetch(ring + u);
    cp_commit();
  }
  if (p.zero_y) zero_y_and_arrive(p);
  if (nsteps <= 0) return;

  float acc[C][MN8][4][4];
#pragma unroll
  for (int c = 0; c < C; ++c) clear_tile<MN8>(acc[c]);
  // Adds the partial tiles into y (after the barrier where the kernel zeroed y) and clears them.
  auto flush = [&](int c0) {
    if (!y_ready) {
      if (lane == 0)
        while (ld_acquire(&p.wsc[kWsBarrierWord + 1]) == gen0) {
        }
      __syncwarp();
      y_ready = true;
    }
#pragma unroll
    for (int c = 0; c < C; ++c) {
      add_tile<MN8>(acc[c], p, mb * MN8 * 8, c0 + c, lane);
      clear_tile<MN8>(acc[c]);
    }
  };
  int cc = (int)(s0 / urows) * C, cr = (int)(s0 % urows);  // the step being consumed
  Slot* slot = ring;
  // This lane's ldmatrix row address inside a K/16 row's x block: matrix lane >> 3 of a pair of
  // n8 tiles is (tile lane >> 4, half lane >> 3 & 1), its row lane & 7.
  const int xr = (MN8 == 1 ? 0 : 8 * (lane >> 4)) + (lane & 7), xsrc = x_at(xr, (lane >> 3) & 1);
#pragma unroll 1
  for (int i = 0; i < nsteps; ++i) {
    cp_wait<S - 1>();
    __syncwarp();  // x was copied by other lanes
    uint4 w[U][C];
    uint2 sv[U][C], xb[U][MN8];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int c = 0; c < C; ++c) {
        w[u][c] = slot->w[u][c][lane];
        sv[u][c] = slot->s[u][c][g];
      }
    load_x_frags<MN8, U>(xb, reinterpret_cast<const uint8_t*>(slot->x), xsrc);
    __syncwarp();  // every lane has read the slot before any refills it
    if (i + S < nsteps) fetch(slot);
    cp_commit();
    slot = slot + 1 == ring + S ? ring : slot + 1;
    step_mma<BF16, MN8, U, C>(acc, w, sv, xb);
    if (++cr == urows) {
      flush(cc);
      cr = 0;
      cc += C;
    }
  }
  if (cr != 0) flush(cc);
  cp_wait<0>();
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
        const uint32_t s0 = half_bcast<0>(sj[j]), s1 = half_bcast<1>(sj[j]);
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
  int mrows;              // rows of M per block row (blockIdx.y)
  int warps, depth;
  int rows_per_step = 1;  // K/16 rows per step (the rows of a chunk must be a multiple)
  int chunks_per_step = 1;  // adjacent chunks per step (the chunks must be a multiple)
  size_t smem = 0;        // dynamic shared memory per block
  const void* fn;
  void (*launch)(const Params&, dim3 grid, size_t smem, cudaStream_t);
  int per_sm = 0;         // resident blocks per SM (filled once)
};

template <bool BF16, int MN8, int W, int S, int MINB, int U, int C>
Config& config_stream() {
  static Config c = [] {
    Config k;
    k.mrows = 8 * MN8;
    k.warps = W;
    k.depth = S;
    k.rows_per_step = U;
    k.chunks_per_step = C;
    k.smem = sizeof(RingSlot<MN8, U, C>) * W * S;
    k.fn = reinterpret_cast<const void*>(&marlin_stream_kernel<BF16, MN8, W, S, MINB, U, C>);
    k.launch = [](const Params& p, dim3 grid, size_t smem, cudaStream_t s) {
      const void* fn = reinterpret_cast<const void*>(&marlin_stream_kernel<BF16, MN8, W, S, MINB, U, C>);
      void* args[] = {const_cast<Params*>(&p)};
      if (p.zero_y)
        check(cudaLaunchCooperativeKernel(fn, grid, dim3(W * 32), args, smem, s), "launching the streaming GEMM (cooperative)");
      else
        check(cudaLaunchKernel(fn, grid, dim3(W * 32), args, smem, s), "launching the streaming GEMM");
    };
    if (k.smem > 48 * 1024)
      check(cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)k.smem), "raising the GEMM's shared memory");
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&k.per_sm, k.fn, W * 32, k.smem), "reading the GEMM's occupancy");
    k.per_sm = std::max(k.per_sm, 1);
    return k;
  }();
  return c;
}

// The streaming kernel's config for MN8, S and C, with two K/16 rows per step or one.
template <int MN8, int S, int C>
Config& stream_config(bool bf16, bool two) {
  if (two) return bf16 ? config_stream<true, MN8, 4, S, 1, 2, C>() : config_stream<false, MN8, 4, S, 1, 2, C>();
  return bf16 ? config_stream<true, MN8, 4, S, 1, 1, C>() : config_stream<false, MN8, 4, S, 1, 1, C>();
}

// The instantiations: MN8 n8-tiles of M per warp (1, 2, 4, 8: M <= 8, 16, 32, more), S steps in
// flight (4 measured as good as 8 and 12 on the H200; 8 kept as a tuning choice for M <= 16;
// 3 for MN8 = 8, whose accumulators leave room for little else), two K/16 rows per step where
// the rows of a chunk are even, and two adjacent chunks per step (C = 2, S = 3) where the chunk
// count is even, at MN8 = 1 always and at MN8 = 2 where each warp has at least 128 (K/16 row,
// chunk) units: it halves the per-step work per weight byte and the copies of x, but doubles the
// accumulators a warp adds into y (H200, session 25, bench/notes/gemm.md: M = 1 on 28672x8192
// 50.1 -> 48.0 us; M = 16 59.5 -> 57.5 there, but 24 -> 26.5 on 8192x8192, where a warp has 62
// units). sms: the device's SM count.
Config& pick_config(ActDtype dt, int64_t m, int64_t rows, int64_t nchunks, int sms, const FastGemmTuning& t) {
  const bool bf16 = dt == ActDtype::BF16;
  const int mn8 = t.m_tiles ? t.m_tiles : m <= 8 ? 1 : m <= 16 ? 2 : m <= 32 ? 4 : 8;
  if (mn8 != 1 && mn8 != 2 && mn8 != 4 && mn8 != 8) throw InvalidInput("m_tiles must be 1, 2, 4 or 8");
  if (t.rows_per_step != 0 && t.rows_per_step != 1 && t.rows_per_step != 2) throw InvalidInput("rows_per_step must be 1 or 2");
  const bool two = t.rows_per_step == 2 ? true : t.rows_per_step == 1 ? false : rows % 2 == 0;
  if (two && rows % 2 != 0) throw InvalidInput("rows_per_step 2 needs an even number of K/16 rows");
  if (t.chunks_per_step != 0 && t.chunks_per_step != 1 && t.chunks_per_step != 2) throw InvalidInput("chunks_per_step must be 1 or 2");
  if (t.chunks_per_step == 2 && (mn8 > 2 || nchunks % 2 != 0 || (t.depth != 0 && t.depth != 3)))
    throw InvalidInput("chunks_per_step 2 needs m_tiles <= 2, an even number of 64-column chunks and depth 3");
  const bool deep = t.depth == 8 && mn8 <= 2;
  if (mn8 <= 2 && (t.chunks_per_step == 2 || (t.chunks_per_step == 0 && t.depth == 0 && nchunks % 2 == 0))) {
    Config& pair = mn8 == 1 ? stream_config<1, 3, 2>(bf16, two) : stream_config<2, 3, 2>(bf16, two);
    // Unforced at MN8 = 2, only where each of its resident warps has 128 (row, chunk) units.
    const int64_t warps = (int64_t)sms * pair.per_sm * pair.warps;
    if (t.chunks_per_step == 2 || mn8 == 1 || nchunks * rows >= 128 * warps) return pair;
  }
  if (mn8 == 1) return deep ? stream_config<1, 8, 1>(bf16, two) : stream_config<1, 4, 1>(bf16, two);
  if (mn8 == 2) return deep ? stream_config<2, 8, 1>(bf16, two) : stream_config<2, 4, 1>(bf16, two);
  if (mn8 == 4) return stream_config<4, 4, 1>(bf16, two);
  return stream_config<8, 3, 1>(bf16, two);
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

Params make_params(const FastGemmDevice& a) {
  MarlinGemmArgs shape;
  shape.m = a.m;
  shape.k = a.k;
  shape.n = a.n;
  shape.np = a.np;
  shape.kp = a.kp;
  shape.layout = a.layout;
  check_marlin_gemm(shape);
  if (a.m > (1ll << 30) || a.np > (1ll << 30) || a.kp > (1ll << 30)) throw InvalidInput("shape too large for the fast GEMM");
  Params p;
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
  p.ksplit = 0;
  p.zero_y = 0;
  p.ws = nullptr;
  p.wsc = nullptr;
  return p;
}

struct Plan {
  Config* cfg = nullptr;  // the streaming kernel; null: the tiled kernel (tile.launch) or the dense route
  TileLaunch tile;
  Params p;
  dim3 grid;
};

bool dense_route(const FastGemmDevice& a) { return a.dense != nullptr && a.m >= kDenseMinM && cublas_available(); }

Plan make_plan(const FastGemmDevice& a, const FastGemmTuning& t) {
  Plan pl;
  pl.p = make_params(a);
  if (dense_route(a)) return pl;
  if (t.kernel < 0 || t.kernel > 3) throw InvalidInput("kernel must be 0 (by M), 1 (streaming), 2 (tiled) or 3 (wgmma)");
  if (t.kernel == 3 && !wgmma_available()) throw InvalidInput("the wgmma kernel needs an sm_90 device and a build with sm_90a code");
  const bool bf16 = a.dt == ActDtype::BF16;
  if (t.kernel == 3 || (t.kernel == 0 && a.m >= kWgmmaMinM && wgmma_available() && wgmma_fits(pl.p))) {
    pl.tile = plan_wgmma(pl.p, bf16, t.m_tiles, t.depth, t.ksplit, t.kreduce, a.workspace ? a.workspace_bytes : 0, sm_count());
    pl.p.ksplit = pl.tile.ksplit;
    if (pl.tile.ws_split) {
      pl.p.wsc = static_cast<unsigned*>(a.workspace);
      pl.p.ws = reinterpret_cast<float*>(static_cast<uint8_t*>(a.workspace) + kWsCounterBytes);
    }
    return pl;
  }
  if (t.kernel == 2 || (t.kernel == 0 && a.m >= kTileMinM)) {
    pl.tile = plan_tile(pl.p, bf16, t.m_tiles, t.depth, sm_count());
    return pl;
  }
  pl.cfg = &pick_config(a.dt, a.m, pl.p.rows, pl.p.nchunks, sm_count(), t);
  const int64_t mblocks = (a.m + pl.cfg->mrows - 1) / pl.cfg->mrows;
  if (mblocks > 65535) throw InvalidInput("M too large for the fast GEMM");
  // One wave of resident blocks, shared among the row tiles of M (at least one block each).
  const int64_t slots = (int64_t)sm_count() * pl.cfg->per_sm * std::max(1, t.waves);
  const int64_t steps = (int64_t)(pl.p.nchunks / pl.cfg->chunks_per_step) * (pl.p.rows / pl.cfg->rows_per_step);
  int64_t bx = std::max<int64_t>(1, slots / mblocks);
  bx = std::min<int64_t>(bx, (steps + pl.cfg->warps - 1) / pl.cfg->warps);
  pl.grid = dim3((unsigned)bx, (unsigned)mblocks);
  // The kernel zeroes y itself when every block is resident at once (a cooperative launch) and
  // there is a workspace for its grid barrier.
  if (a.workspace && t.waves <= 1 && bx * mblocks <= (int64_t)sm_count() * pl.cfg->per_sm) {
    pl.p.zero_y = 1;
    pl.p.wsc = static_cast<unsigned*>(a.workspace);
  }
  return pl;
}

void launch_dequant(const Params& p, ActDtype dt, uint16_t* dense, cudaStream_t s) {
  const int blocks = sm_count() * 8;
  if (dt == ActDtype::BF16) marlin_dequant_kernel<true><<<blocks, 256, 0, s>>>(p, reinterpret_cast<uint4*>(dense));
  else marlin_dequant_kernel<false><<<blocks, 256, 0, s>>>(p, reinterpret_cast<uint4*>(dense));
  check(cudaGetLastError(), "launching the Marlin dequantization");
}

}  // namespace

bool fast_gemm_has_wgmma() { return wgmma_available(); }

int64_t fast_gemm_workspace_bytes() { return wgmma_workspace_bytes(sm_count()); }
int64_t fast_gemm_workspace_counter_bytes() { return kWsCounterBytes; }

std::string describe_marlin_fast(const FastGemmDevice& a, const FastGemmTuning& t) {
  const Plan pl = make_plan(a, t);
  if (pl.tile.launch)
    return std::string(pl.tile.wgmma ? "wgmma" : "tile") + " rows=" + std::to_string(pl.tile.mrows) + " chunks=" + std::to_string(pl.tile.chunks) + " depth=" +
           std::to_string(pl.tile.depth) + " grid=" + std::to_string(pl.tile.grid.x) + "x" + std::to_string(pl.tile.grid.y) +
           (pl.tile.ksplit ? " ksplit=" + std::to_string(pl.tile.ksplit) + (pl.tile.ws_split ? " via workspace" : " via cluster") : "");
  if (!pl.cfg) return "dense: dequantize + cuBLAS";
  return "stream rows=" + std::to_string(pl.cfg->mrows) + " depth=" + std::to_string(pl.cfg->depth) + " k16/step=" +
         std::to_string(pl.cfg->rows_per_step) + " chunks/step=" + std::to_string(pl.cfg->chunks_per_step) + " grid=" +
         std::to_string(pl.grid.x) + "x" + std::to_string(pl.grid.y) + (pl.p.zero_y ? " zeroes y" : "");
}

void launch_marlin_fast(const FastGemmDevice& a, void* stream, const FastGemmTuning& t) {
  const Plan pl = make_plan(a, t);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (!pl.cfg && !pl.tile.launch) {
    launch_dequant(pl.p, a.dt, a.dense, s);
    dense_gemm_cublas(a.dense, a.x, a.y, a.m, a.n, a.k, a.dt, pl.p.gmul, s);
    return;
  }
  // Stream-K adds partial tiles into y; the wgmma kernel's split of K (through a cluster or the
  // workspace) stores every element once.
  if (!pl.tile.ksplit && !pl.p.zero_y) check(cudaMemsetAsync(a.y, 0, (size_t)(a.m * a.n) * sizeof(float), s), "zeroing the GEMM's output");
  if (pl.tile.launch) pl.tile.launch(pl.p, pl.tile.grid, pl.tile.smem, s);
  else pl.cfg->launch(pl.p, pl.grid, pl.cfg->smem, s);
  check(cudaGetLastError(), "launching the fast Marlin GEMM");
}

float launch_marlin_dequant(const FastGemmDevice& a, uint16_t* dense, void* stream) {
  const Params p = make_params(a);
  launch_dequant(p, a.dt, dense, static_cast<cudaStream_t>(stream));
  return p.gmul;
}

void gemm_marlin_fast(const MarlinGemmArgs& a, const std::vector<int64_t>& splits, const FastGemmTuning& tuning) {
  check_marlin_gemm(a);
  std::vector<int64_t> ms = splits;
  if (ms.empty()) ms.push_back(a.m);
  int64_t total = 0;
  for (const int64_t m : ms) {
    if (m < 1) throw InvalidInput("every M of a split must be at least 1");
    total += m;
  }
  if (total != a.m) throw InvalidInput("the Ms of the split add up to " + std::to_string(total) + ", not M = " + std::to_string(a.m));
  detail::require_device();
  const int64_t rows = a.kp / kGroup;
  const int64_t xb = a.m * a.k * 2, wb = rows * 2 * a.np * 4, sb = rows * a.np;
  int64_t bytes = detail::align_up(xb) + detail::align_up(wb) + detail::align_up(sb);
  int64_t most = 0;
  for (const int64_t m : ms) {
    bytes += detail::align_up(m * a.n * 4);
    most = std::max(most, m);
  }
  // The dense route's scratch where an M would take it.
  const int64_t db = most >= kDenseMinM && cublas_available() ? a.n * a.k * 2 : 0;
  bytes += detail::align_up(db);
  // The workspace (the wgmma kernel's split, the streaming kernel's grid barrier): its counters
  // zeroed here once; launches leave them so.
  const int64_t wsb = fast_gemm_workspace_bytes();
  bytes += detail::align_up(wsb);
  // One stream-ordered allocation per call (the pool keeps the memory for the next call, and
  // nothing synchronizes the device as cudaFree does), the weight uploaded once for every M,
  // each M its own launch (the kernel's split depends on M) into its own output.
  detail::Stream st;
  detail::Arena arena(st.s);
  detail::reserve_whole(arena, st.s, bytes, "the fast GEMM");
  uint16_t* dx = arena.take<uint16_t>(xb);
  uint32_t* dw = arena.take<uint32_t>(wb);
  uint8_t* ds = arena.take<uint8_t>(sb);
  uint16_t* dense = db ? arena.take<uint16_t>(db) : nullptr;
  void* ws = wsb ? arena.take<uint8_t>(wsb) : nullptr;
  if (ws) check(cudaMemsetAsync(ws, 0, (size_t)fast_gemm_workspace_counter_bytes(), st.s), "zeroing the GEMM's workspace");
  detail::copy_rows(dx, xb, a.x, xb, xb, 1, cudaMemcpyHostToDevice, st.s, "activations");
  detail::copy_rows(dw, wb, a.weight, wb, wb, 1, cudaMemcpyHostToDevice, st.s, "the packed weight");
  detail::copy_rows(ds, sb, a.scales, sb, sb, 1, cudaMemcpyHostToDevice, st.s, "the processed scales");
  int64_t row0 = 0;
  for (const int64_t m : ms) {
    FastGemmDevice d2;
    d2.x = dx + row0 * a.k;
    d2.m = m;
    d2.k = a.k;
    d2.n = a.n;
    d2.np = a.np;
    d2.kp = a.kp;
    d2.layout = a.layout;
    d2.dt = a.dt;
    d2.weight = dw;
    d2.scales = ds;
    d2.global_bits = a.global_bits;
    float* dy = arena.take<float>(m * a.n * 4);
    d2.y = dy;
    d2.dense = dense;
    d2.workspace = ws;
    d2.workspace_bytes = wsb;
    launch_marlin_fast(d2, st.s, tuning);
    detail::copy_rows(a.y + row0 * a.n, m * a.n * 4, dy, m * a.n * 4, m * a.n * 4, 1, cudaMemcpyDeviceToHost, st.s, "the GEMM's output");
    row0 += m;
  }
  detail::sync(st.s, "running the fast Marlin GEMM");
}

}  // namespace cuda
}  // namespace mfp4
