// Bit-exact conversions between the small float formats of NVFP4 and Marlin.
// Marked host/device so the CUDA backend computes the very same bytes.
#pragma once
#include <cstdint>
#include <cstring>
#include <cmath>

#if defined(__CUDACC__)
#define MFP4_HD __host__ __device__ __forceinline__
#else
#define MFP4_HD inline
#endif

namespace mfp4 {

MFP4_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

MFP4_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// E4M3 "fn" variant used by safetensors F8_E4M3: no infinities, 0x7F/0xFF are NaN.
MFP4_HD bool e4m3_is_nan(uint8_t b) { return (b & 0x7F) == 0x7F; }
// The Marlin S0E5M3 encoding drops the sign, so any negative non-zero scale is unusable.
MFP4_HD bool e4m3_is_negative(uint8_t b) { return (b & 0x80) && (b & 0x7F) != 0; }

MFP4_HD float e4m3_to_float(uint8_t b) {
  const uint32_t sign = (b >> 7) & 1, exp = (b >> 3) & 0xF, man = b & 7;
  float v;
  if (exp == 0) {
    v = (float)man * (1.0f / 512.0f);  // subnormal: man/8 * 2^-6
  } else {
    v = bits_float(((exp + 120) << 23) | (man << 20));  // rebias 7 -> 127
  }
  if (e4m3_is_nan(b)) v = NAN;
  return sign ? -v : v;
}

// Round-to-nearest-even float -> IEEE half bits (handles subnormals, overflow to inf).
MFP4_HD uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t absx = x & 0x7FFFFFFF;
  if (absx >= 0x7F800000) return sign | (absx > 0x7F800000 ? 0x7E00 : 0x7C00);
  if (absx >= 0x477FF000) return sign | 0x7C00;  // rounds to >= 65520: overflow
  if (absx < 0x38800000) {                        // below 2^-14: half subnormal
    if (absx < 0x33000000) return sign;           // below 2^-25: rounds to zero
    const uint32_t e = absx >> 23;
    const uint32_t m = (absx & 0x7FFFFF) | 0x800000;
    const uint32_t shift = 126 - e;  // 14 - (e-127) + 13
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return sign | h;
  }
  uint32_t h = ((absx >> 13) - (112u << 10));
  const uint32_t rem = absx & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return sign | h;
}

MFP4_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  if (exp == 0) {
    float v = (float)man * (1.0f / 16777216.0f);  // man * 2^-24
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7F800000 | (man << 13));
  return bits_float(sign | ((exp + 112) << 23) | (man << 13));
}

MFP4_HD uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7FFFFFFF) > 0x7F800000) return (uint16_t)((x >> 16) | 0x40);
  const uint32_t lsb = (x >> 16) & 1;
  return (uint16_t)((x + 0x7FFF + lsb) >> 16);
}

MFP4_HD float bf16_bits_to_float(uint16_t b) { return bits_float((uint32_t)b << 16); }

// E2M1 code -> value (bit 3 is the sign).
MFP4_HD float e2m1_to_float(uint32_t code) {
  const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float v = mag[code & 7];
  return (code & 8) ? -v : v;
}

}  // namespace mfp4
