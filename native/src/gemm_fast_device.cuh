// Device pieces shared by the fast Marlin GEMM's kernels (gemm_fast_cuda.cu: the streaming
// kernel for small M and the dense route; gemm_tile_cuda.cu: the tiled kernel for larger M):
// the launch parameters, the exact E2M1 and scale decoding into the mma's A operand (the
// arithmetic is explained at the top of gemm_fast_cuda.cu), the mma itself and cp.async.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace mfp4 {
namespace cuda {
namespace fastgemm {

struct Params {
  const uint16_t* x;
  const uint4* w;
  const uint8_t* s;
  float* y;
  int m, k, n, np;
  int rows;            // K/16 rows that hold real input features
  int nchunks;         // Np / 64
  int v1;
  float gmul;          // 128 · global value
  int ksplit;          // wgmma kernel: 0 = stream-K, partial tiles added into a zeroed y with atomics;
                       // s >= 1 = each tile's K split among s blocks whose partials are summed and
                       // stored (gemm_wgmma_cuda.cu): through distributed shared memory when ws is
                       // null (a cluster of s blocks), else through the workspace ws
  int zero_y;          // streaming kernel: it zeroes y itself, behind a grid barrier at wsc (cooperative launch)
  float* ws;           // the split's partial tiles (see fast_gemm_workspace_bytes)
  unsigned* wsc;       // the workspace's counters (kWsCounterBytes: the split's, the streaming kernel's barrier)
};

// 16 bytes that are read once: keep them out of L1.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
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

// v's low (H = 0) or high (H = 1) 16-bit half in both halves: the scale of one 8-column tile for
// both of a register's elements. A PTX move of halves, not __byte_perm: ptxas can fold it into the
// multiply's operand selector (.H0_H0), where a PRMT stays an instruction of its own.
template <int H>
__device__ __forceinline__ uint32_t half_bcast(uint32_t v) {
  uint32_t d;
  if constexpr (H == 0) asm("{.reg .b16 l, h;\nmov.b32 {l, h}, %1;\nmov.b32 %0, {l, l};}" : "=r"(d) : "r"(v));
  else asm("{.reg .b16 l, h;\nmov.b32 {l, h}, %1;\nmov.b32 %0, {h, h};}" : "=r"(d) : "r"(v));
  return d;
}

__device__ __forceinline__ uint32_t mul2(uint32_t a, uint32_t b, bool bf16) {
  uint32_t d;
  if (bf16) asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
  else asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// Four scale bytes (b0..b3, columns of 16-col blocks j, j+1: (j,h0) (j+1,h0) (j,h1) (j+1,h1)) as
// two pairs: lo = (b0, b2) = block j's two 8-column tiles, hi = (b1, b3) = block j+1's. The bytes
// moved into place (scale_bits), then brought to their value (scale_value: two exact
// multiplications by 2^112 for bfloat16), so that a warp needing one pair pays for one.
template <bool BF16, bool HI>
__device__ __forceinline__ uint32_t scale_bits(uint32_t sw) {
  if constexpr (BF16) return (HI ? sw >> 4 : sw << 4) & 0x0FF00FF0u;
  else return (HI ? sw >> 1 : sw << 7) & 0x7F807F80u;
}
template <bool BF16>
__device__ __forceinline__ uint32_t scale_value(uint32_t bits) {
  if constexpr (BF16) {
    const uint32_t two112 = 0x77807780u;  // bfloat16 2^112, twice
    return mul2(mul2(bits, two112, true), two112, true);
  } else {
    return bits;
  }
}
template <bool BF16>
__device__ __forceinline__ void scale_pairs(uint32_t sw, uint32_t& lo, uint32_t& hi) {
  lo = scale_value<BF16>(scale_bits<BF16, false>(sw));
  hi = scale_value<BF16>(scale_bits<BF16, true>(sw));
}

// Not volatile: a pure function of its registers, so the compiler may interleave it with the
// decoding and the shared-memory reads around it.
template <bool BF16>
__device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  if constexpr (BF16)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src));
}
// 16 bytes, or 16 zero bytes when !ok (src-size 0 reads nothing; src must still be a valid address).
__device__ __forceinline__ void cp_async16z(void* dst, const void* src, bool ok) {
  const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(ok ? 16 : 0));
}
// The same with the destination as a shared-memory address (for kernels that keep per-thread
// offsets into a stage rather than pointers).
__device__ __forceinline__ void cp_async16z_at(uint32_t dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_async8(void* dst, const void* src) {
  const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(d), "l"(src));
}
// 4 bytes, or 4 zero bytes when !ok (src-size 0 reads nothing).
__device__ __forceinline__ void cp_async4z(void* dst, const void* src, bool ok) {
  const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(d), "l"(src), "r"(ok ? 4 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// K/16 rows per pipeline stage of the kernels that share x through shared memory (tiled and
// wgmma): 64 k, one 128-byte row of x per M row; their stream-K units are this many rows.
constexpr int kStageRows = 4;

// Zeroes a warp's accumulator tile (after it has been added into y).
template <int T>
__device__ __forceinline__ void clear_tile(float (&acc)[T][4][4]) {
#pragma unroll
  for (int t = 0; t < T; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[t][j][i] = 0.0f;
}

// Adds a warp's partial 64 x (8·T) tile of Y^T (chunk c; n8 tiles of M rows row0 + 8t ..) into y,
// times 128 · global. Lane (g, q) holds columns 16j + g (+8) and rows 2q, 2q+1 of each n8 tile
// (the mma accumulator layout of both mma.sync kernels).
template <int T>
__device__ __forceinline__ void add_tile(const float (&acc)[T][4][4], const Params& p, int row0, int c, int lane) {
  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int t = 0; t < T; ++t)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int row = row0 + 8 * t + 2 * q + e;
      if (row < p.m) {
        float* out = p.y + (size_t)row * p.n;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int col = 64 * c + 16 * j + g;
          if (col < p.n) atomicAdd(out + col, acc[t][j][e] * p.gmul);
          if (col + 8 < p.n) atomicAdd(out + col + 8, acc[t][j][2 + e] * p.gmul);
        }
      }
    }
}

// The scale bytes of a stage of kStageRows K/16 rows x CH chunks, copied in 16-byte pieces by the
// first kStageRows·4·CH threads of a block: v2 keeps [K/16 row][chunk] 64 bytes (4 pieces), v1 [row pair][chunk]
// 128 bytes (8 pieces). The piece's place depends only on the thread, so it is worked out once.
template <int CH>
struct ScaleCopy {
  bool active;
  int k, c, off;  // first K/16 row and chunk of the piece (relative to the unit), byte offset
  __device__ __forceinline__ ScaleCopy(const Params& p, int tid) {
    active = tid < kStageRows * CH * 4;
    k = p.v1 ? 2 * (tid / (CH * 8)) : tid / (CH * 4);
    c = (tid / (p.v1 ? 8 : 4)) % CH;
    off = p.v1 ? (k >> 1) * 2 * p.np + 128 * c + 16 * (tid % 8) : k * p.np + 64 * c + 16 * (tid % 4);
  }
  // The unit at K/16 row r0 (a multiple of kStageRows, so even for v1's row pairs) and chunk c0, krows and cols what is left of K and N.
  // A piece past K or N is zero-filled, not skipped: its weight runs are zero-filled too, and a
  // zero scale keeps their product zero, where a stale one could be Inf (0 x Inf = NaN).
  __device__ __forceinline__ void copy(const Params& p, uint4* dst, int tid, int r0, int c0, int krows, int cols) const {
    const bool ok = k < krows && c < cols;
    if (active) cp_async16z(dst + tid, ok ? p.s + (size_t)r0 * p.np + 64 * c0 * (p.v1 ? 2 : 1) + off : p.s, ok);
  }
};

// Four 8x8 b16 matrices from shared memory (lanes 8i..8i+7 give the row addresses of matrix i):
// lane (g, q) receives row g, elements 2q and 2q+1 of each, which is an mma B fragment when the
// rows are activations (x rows) and the columns 8 consecutive k.
__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const void* smem) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(a));
}
// Two of them (lanes 0-15 give the row addresses).
__device__ __forceinline__ void ldmatrix_x2(uint32_t& r0, uint32_t& r1, const void* smem) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r0), "=r"(r1) : "r"(a));
}

}  // namespace fastgemm
}  // namespace cuda
}  // namespace mfp4
