// The Hopper kernel of the fast Marlin GEMM, for M from kWgmmaMinM up on sm_90: the tiled
// kernel's data flow (gemm_tile_cuda.cu: x shared by the block through a cp.async pipeline,
// stream-K over column groups) with the products done by wgmma instead of mma.sync. The layout
// rule and the exact arithmetic are those of gemm_fast_cuda.cu's header.
//
// Why it fits: wgmma m64nNk16 takes its A operand (64 rows x 16 k) from registers, warp w of the
// warpgroup holding rows 16w..16w+15 in the mma.m16n8k16 A-fragment layout. A 64-column chunk's
// packed run gives lane t exactly that fragment for 16-column block j in word j; so warp w of a
// warpgroup decodes word w of its lane's run (4 of the 16 nibble pairs the mma.sync kernels
// decode per lane), and one wgmma multiplies the whole chunk row by N = 32, 64 or 128 rows of x.
// x (the B operand, K-major) is read by the tensor cores straight from the stage: rows of
// 64 k = 128 bytes with the 16-byte units XOR-swizzled by row % 8, which is wgmma's 128-byte
// swizzle when the stage is 1024-byte aligned (descriptor: stride 1024 bytes between 8-row
// groups, start advanced 32 bytes per K/16 row).
//
// A block is 4 warpgroups on 4 adjacent chunks sharing the x of a stage. A warp decodes the A
// fragments of a stage's 4 K/16 rows into one of two register buffers while the previous
// stage's 4 wgmma (one commit group) run, then issues its own; a stage is refilled only once its
// group has been waited for (wait_group 1 before the barrier, copies ST - 2 stages ahead).
// Accumulators: N/2 floats per thread.
//
// Two ways to share the work among the SMs (the plan picks by the shape, plan_wgmma):
// - stream-K, as in the other kernels: every block takes an even share of all (column group,
//   K unit) pairs and adds its partial tile into y (zeroed first) with fp32 atomics whenever its
//   column group changes;
// - a split of K: each tile (4 chunks x NM rows) is done by s blocks, each one s-th of K, whose
//   partials are summed once at the end, by the blocks themselves, through a cluster's
//   distributed shared memory or, where s-block clusters do not all fit at once (a cluster lives
//   in one GPC), through a workspace in global memory with a cooperative launch; every element of
//   y is then stored once, by one block, in a fixed order. Small N is where it pays: the
//   stream-K flushes and the zeroing of y cost about 7 stages there (bench/notes/gemm.md).
//
// Built only for sm_90a (wgmma is an architecture-specific instruction); other targets get an
// empty kernel, and wgmma_available() runs a probe so the plan never picks that.
#include "gemm_wgmma_cuda.cuh"

#include <algorithm>
#include <cstdint>

#include "cuda_check.cuh"
#include "transforms_cpu.h"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MFP4_WGMMA 1
#endif

namespace mfp4 {
namespace cuda {
namespace fastgemm {
namespace {

constexpr int kGroups = 4;    // warpgroups per block = 64-column chunks per block
// The cluster split's partial tile in shared memory: NM rows of the block's 256 columns, 4 floats of
// padding (16-byte aligned rows; the lanes q of a warp store into distinct banks).
constexpr int kTilePitch = kGroups * 64 + 4;

template <int NM>
struct alignas(1024) WgStage {
  uint4 x[NM][8];                       // [x row][16-byte unit ^ (row % 8)]: 128-byte swizzle
  uint4 w[kStageRows][kGroups][32];      // [K/16 row][chunk][lane]: the packed runs
  uint4 s[kStageRows * kGroups * 4];     // v2: [K/16 row][chunk] 64 bytes; v1: [row pair][chunk] 128 bytes
};

#ifdef MFP4_WGMMA
template <bool BF16, int N>
__device__ __forceinline__ void wgmma(float* d, const uint32_t* a, uint64_t desc);

template <>
__device__ __forceinline__ void wgmma<true, 8>(float* d, const uint32_t* a, uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma<false, 8>(float* d, const uint32_t* a, uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma<true, 16>(float* d, const uint32_t* a, uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma<false, 16>(float* d, const uint32_t* a, uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma<true, 32>(float* d, const uint32_t* a, uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma<false, 32>(float* d, const uint32_t* a, uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma<true, 64>(float* d, const uint32_t* a, uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma<false, 64>(float* d, const uint32_t* a, uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma<true, 128>(float* d, const uint32_t* a, uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma<false, 128>(float* d, const uint32_t* a, uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

// Thread-block clusters (sm_90): this block's rank, a barrier of the whole cluster (release /
// acquire: shared-memory stores before it are seen by the other blocks' loads after it), and
// loads from another block's shared memory at the address `at` has in this block.
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ float4 ld_cluster_f4(uint32_t at, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(at), "r"(rank));
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(remote) : "memory");
  return v;
}
__device__ __forceinline__ void st_shared(uint32_t at, float v) { asm volatile("st.shared.f32 [%0], %1;" ::"r"(at), "f"(v) : "memory"); }
__device__ __forceinline__ float4 ld_shared_f4(uint32_t at) {
  float4 v;
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(at) : "memory");
  return v;
}
// The block's coordinates read afresh (asm volatile): the split's end works its tile out from
// them instead of keeping values from the start live through the main loop, where the 128
// registers are all taken (ptxas spilled otherwise).
__device__ __forceinline__ uint32_t ctaid_x() {
  uint32_t v;
  asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(v));
  return v;
}
__device__ __forceinline__ uint32_t ctaid_y() {
  uint32_t v;
  asm volatile("mov.u32 %0, %%ctaid.y;" : "=r"(v));
  return v;
}
__device__ __forceinline__ uint32_t thread_x() {
  uint32_t v;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(v));
  return v;
}
__device__ __forceinline__ void add4(float4& a, const float4& b) {
  a.x += b.x;
  a.y += b.y;
  a.z += b.z;
  a.w += b.w;
}

// A block's partial tile (times 128 · global) into its own shared memory at `tile`, row-major with
// kTilePitch floats per row, once every warp is done with the stages that it overwrites.
template <int NM>
__device__ __forceinline__ void stage_partial(const float (&acc)[NM / 2], float gmul, uint32_t tile, int tid) {
  const int lane = tid & 31, warp = tid >> 5, cw = warp >> 2, wq = warp & 3, g = lane >> 2, q = lane & 3;
  __syncthreads();
#pragma unroll
  for (int i = 0; i < NM / 8; ++i)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const uint32_t at = tile + (uint32_t)(((8 * i + 2 * q + e) * kTilePitch + 64 * cw + 16 * wq + g) * 4);
      st_shared(at, acc[4 * i + e] * gmul);
      st_shared(at + 32, acc[4 * i + 2 + e] * gmul);
    }
}

// The same end through global memory, where the split's blocks need not share a cluster (a
// cluster must fit in one GPC, which limits how many are resident; bench/notes/gemm.md). Every
// block writes the rows of its partial that the others sum into the workspace, arrives on the
// tile's counter and waits for all s (the launch is cooperative, so they are all resident), then
// sums its own rows, in rank order, from its shared memory and the others' workspace. The last
// block to finish reading sets the tile's counters back to zero for the next launch.
template <int NM>
__device__ __forceinline__ void global_reduce_store(const float (&acc)[NM / 2], const Params& p, uint32_t tile) {
  const int tid = (int)thread_x(), bx = (int)ctaid_x(), by = (int)ctaid_y();
  const int s = p.ksplit, m0 = by * NM, col0 = bx / s * kGroups * 64;
  stage_partial<NM>(acc, p.gmul, tile, tid);
  __syncthreads();
  const int r = bx % s, t = (by * (int)gridDim.x + bx) / s;
  const int rows = min(NM, p.m - m0), rlo = NM * r / s, rhi = NM * (r + 1) / s;
  float* const part = p.ws + (size_t)t * s * NM * 256;
  for (int idx = tid; idx < rows * 64; idx += kGroups * 128) {
    const int row = idx >> 6, v = idx & 63;
    if (row >= rlo && row < rhi) continue;  // its own rows stay here
    __stcg(reinterpret_cast<float4*>(part + ((size_t)r * NM + row) * 256) + v, ld_shared_f4(tile + (uint32_t)((row * kTilePitch + 4 * v) * 4)));
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    atomicAdd(&p.wsc[2 * t], 1u);
    while (ld_acquire(&p.wsc[2 * t]) < (unsigned)s) {
    }
  }
  __syncthreads();
  for (int idx = tid; idx < (min(rhi, rows) - rlo) * 64; idx += kGroups * 128) {
    const int row = rlo + (idx >> 6), v = idx & 63, col = col0 + 4 * v;
    if (col >= p.n) continue;
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int j = 0; j < s; ++j)
      add4(sum, j == r ? ld_shared_f4(tile + (uint32_t)((row * kTilePitch + 4 * v) * 4))
                       : __ldcg(reinterpret_cast<const float4*>(part + ((size_t)j * NM + row) * 256) + v));
    *reinterpret_cast<float4*>(p.y + (size_t)(m0 + row) * p.n + col) = sum;  // N % 4 == 0: the plan checks it
  }
  __syncthreads();
  if (tid == 0 && atomicAdd(&p.wsc[2 * t + 1], 1u) == (unsigned)s - 1) {
    p.wsc[2 * t] = 0;
    p.wsc[2 * t + 1] = 0;
  }
}

// The end of a cluster split: the p.ksplit blocks of a cluster hold partial sums of one tile (NM
// rows x the 4 chunks at column col0) over disjoint K ranges. Each stores its partial (times
// 128 · global) into its own shared memory at `tile` (the stages, no longer needed), then block r
// adds rows [r·NM/s, (r+1)·NM/s) of all s partials, in rank order, and stores them into y. No
// atomics, no zeroing of y first, and the same sums in the same order on every run.
template <int NM>
__device__ __forceinline__ void cluster_reduce_store(const float (&acc)[NM / 2], const Params& p, uint32_t tile) {
  const int tid = (int)thread_x(), m0 = (int)ctaid_y() * NM, col0 = (int)ctaid_x() / p.ksplit * kGroups * 64;
  stage_partial<NM>(acc, p.gmul, tile, tid);
  cluster_sync();
  const int s = p.ksplit, r = (int)cluster_rank();
  const int rlo = NM * r / s, rhi = NM * (r + 1) / s;
  for (int idx = tid; idx < (rhi - rlo) * kGroups * 16; idx += kGroups * 128) {  // float4s of the rows
    const int row = rlo + idx / (kGroups * 16), v = idx % (kGroups * 16), col = col0 + 4 * v;
    if (m0 + row >= p.m || col >= p.n) continue;
    const uint32_t at = tile + (uint32_t)((row * kTilePitch + 4 * v) * 4);
    float4 sum = ld_cluster_f4(at, 0);
    for (int j = 1; j < s; ++j) add4(sum, ld_cluster_f4(at, (uint32_t)j));
    *reinterpret_cast<float4*>(p.y + (size_t)(m0 + row) * p.n + col) = sum;  // N % 4 == 0: the plan checks it
  }
  cluster_sync();  // no block leaves while another still reads its partial
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }

// K-major B with the 128-byte swizzle: start address, leading offset unused (1), 1024 bytes
// between 8-row groups, swizzle mode 1.
__device__ __forceinline__ uint64_t x_desc(const void* smem) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
  return (uint64_t)((a & 0x3FFFF) >> 4) | (1ull << 16) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}

#endif  // MFP4_WGMMA

__global__ void wgmma_probe(int* out) {
#ifdef MFP4_WGMMA
  *out = 1;
#else
  *out = 0;
#endif
}

template <bool BF16, int NM, int ST>
__global__ void __launch_bounds__(kGroups * 128, 1) marlin_wgmma_kernel(const Params p) {
#ifdef MFP4_WGMMA
  using Stage = WgStage<NM>;
  constexpr int CH = kGroups, NT = CH * 128, KS = kStageRows;
  extern __shared__ uint8_t wg_smem[];
  // The first 1024-byte boundary, as an offset from the array so that the compiler still knows
  // every stage address is shared memory (LDS and cp.async, not generic loads and conversions).
  const uint32_t pad = (1024u - ((uint32_t)__cvta_generic_to_shared(wg_smem) & 1023u)) & 1023u;
  Stage* const stages = reinterpret_cast<Stage*>(wg_smem + pad);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int cw = warp >> 2, wq = warp & 3, g = lane >> 2, q = lane & 3;
  const int m0 = blockIdx.y * NM;
  const int kunits = (p.rows + KS - 1) / KS;
  const int64_t total = (int64_t)((p.nchunks + CH - 1) / CH) * kunits;
  // u / kunits by a multiply-high (exact for 32-bit u: wgmma_fits keeps the units below 2^31),
  // the magic worked out once: a 64-bit division per stage cost more issue slots than the
  // stage's decode (ncu on the H200).
  const uint64_t kmagic = ~0ull / (uint64_t)kunits + 1;
  auto group_of = [&](int64_t u) { return kunits == 1 ? (int)u : (int)__umul64hi(kmagic, (uint64_t)(uint32_t)u); };
  // Stream-K: the blocks share all units evenly. Split of K: block (tile t, rank r) takes the
  // r-th of p.ksplit parts of tile t's units (possibly none: it still joins the reduction).
  int64_t u0, u1;
  if (p.ksplit) {
    const int64_t t = blockIdx.x / p.ksplit, r = blockIdx.x % p.ksplit;
    u0 = t * kunits + kunits * r / p.ksplit;
    u1 = t * kunits + kunits * (r + 1) / p.ksplit;
  } else {
    u0 = total * blockIdx.x / gridDim.x;
    u1 = total * (blockIdx.x + 1) / gridDim.x;
  }
  const int n = (int)(u1 - u0);
  if (n <= 0 && !p.ksplit) return;

  // Per-thread copy places, the same at every unit: shared offsets inside a stage, and 32-bit
  // element offsets from the unit's first K/16 row and chunk (wgmma_fits and size_grid bound them). Working
  // them out once keeps the per-stage copies to an add and a zero-filling cp.async each (the
  // per-copy address arithmetic was a fifth of the kernel's instructions, ncu on the H200).
  constexpr int XI = (NM * 8 + NT - 1) / NT;
  const uint32_t stage0 = (uint32_t)__cvta_generic_to_shared(stages);
  const int xrow = tid >> 3, xunit = tid & 7, xk = xunit >> 1;
  const uint32_t x_at = (uint32_t)(reinterpret_cast<const uint8_t*>(&stages[0].x[xrow][xunit ^ (xrow & 7)]) - reinterpret_cast<const uint8_t*>(stages));
  int xo[XI];
#pragma unroll
  for (int it = 0; it < XI; ++it) {
    const int row = xrow + it * (NT / 8);  // (row & 7) is the same for every it
    xo[it] = row < NM && m0 + row < p.m ? (m0 + row) * p.k + xunit * 8 : -1;
  }
  static_assert(KS * CH * 32 == NT && KS * CH * 4 <= NT, "one weight run per thread");
  const int wk = tid / (CH * 32), wc = (tid / 32) % CH, wo = (wk * p.nchunks + wc) * 32 + lane;
  const uint32_t w_at = (uint32_t)(reinterpret_cast<const uint8_t*>(&stages[0].w[wk][wc][lane]) - reinterpret_cast<const uint8_t*>(stages));
  const ScaleCopy<CH> scopy(p, tid);

  auto load = [&](int64_t u, int slot) {
    const int gi = group_of(u), r0 = ((int)u - gi * kunits) * KS, c0 = gi * CH;
    const int krows = p.rows - r0, cols = p.nchunks - c0;
    const uint32_t at = stage0 + (uint32_t)slot * (uint32_t)sizeof(Stage);
#pragma unroll
    for (int it = 0; it < XI; ++it) {
      const bool ok = xo[it] >= 0 && xk < krows;
      // Unsigned 32-bit offsets (size_grid and wgmma_fits bound them): one wide multiply-add
      // per address, where signed ones cost a sign extension and a 64-bit add.
      if (xrow + it * (NT / 8) < NM) cp_async16z_at(at + x_at + it * (NT / 8) * 128, p.x + (ok ? (uint32_t)(xo[it] + r0 * 16) : 0u), ok);
    }
    const bool wok = wk < krows && wc < cols;
    cp_async16z_at(at + w_at, p.w + (wok ? (uint32_t)((r0 * p.nchunks + c0) * 32 + wo) : 0u), wok);
    scopy.copy(p, stages[slot].s, tid, r0, c0, krows, cols);
  };

  float acc[NM / 2];
#pragma unroll
  for (int i = 0; i < NM / 2; ++i) acc[i] = 0.0f;
  // Adds this warp's 16 columns x NM rows into y; d[4i + e] is (column 16wq + g, row 8i + 2q + e),
  // d[4i + 2 + e] the same row 8 columns on.
  auto flush = [&](int gi) {
    wgmma_wait<0>();
    const int c = gi * CH + cw;
    if (c < p.nchunks) {
      const int col = 64 * c + 16 * wq + g;
#pragma unroll
      for (int i = 0; i < NM / 8; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int row = m0 + 8 * i + 2 * q + e;
          if (row < p.m) {
            float* out = p.y + (size_t)row * p.n;
            if (col < p.n) atomicAdd(out + col, acc[4 * i + e] * p.gmul);
            if (col + 8 < p.n) atomicAdd(out + col + 8, acc[4 * i + 2 + e] * p.gmul);
          }
        }
    }
#pragma unroll
    for (int i = 0; i < NM / 2; ++i) acc[i] = 0.0f;
  };
  // Decodes this warp's A fragment (word wq of the lane's run: 16 columns x 16 k) of K/16 row kk.
  auto decode = [&](const Stage* st, int kk, uint32_t* a) {
    const uint32_t w = reinterpret_cast<const uint32_t*>(&st->w[kk][cw][lane])[wq];
    const uint8_t* sb = reinterpret_cast<const uint8_t*>(st->s);
    const uint32_t sw = *reinterpret_cast<const uint32_t*>(
        (p.v1 ? sb + ((kk >> 1) * CH + cw) * 128 + 16 * g + 8 * (kk & 1) : sb + (kk * CH + cw) * 64 + 8 * g) + 4 * (wq >> 1));
    // The word holds two 16-column blocks' scales; wq & 1 says which pair this warp's block uses.
    const uint32_t sj = scale_value<BF16>(wq & 1 ? scale_bits<BF16, true>(sw) : scale_bits<BF16, false>(sw));
    const uint32_t sa = half_bcast<0>(sj), sc2 = half_bcast<1>(sj);
    a[0] = mul2(dequant_pair<BF16, 0>(w), sa, BF16);
    a[1] = mul2(dequant_pair<BF16, 2>(w), sc2, BF16);
    a[2] = mul2(dequant_pair<BF16, 1>(w), sa, BF16);
    a[3] = mul2(dequant_pair<BF16, 3>(w), sc2, BF16);
  };

  // Stage i is refilled with unit i + ST while stage i + 1's wgmma may still run, so the copies
  // look ST - 2 units ahead and a stage is reused only after its wgmma group has been waited for.
#pragma unroll
  for (int s = 0; s < ST - 2; ++s) {
    if (s < n) load(u0 + s, s);
    cp_commit();
  }
  int gcur = group_of(u0);
  // One stage: decode its (up to) 4 A fragments while the previous stage's wgmma run, then
  // issue its 4 wgmma as one group. `ab` alternates between two register buffers, so the
  // fragments of the group still in flight are never overwritten.
  auto stage_step = [&](int i, uint32_t (&ab)[KS][4]) {
    cp_wait<ST - 3>();
    wgmma_wait<1>();  // stage i - 2's group is done, only stage i - 1's may still run
    __syncthreads();  // stage i has landed for every thread; stage (i - 2) % ST is free everywhere
    if (i + ST - 2 < n) load(u0 + i + ST - 2, (i + ST - 2) % ST);
    cp_commit();
    const Stage* st = stages + i % ST;
    const int64_t u = u0 + i;
    const int r0 = ((int)u - gcur * kunits) * KS;
    // Rows past K and chunks past N decode to zero (their weight runs and scales are zero-filled,
    // and so is x past K): the wgmma stay outside any branch, which ptxas needs to keep them
    // asynchronous, and no select per fragment register.
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) decode(st, kk, ab[kk]);
    wgmma_fence();
    const uint64_t d0 = x_desc(&st->x[0][0]);
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) wgmma<BF16, NM>(acc, ab[kk], d0 + 2 * kk);  // +32 bytes per K/16 row (encoded >> 4)
    wgmma_commit();
    if (!p.ksplit && (i + 1 == n || r0 + KS >= kunits * KS)) {
      flush(gcur);
      ++gcur;
    }
  };
  uint32_t a0[KS][4], a1[KS][4];
#pragma unroll 1
  for (int i = 0; i < n; i += 2) {
    stage_step(i, a0);
    if (i + 1 < n) stage_step(i + 1, a1);
  }
  wgmma_wait<0>();
  cp_wait<0>();
  if (p.ksplit && p.ws) global_reduce_store<NM>(acc, p, stage0);
  else if (p.ksplit) cluster_reduce_store<NM>(acc, p, stage0);
#endif
}

// What the plan needs to know of one instantiation: its stream-K launch (grid.x = resident
// blocks per SM), the shared memory of a cluster split (the stages, or the partial tile where
// that is larger), and how many clusters of each size 1..8 can be resident at once.
struct WgmmaConfig {
  TileLaunch base;
  size_t split_smem = 0;
  int split_per_sm = 0;  // resident blocks per SM with split_smem
  int clusters[9] = {};
};

constexpr int kMaxSplit = 8;  // the portable cluster size
// What a split saves (zeroing y, the stream-K flushes' atomics), in units of one stage per block:
// the plan takes a split while it costs fewer units than stream-K plus this. Summing through the
// workspace costs kWsCost units more than through a cluster. Both measured on the H200 at
// M = 64-256 (bench/notes/gemm.md: a split at stream-K's units per block was 5-9 us faster, about
// 7 stages; the workspace 1-3 us slower than a cluster).
constexpr int64_t kSplitGain = 7;
constexpr int64_t kWsCost = 2;

// The launch of a grid in clusters of `size` blocks along x (the launch and the occupancy query
// of wgmma_config both use it); `at` holds the attribute the configuration points to.
cudaLaunchConfig_t cluster_config(dim3 grid, size_t smem, cudaStream_t s, unsigned size, cudaLaunchAttribute& at) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kGroups * 128);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  at.id = cudaLaunchAttributeClusterDimension;
  at.val.clusterDim.x = size;
  at.val.clusterDim.y = 1;
  at.val.clusterDim.z = 1;
  cfg.attrs = &at;
  cfg.numAttrs = 1;
  return cfg;
}

template <bool BF16, int NM, int ST>
void launch_wgmma(const Params& p, dim3 grid, size_t smem, cudaStream_t s) {
  if (p.ksplit && p.ws) {  // the blocks of a tile wait for each other: all must be resident
    Params a = p;
    void* args[] = {&a};
    check(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&marlin_wgmma_kernel<BF16, NM, ST>), grid, dim3(kGroups * 128), args, smem, s),
          "launching the wgmma GEMM (cooperative)");
    return;
  }
  if (p.ksplit <= 1) {
    marlin_wgmma_kernel<BF16, NM, ST><<<grid, kGroups * 128, smem, s>>>(p);
    return;
  }
  cudaLaunchAttribute at;
  const cudaLaunchConfig_t cfg = cluster_config(grid, smem, s, (unsigned)p.ksplit, at);
  check(cudaLaunchKernelEx(&cfg, marlin_wgmma_kernel<BF16, NM, ST>, p), "launching the wgmma GEMM's clusters");
}

template <bool BF16, int NM, int ST>
const WgmmaConfig& wgmma_config() {
  static const WgmmaConfig c = [] {
    WgmmaConfig w;
    TileLaunch& k = w.base;
    k.mrows = NM;
    k.chunks = kGroups;
    k.depth = ST;
    k.wgmma = true;
    k.smem = sizeof(WgStage<NM>) * ST + 1024;  // + the alignment of the first stage
    w.split_smem = std::max(sizeof(WgStage<NM>) * ST, (size_t)NM * kTilePitch * 4) + 1024;
    const void* fn = reinterpret_cast<const void*>(&marlin_wgmma_kernel<BF16, NM, ST>);
    check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)w.split_smem), "raising the wgmma GEMM's shared memory");
    int per_sm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, kGroups * 128, k.smem), "reading the wgmma GEMM's occupancy");
    k.grid.x = (unsigned)std::max(per_sm, 1);
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&w.split_per_sm, fn, kGroups * 128, w.split_smem), "reading the wgmma GEMM's occupancy");
    k.launch = &launch_wgmma<BF16, NM, ST>;
    for (int s = 1; s <= kMaxSplit; ++s) {
      cudaLaunchAttribute at;
      const cudaLaunchConfig_t cfg = cluster_config(dim3((unsigned)s), w.split_smem, nullptr, (unsigned)s, at);
      int n = 0;
      if (cudaOccupancyMaxActiveClusters(&n, fn, &cfg) != cudaSuccess) {
        (void)cudaGetLastError();
        n = 0;  // this size cannot be launched here: never planned
      }
      w.clusters[s] = n;
    }
    return w;
  }();
  return c;
}

// 4 stages (two units copied ahead) measured fastest on the H200 once the per-stage address
// work was cut: 137 us at M = 128 on 28672x8192 against 141 with 3 and 138 with 5 (it was 3
// before, at 194 us; bench/notes/gemm.md).
template <bool BF16>
const WgmmaConfig& pick(int mt, int depth) {
#define MFP4_WG(NM)                                          \
  do {                                                       \
    if (depth == 3) return wgmma_config<BF16, NM, 3>();      \
    if (depth == 5) return wgmma_config<BF16, NM, 5>();      \
    return wgmma_config<BF16, NM, 4>();                      \
  } while (0)
  if (mt == 1) MFP4_WG(8);
  if (mt == 2) MFP4_WG(16);
  if (mt == 4) MFP4_WG(32);
  if (mt == 8) MFP4_WG(64);
  MFP4_WG(128);
#undef MFP4_WG
}

}  // namespace

bool wgmma_available() {
  static const bool ok = [] {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (major != 9 || minor != 0) return false;
    int* d = nullptr;
    int h = 0;
    if (cudaMalloc(&d, sizeof(int)) != cudaSuccess) return false;
    wgmma_probe<<<1, 1>>>(d);
    const bool ran = cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
    cudaFree(d);
    (void)cudaGetLastError();
    return ran && h == 1;
  }();
  return ok;
}

bool wgmma_fits(const Params& p) { return (int64_t)p.rows * p.nchunks * 32 < (1ll << 31); }

TileLaunch plan_wgmma(const Params& p, bool bf16, int m_tiles, int depth, int ksplit, int kreduce, int64_t ws_bytes, int sms) {
  if (!wgmma_fits(p)) throw InvalidInput("N x K too large for the wgmma GEMM (its offsets into the weight are 32-bit)");
  const int mt = m_tiles ? m_tiles : p.m <= 8 ? 1 : p.m <= 16 ? 2 : p.m <= 32 ? 4 : p.m <= 64 ? 8 : 16;
  if (mt != 1 && mt != 2 && mt != 4 && mt != 8 && mt != 16) throw InvalidInput("the wgmma GEMM takes m_tiles 1, 2, 4, 8 or 16");
  if (depth != 0 && depth != 3 && depth != 4 && depth != 5) throw InvalidInput("the wgmma GEMM takes depth 3, 4 or 5");
  if (ksplit < -1 || ksplit > kMaxSplit) throw InvalidInput("the wgmma GEMM takes ksplit -1 (stream-K), 0 (by the shape) or 1 to 8");
  if (kreduce < 0 || kreduce > 2) throw InvalidInput("the wgmma GEMM takes kreduce 0 (by the shape), 1 (cluster) or 2 (workspace)");
  const WgmmaConfig& cfg = bf16 ? pick<true>(mt, depth) : pick<false>(mt, depth);
  TileLaunch k = cfg.base;
  size_grid(k, p, sms);
  // A split stores y with 16-byte stores: N a multiple of 4 and y aligned.
  const bool storable = p.n % 4 == 0 && reinterpret_cast<uintptr_t>(p.y) % 16 == 0;
  const int64_t mblocks = k.grid.y, kunits = (p.rows + kStageRows - 1) / kStageRows;
  const int64_t tiles = (p.nchunks + kGroups - 1) / kGroups * mblocks;
  // The workspace split: every block resident at once (the launch is cooperative), and room
  // for their partials.
  const int64_t resident = (int64_t)sms * cfg.split_per_sm;
  auto ws_fits = [&](int c) {
    return ws_bytes > 0 && tiles * c <= resident && kWsTileCounterBytes >= 8 * tiles && kWsCounterBytes + tiles * c * k.mrows * 1024 <= ws_bytes;
  };
  int s = 0;
  bool via_ws = false;
  if (ksplit > 0) {
    if (!storable) throw InvalidInput("the wgmma GEMM's split of K needs N a multiple of 4 (and an aligned output)");
    s = ksplit;
    via_ws = kreduce == 2 || (kreduce == 0 && tiles > cfg.clusters[s]);
    if (via_ws && !ws_fits(s)) throw InvalidInput("the wgmma GEMM's split through the workspace needs a workspace and at most one wave of blocks");
  } else if (ksplit == 0 && storable) {
    // Units per block: stream-K's even share, against the split's ceil(kunits / s), through a
    // cluster where all of them are resident at once, else through the workspace. The split saves
    // the zeroing of y and the atomic flushes, worth kSplitGain units (bench/notes/gemm.md), so it
    // wins ties by that much; the workspace's round trip costs kWsCost more.
    const int64_t sk = (tiles / mblocks * kunits + k.grid.x - 1) / k.grid.x;
    int64_t best = sk + kSplitGain;
    for (int c = 1; c <= kMaxSplit && c <= kunits; ++c) {
      const int64_t per = (kunits + c - 1) / c;
      if (kreduce != 2 && tiles <= cfg.clusters[c] && per < best) best = per, s = c, via_ws = false;
      if (kreduce != 1 && ws_fits(c) && per + kWsCost < best) best = per + kWsCost, s = c, via_ws = true;
    }
  }
  if (s) {
    k.ksplit = s;
    k.ws_split = via_ws;
    k.smem = cfg.split_smem;
    k.grid = dim3((unsigned)(tiles / mblocks * s), (unsigned)mblocks);
  }
  return k;
}

}  // namespace fastgemm
}  // namespace cuda
}  // namespace mfp4
