// The tensor-core Marlin FP4 GEMM (gemm_fast_cuda.cu): Y[M, N] = X[M, K] @ W^T read straight
// from a converted linear (packed I32 weight, processed S0E5M3 scales, processed global scale),
// float32 out. Plain C++ so that the bindings and the bench harness compile with the host
// compiler; failures throw cuda::CudaError.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "gemm_cpu.h"

namespace mfp4 {
namespace cuda {

// Device pointers and shapes of one launch. The output y [m, n] is float32; x is [m, k]
// float16 / bfloat16 bits (dt).
struct FastGemmDevice {
  const uint16_t* x = nullptr;
  int64_t m = 0, k = 0, n = 0, np = 0, kp = 0;
  Layout layout = Layout::V2;
  ActDtype dt = ActDtype::BF16;
  const uint32_t* weight = nullptr;  // I32 [kp/16, 2*np]
  const uint8_t* scales = nullptr;   // processed F8 [kp/16, np]
  uint32_t global_bits = 0;          // stored global scale bits (see MarlinGemmArgs)
  float* y = nullptr;                // [m, n]
  // Optional scratch of n·k activation-dtype elements: with it (and cuBLAS), M >= kDenseMinM
  // runs as the weight dequantized into [n, k] and cuBLAS's GEMM on it, faster there than the
  // fused kernels (bench/notes/gemm.md: at M = 256 the wgmma kernel now wins, 262 us against
  // 198 + 169; at 1024 the dense route, 0.69-0.76x cuBLAS against 0.57x).
  uint16_t* dense = nullptr;
  // Optional workspace of fast_gemm_workspace_bytes(), its first fast_gemm_workspace_counter_bytes()
  // zeroed once when allocated (the counters; the rest needs no initialization): with it the
  // wgmma kernel may split a tile's K among blocks that sum their partials through it (no zeroing
  // of y, no atomics), and the streaming kernel zeroes y itself behind a grid barrier kept there
  // (no cudaMemsetAsync before it). Launches that share one must be ordered (one stream): each
  // leaves its counters ready for the next.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// The workspace a launch_marlin_fast may use on this device (FastGemmDevice::workspace), and the
// bytes at its start that must be zero before its first use.
int64_t fast_gemm_workspace_bytes();
int64_t fast_gemm_workspace_counter_bytes();

constexpr int64_t kDenseMinM = 512;

// How the work is cut; 0 = chosen from the shape and the device. Exposed for the bench harness.
struct FastGemmTuning {
  int m_tiles = 0;        // 8-row tiles of M per warp: 1, 2, 4 or 8 (streaming); per block: 4, 8 or 16 (tiled)
  int depth = 0;          // steps each warp has in flight (4; 8 where m_tiles <= 2); tiled: stages, 3-5
  int waves = 1;          // resident-block waves in the grid
  int rows_per_step = 0;  // K/16 rows per step: 1 or 2 (2 needs an even K/16)
  int chunks_per_step = 0;  // streaming: adjacent 64-column chunks per step, 1 or 2 (2 needs
                            // m_tiles <= 2, an even chunk count, depth 0 or 3)
  int kernel = 0;         // 0: by M (kTileMinM); 1: streaming; 2: tiled (mma.sync); 3: wgmma (sm_90)
  int ksplit = 0;         // wgmma kernel: 0 = by the shape; -1 = stream-K (atomics); 1..8 = each tile's K
                          // split among that many blocks (needs N % 4 == 0)
  int kreduce = 0;        // how a split sums its partials: 0 = by the shape, 1 = a cluster's
                          // distributed shared memory, 2 = the workspace
};

// From this M on a kernel sharing x through shared memory replaces the streaming one: the tiled
// mma.sync kernel (gemm_tile_cuda.cu), and from kWgmmaMinM on sm_90 the wgmma kernel
// (gemm_wgmma_cuda.cu), which since session 24 is faster than the tiled one at every M it takes
// (H200, bench/notes/gemm.md: 28672x8192 at M = 17, 86 us against 103; the streaming kernel, 91)
// and slower than the streaming one up to 16 (M = 16: 88 against 72).
constexpr int64_t kTileMinM = 17;
constexpr int64_t kWgmmaMinM = 17;

// Whether the wgmma kernel can run here (an sm_90 device and a build with sm_90a code).
bool fast_gemm_has_wgmma();

// Enqueues the GEMM on a stream (nullptr: the default stream), zeroing y first where a kernel adds
// partial tiles into it and cannot zero it itself (see FastGemmDevice::workspace), or the dense
// route (see FastGemmDevice::dense).
// Checks the shapes (InvalidInput) but does not synchronize.
void launch_marlin_fast(const FastGemmDevice& a, void* stream, const FastGemmTuning& tuning = {});

// What launch_marlin_fast would choose, as "stream rows=.. depth=.. k16/step=.. grid=XxY" or "dense: ...".
std::string describe_marlin_fast(const FastGemmDevice& a, const FastGemmTuning& tuning = {});

// Enqueues the dequantization of the converted weight into a dense [n, k] matrix in the
// activation dtype, W' = e2m1 · v · 2^-7 (exact); returns the factor (128 · global value) that
// turns x @ W'^T into Y. For large M, where a dense GEMM on W' outruns the fused kernel.
float launch_marlin_dequant(const FastGemmDevice& a, uint16_t* dense, void* stream);

// Host buffers in, float32 out (same arguments as gemm_marlin_cpu), for verify. splits: the
// rows of X as consecutive Ms (summing to a.m), each its own launch on the one upload of the
// weight (the kernel's work split depends on M); empty: one launch of all a.m rows.
void gemm_marlin_fast(const MarlinGemmArgs& a, const std::vector<int64_t>& splits, const FastGemmTuning& tuning = {});
inline void gemm_marlin_fast(const MarlinGemmArgs& a, const FastGemmTuning& tuning = {}) { gemm_marlin_fast(a, {}, tuning); }

}  // namespace cuda
}  // namespace mfp4
