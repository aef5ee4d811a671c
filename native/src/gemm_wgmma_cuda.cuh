// The Hopper kernel of the fast Marlin GEMM (gemm_wgmma_cuda.cu): wgmma with the decoded weight
// as the A operand in registers, for M from kTileMinM up on sm_90 (built as sm_90a).
#pragma once
#include "gemm_tile_cuda.cuh"

namespace mfp4 {
namespace cuda {
namespace fastgemm {

// Whether this build has the sm_90a code and the current device runs it (checked once).
bool wgmma_available();

// Whether the kernel's 32-bit unit indices and weight offsets hold this N x K (the units are
// fewer than K/16 x Np/64 x 32, the weight's 16-byte runs).
bool wgmma_fits(const Params& p);

// The launch for M rows (m_tiles: 0 = chosen from M; 1, 2, 4, 8, 16 = 8 to 128 rows per block),
// `depth` stages (0 = 4; 3 or 5 for the bench), over `sms` multiprocessors: a one-wave stream-K
// grid, or one cluster of ksplit blocks per tile (FastGemmTuning::ksplit: 0 = by the shape,
// -1 = stream-K, 1..8 = that split).
// kreduce: how a split sums (0 = by the shape, 1 = cluster, 2 = a workspace of ws_bytes; the
// caller points p.ws / p.wsc at it when the plan says ws_split).
TileLaunch plan_wgmma(const Params& p, bool bf16, int m_tiles, int depth, int ksplit, int kreduce, int64_t ws_bytes, int sms);

// The workspace: a header of counters, zeroed once (the wgmma split's two per tile and the
// streaming kernel's barrier arrivals, which every launch leaves at zero, and the barrier's
// generation, which only grows), then the split's partials, one NM x 256 float tile per block.
constexpr int64_t kWsTileCounterBytes = 8192;
constexpr int kWsBarrierWord = (int)(kWsTileCounterBytes / 4);
constexpr int64_t kWsCounterBytes = kWsTileCounterBytes + 256;
inline int64_t wgmma_workspace_bytes(int sms) { return kWsCounterBytes + (int64_t)sms * 128 * 256 * 4; }

}  // namespace fastgemm
}  // namespace cuda
}  // namespace mfp4
