// The tiled kernel of the fast Marlin GEMM (gemm_tile_cuda.cu), for M from a few tens of rows
// up: the launch that gemm_fast_cuda.cu's plan picks when it takes this kernel.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "gemm_fast_device.cuh"

namespace mfp4 {
namespace cuda {
namespace fastgemm {

struct TileLaunch {
  int mrows = 0;   // rows of M per block (blockIdx.y)
  int chunks = 0;  // 64-column chunks per block
  int depth = 0;   // pipeline stages of 4 K/16 rows
  bool wgmma = false;  // the Hopper kernel (gemm_wgmma_cuda.cu)
  int ksplit = 0;      // wgmma: blocks splitting a tile's K (0: stream-K; see Params::ksplit)
  bool ws_split = false;  // ... summing through the workspace (else a cluster's shared memory)
  size_t smem = 0;
  dim3 grid;
  void (*launch)(const Params&, dim3 grid, size_t smem, cudaStream_t) = nullptr;
};

// The block shape for M rows (m_tiles: 0 = chosen from M; 4 = 32 rows, 8 = 64, 16 = 128 rows
// per block), `depth` stages (0 = 4; 3 or 5 for the bench), a one-wave stream-K grid over `sms`
// multiprocessors.
TileLaunch plan_tile(const Params& p, bool bf16, int m_tiles, int depth, int sms);

// The stream-K grid of a shared-x kernel (both work on units of 4 K/16 rows x k.chunks chunks):
// one wave of k.grid.x blocks per SM (what the config left there), shared by the block rows of M.
void size_grid(TileLaunch& k, const Params& p, int sms);

}  // namespace fastgemm
}  // namespace cuda
}  // namespace mfp4
