// The tiled kernel of the fast Marlin GEMM, for M from a few tens of rows up (the streaming
// kernel of gemm_fast_cuda.cu is the one for decode sizes; its header comment states the layout
// rule and the exact arithmetic both kernels stand on: a lane's 16-byte run of the packed weight
// is its mma A fragments for the four 16-column blocks of a 64-column chunk, x^T is the B
// operand, the accumulator is multiplied once by 128 · global).
//
// Why a second kernel: the streaming kernel gives each warp its own weights and its own copy of
// x, fetched 4 bytes per lane per n8 tile. Past M = 32 that x traffic and the per-warp
// accumulators (one 64-row M tile per block row, the weight decoded again for every one) make it
// slower than dequantizing into a dense matrix for cuBLAS. Here a block shares x instead:
//
// - A block owns CH adjacent 64-column chunks and MB = WM · T · 8 rows of M; warp (cw, mw) owns
//   chunk cw and T n8 tiles of M. Every weight is decoded once per block row of M (WM warps of one
//   chunk decode it side by side), and one decoded A fragment feeds T mma.
// - A pipeline of `ST` stages in shared memory, each 4 K/16 rows (64 k): x[MB rows][64 k] as
//   eight 16-byte units per row, swizzled (unit ^ row % 8) so that ldmatrix reads 8 rows of one
//   unit without bank conflicts; the weight runs of the CH chunks; their scale rows. All threads
//   copy with cp.async (x zero-filled past M), one __syncthreads per stage.
// - ldmatrix.x4 gives the B fragments of two n8 tiles (16 rows of x) at one K/16 row.
// - Work split: stream-K over (column group, 4-row K unit), group-major, one wave of blocks per
//   block row of M; a block adds its partial tiles into y (zeroed first) with fp32 atomics when
//   its group changes.
#include "gemm_tile_cuda.cuh"

#include <algorithm>

#include "cuda_check.cuh"
#include "transforms_cpu.h"

namespace mfp4 {
namespace cuda {
namespace fastgemm {
namespace {

template <int CH, int WM, int T>
struct TileStage {
  static constexpr int kRowsM = WM * T * 8;
  uint4 x[kRowsM][8];               // [M row][16-byte unit ^ (row % 8)]
  uint4 w[kStageRows][CH][32];       // [K/16 row][chunk][lane]: the packed runs
  uint4 s[kStageRows * CH * 4];      // v2: [K/16 row][chunk] 64 bytes; v1: [row pair][chunk] 128 bytes
};

template <bool BF16, int CH, int WM, int T, int ST>
__global__ void __launch_bounds__(CH * WM * 32, 1) marlin_tile_kernel(const Params p) {
  using Stage = TileStage<CH, WM, T>;
  constexpr int NT = CH * WM * 32, MB = Stage::kRowsM, KS = kStageRows;
  static_assert(MB * 8 % NT == 0 && KS * CH * 32 % NT == 0 && KS * CH * 4 <= NT, "copies must split evenly over the threads");
  extern __shared__ uint4 tile_smem[];
  Stage* const stages = reinterpret_cast<Stage*>(tile_smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int cw = warp % CH, mw = warp / CH, g = lane >> 2;
  const int m0 = blockIdx.y * MB;
  const int kunits = (p.rows + KS - 1) / KS;
  const int64_t total = (int64_t)((p.nchunks + CH - 1) / CH) * kunits;
  const int64_t u0 = total * blockIdx.x / gridDim.x, u1 = total * (blockIdx.x + 1) / gridDim.x;
  const int n = (int)(u1 - u0);
  if (n <= 0) return;  // the whole block: no barrier is left waiting

  // What each thread copies of a stage is the same at every unit (up to the unit's base
  // address): its offsets are worked out once. x: row and 16-byte unit (rows past M are
  // zero-filled); weight runs: K/16 row kk, chunk ci, lane l; scales: one 16-byte piece.
  constexpr int XI = MB * 8 / NT, WI = KS * CH * 32 / NT;
  int xo[XI], xk[XI], wo[WI], wk[WI], wc[WI];
#pragma unroll
  for (int it = 0; it < XI; ++it) {
    const int i = tid + it * NT, row = i >> 3, unit = i & 7;
    xo[it] = m0 + row < p.m ? (m0 + row) * p.k + unit * 8 : -1;
    xk[it] = unit >> 1;
  }
#pragma unroll
  for (int it = 0; it < WI; ++it) {
    const int i = tid + it * NT;
    wk[it] = i / (CH * 32);
    wc[it] = (i / 32) % CH;
    wo[it] = (wk[it] * p.nchunks + wc[it]) * 32 + i % 32;
  }
  const ScaleCopy<CH> scopy(p, tid);

  // Copies unit u (column group u / kunits, K/16 rows 4·(u % kunits)..) into a stage.
  auto load = [&](int64_t u, Stage* st) {
    const int gi = (int)(u / kunits), r0 = (int)(u % kunits) * KS, c0 = gi * CH;
    const int krows = p.rows - r0, cols = p.nchunks - c0;  // what is left of K and N from here
    const uint16_t* xb = p.x + (size_t)r0 * 16;
    const uint4* wb = p.w + ((size_t)r0 * p.nchunks + c0) * 32;
#pragma unroll
    for (int it = 0; it < XI; ++it) {
      const int i = tid + it * NT, row = i >> 3, unit = i & 7;
      const bool ok = xo[it] >= 0 && xk[it] < krows;
      cp_async16z(&st->x[row][unit ^ (row & 7)], ok ? xb + xo[it] : p.x, ok);
    }
#pragma unroll
    for (int it = 0; it < WI; ++it)
      if (wk[it] < krows && wc[it] < cols) cp_async16(&st->w[wk[it]][wc[it]][(tid + it * NT) % 32], wb + wo[it]);
    scopy.copy(p, st->s, tid, r0, c0, krows, cols);
  };

  float acc[T][4][4];
  // Adds this warp's 64 x (8·T) tile (chunk gi·CH + cw) into y.
  auto flush = [&](int gi) {
    const int c = gi * CH + cw;
    if (c < p.nchunks) add_tile<T>(acc, p, m0 + mw * T * 8, c, lane);
    clear_tile<T>(acc);
  };
  clear_tile<T>(acc);

  // One K/16 row's operands for this warp: B fragments of its T n8 tiles, its lane's weight
  // run and scale bytes.
  struct Frag {
    uint32_t b[T][2];
    uint4 w;
    uint2 s;
  };
  auto fetch = [&](const Stage* st, int kk, Frag& f) {
#pragma unroll
    for (int tp = 0; tp < T / 2; ++tp) {
      const int row = (mw * T + 2 * tp) * 8 + (lane & 7) + ((lane >> 4) << 3);
      const int unit = 2 * kk + ((lane >> 3) & 1);
      ldmatrix_x4(f.b[2 * tp][0], f.b[2 * tp][1], f.b[2 * tp + 1][0], f.b[2 * tp + 1][1], &st->x[row][unit ^ (row & 7)]);
    }
    f.w = st->w[kk][cw][lane];
    const uint8_t* sb = reinterpret_cast<const uint8_t*>(st->s);
    f.s = *reinterpret_cast<const uint2*>(p.v1 ? sb + ((kk >> 1) * CH + cw) * 128 + 16 * g + 8 * (kk & 1) : sb + (kk * CH + cw) * 64 + 8 * g);
  };
  // Decodes the row's four A fragments (16 columns each) and runs its 4·T mma.
  auto math = [&](const Frag& f) {
    uint32_t sj[4];
    scale_pairs<BF16>(f.s.x, sj[0], sj[1]);
    scale_pairs<BF16>(f.s.y, sj[2], sj[3]);
    const uint32_t words[4] = {f.w.x, f.w.y, f.w.z, f.w.w};
    uint32_t a[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t sa = half_bcast<0>(sj[j]), sc = half_bcast<1>(sj[j]);
      a[j][0] = mul2(dequant_pair<BF16, 0>(words[j]), sa, BF16);
      a[j][1] = mul2(dequant_pair<BF16, 2>(words[j]), sc, BF16);
      a[j][2] = mul2(dequant_pair<BF16, 1>(words[j]), sa, BF16);
      a[j][3] = mul2(dequant_pair<BF16, 3>(words[j]), sc, BF16);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int t = 0; t < T; ++t) mma<BF16>(acc[t][j], a[j], f.b[t][0], f.b[t][1]);
  };

#pragma unroll
  for (int s = 0; s < ST - 1; ++s) {
    if (s < n) load(u0 + s, stages + s);
    cp_commit();
  }
  int rd = 0, wr = ST - 1;  // the stage consumed / filled next
  int gcur = (int)(u0 / kunits);
#pragma unroll 1
  for (int i = 0; i < n; ++i) {
    cp_wait<ST - 2>();
    __syncthreads();  // stage rd has landed for every thread; stage wr was consumed by all
    if (i + ST - 1 < n) load(u0 + i + ST - 1, stages + wr);
    cp_commit();
    wr = wr + 1 == ST ? 0 : wr + 1;
    const Stage* st = stages + rd;
    rd = rd + 1 == ST ? 0 : rd + 1;
    const int64_t u = u0 + i;
    const int r0 = (int)(u % kunits) * KS;
    if (gcur * CH + cw < p.nchunks) {
      const int nk = min(KS, p.rows - r0);  // K/16 rows of this unit (fewer only at the end of K)
      Frag f0, f1;
      if (nk == KS) {
        // Each row's fragments are read while the previous row's mma run, so that two warps
        // per scheduler keep the tensor pipe fed.
        fetch(st, 0, f0);
        fetch(st, 1, f1);
        math(f0);
        fetch(st, 2, f0);
        math(f1);
        fetch(st, 3, f1);
        math(f0);
        math(f1);
      } else {
#pragma unroll 1
        for (int kk = 0; kk < nk; ++kk) {
          fetch(st, kk, f0);
          math(f0);
        }
      }
    }
    if (i + 1 == n || (u + 1) / kunits != gcur) {
      flush(gcur);
      ++gcur;
    }
  }
  cp_wait<0>();
}

template <bool BF16, int CH, int WM, int T, int ST>
TileLaunch tile_config() {
  static const TileLaunch base = [] {
    TileLaunch k;
    k.mrows = WM * T * 8;
    k.chunks = CH;
    k.depth = ST;
    k.smem = sizeof(TileStage<CH, WM, T>) * ST;
    const void* fn = reinterpret_cast<const void*>(&marlin_tile_kernel<BF16, CH, WM, T, ST>);
    check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)k.smem), "raising the tiled GEMM's shared memory");
    int per_sm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, CH * WM * 32, k.smem), "reading the tiled GEMM's occupancy");
    k.grid.x = (unsigned)std::max(per_sm, 1);  // blocks per SM until plan_tile scales it
    k.launch = [](const Params& p, dim3 grid, size_t smem, cudaStream_t s) {
      marlin_tile_kernel<BF16, CH, WM, T, ST><<<grid, CH * WM * 32, smem, s>>>(p);
    };
    return k;
  }();
  return base;
}

// The block shapes: 32, 64 or 128 rows of M (8 warps each), 4 stages unless asked.
template <bool BF16>
TileLaunch pick(int mt, int depth) {
#define MFP4_TILE(CH, WM, T)                               \
  do {                                                     \
    if (depth == 3) return tile_config<BF16, CH, WM, T, 3>(); \
    if (depth == 5) return tile_config<BF16, CH, WM, T, 5>(); \
    return tile_config<BF16, CH, WM, T, 4>();              \
  } while (0)
  if (mt == 4) MFP4_TILE(8, 1, 4);
  if (mt == 8) MFP4_TILE(8, 1, 8);
  MFP4_TILE(4, 2, 8);
#undef MFP4_TILE
}

}  // namespace

TileLaunch plan_tile(const Params& p, bool bf16, int m_tiles, int depth, int sms) {
  const int mt = m_tiles ? m_tiles : p.m <= 32 ? 4 : p.m <= 64 ? 8 : 16;
  if (mt != 4 && mt != 8 && mt != 16) throw InvalidInput("the tiled GEMM takes m_tiles 4, 8 or 16");
  if (depth != 0 && depth != 3 && depth != 4 && depth != 5) throw InvalidInput("the tiled GEMM takes depth 3, 4 or 5");
  TileLaunch k = bf16 ? pick<true>(mt, depth) : pick<false>(mt, depth);
  size_grid(k, p, sms);
  return k;
}

void size_grid(TileLaunch& k, const Params& p, int sms) {
  const int64_t mblocks = (p.m + k.mrows - 1) / k.mrows;
  if (mblocks > 65535 || (int64_t)p.m * p.k >= (1ll << 31)) throw InvalidInput("M too large for the fast GEMM's shared-x kernels");
  const int64_t units = (int64_t)((p.nchunks + k.chunks - 1) / k.chunks) * ((p.rows + kStageRows - 1) / kStageRows);
  const int64_t slots = (int64_t)sms * k.grid.x;  // one wave, shared by the block rows of M
  const int64_t bx = std::min<int64_t>(std::max<int64_t>(1, slots / mblocks), units);
  k.grid = dim3((unsigned)bx, (unsigned)mblocks);
}

}  // namespace fastgemm
}  // namespace cuda
}  // namespace mfp4
