// The Hopper kernel of the fast Marlin GEMM, for M from kTileMinM up on sm_90: the tiled
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
// group has been waited for (wait_group 1 before the barrier, copies ST - 2 stages ahead). Accumulators: N/2 floats per thread, added into y with fp32 atomics when a
// block's column group changes, as in the other kernels.
//
// Built only for sm_90a (wgmma is an architecture-specific instruction); other targets get an
// empty kernel, and wgmma_available() runs a probe so the plan never picks that.
#include "gemm_wgmma_cuda.cuh"

#include <algorithm>

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
  const int64_t u0 = total * blockIdx.x / gridDim.x, u1 = total * (blockIdx.x + 1) / gridDim.x;
  const int n = (int)(u1 - u0);
  if (n <= 0) return;

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
      if (xrow + it * (NT / 8) < NM) cp_async16z_at(at + x_at + it * (NT / 8) * 128, p.x + (ok ? xo[it] + r0 * 16 : 0), ok);
    }
    const bool wok = wk < krows && wc < cols;
    cp_async16z_at(at + w_at, p.w + (wok ? (r0 * p.nchunks + c0) * 32 + wo : 0), wok);
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
    const uint32_t sa = __byte_perm(sj, 0, 0x1010), sc2 = __byte_perm(sj, 0, 0x3232);
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
    const int nk = gcur * CH + cw < p.nchunks ? min(KS, p.rows - r0) : 0;
    // Rows past K or a chunk past N multiply zero fragments (their x is zero-filled too): the
    // wgmma stay outside any branch, which ptxas needs to keep them asynchronous.
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      decode(st, kk, ab[kk]);
#pragma unroll
      for (int r = 0; r < 4; ++r) ab[kk][r] = kk < nk ? ab[kk][r] : 0u;
    }
    wgmma_fence();
    const uint64_t d0 = x_desc(&st->x[0][0]);
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) wgmma<BF16, NM>(acc, ab[kk], d0 + 2 * kk);  // +32 bytes per K/16 row (encoded >> 4)
    wgmma_commit();
    if (i + 1 == n || r0 + KS >= kunits * KS) {
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
#endif
}

template <bool BF16, int NM, int ST>
TileLaunch wgmma_config() {
  static const TileLaunch base = [] {
    TileLaunch k;
    k.mrows = NM;
    k.chunks = kGroups;
    k.depth = ST;
    k.wgmma = true;
    k.smem = sizeof(WgStage<NM>) * ST + 1024;  // + the alignment of the first stage
    const void* fn = reinterpret_cast<const void*>(&marlin_wgmma_kernel<BF16, NM, ST>);
    check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)k.smem), "raising the wgmma GEMM's shared memory");
    int per_sm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, kGroups * 128, k.smem), "reading the wgmma GEMM's occupancy");
    k.grid.x = (unsigned)std::max(per_sm, 1);
    k.launch = [](const Params& p, dim3 grid, size_t smem, cudaStream_t s) {
      marlin_wgmma_kernel<BF16, NM, ST><<<grid, kGroups * 128, smem, s>>>(p);
    };
    return k;
  }();
  return base;
}

// 4 stages (two units copied ahead) measured fastest on the H200 once the per-stage address
// work was cut: 137 us at M = 128 on 28672x8192 against 141 with 3 and 138 with 5 (it was 3
// before, at 194 us; bench/notes/gemm.md).
template <bool BF16>
TileLaunch pick(int mt, int depth) {
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

TileLaunch plan_wgmma(const Params& p, bool bf16, int m_tiles, int depth, int sms) {
  if (!wgmma_fits(p)) throw InvalidInput("N x K too large for the wgmma GEMM (its offsets into the weight are 32-bit)");
  const int mt = m_tiles ? m_tiles : p.m <= 8 ? 1 : p.m <= 16 ? 2 : p.m <= 32 ? 4 : p.m <= 64 ? 8 : 16;
  if (mt != 1 && mt != 2 && mt != 4 && mt != 8 && mt != 16) throw InvalidInput("the wgmma GEMM takes m_tiles 1, 2, 4, 8 or 16");
  if (depth != 0 && depth != 3 && depth != 4 && depth != 5) throw InvalidInput("the wgmma GEMM takes depth 3, 4 or 5");
  TileLaunch k = bf16 ? pick<true>(mt, depth) : pick<false>(mt, depth);
  size_grid(k, p, sms);
  return k;
}

}  // namespace fastgemm
}  // namespace cuda
}  // namespace mfp4
