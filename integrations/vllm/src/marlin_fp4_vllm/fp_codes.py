"""Number formats of NVFP4 and of Marlin's processed scales, decoded with integer ops in torch.

Written from docs/FORMAT.md §1 and §3 (not from marlin-fp4's C++), and without torch's
float8 dtypes, which Debian's torch 1.13 does not have.
"""

from __future__ import annotations

import torch

#: E2M1 code (low 3 bits) -> magnitude; bit 3 is the sign (FORMAT.md §1).
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    """4-bit E2M1 codes (any integer dtype, values 0..15) -> float32 values."""
    table = torch.tensor(E2M1_MAGNITUDES + tuple(-v for v in E2M1_MAGNITUDES), dtype=torch.float32)
    return table[codes.long()]


def e4m3_values(raw: torch.Tensor) -> torch.Tensor:
    """E4M3 (fn) bytes -> float32: bias 7, subnormals below exponent 1, 0x7F/0xFF NaN."""
    byte = raw.to(torch.int32) & 0xFF
    sign = torch.where(byte >= 0x80, -1.0, 1.0)
    exponent = (byte >> 3) & 0xF
    mantissa = (byte & 0x7).to(torch.float32)
    normal = (1.0 + mantissa / 8.0) * torch.pow(2.0, (exponent - 7).to(torch.float32))
    subnormal = mantissa / 8.0 * 2.0**-6
    value = sign * torch.where(exponent == 0, subnormal, normal)
    return torch.where((byte & 0x7F) == 0x7F, torch.tensor(float("nan")), value)


def s0e5m3_values(raw: torch.Tensor) -> torch.Tensor:
    """Marlin's processed scale bytes -> float32 (FORMAT.md §3 step 5: v = half(B << 7) / 128)."""
    bits = (raw.to(torch.int32) & 0xFF) << 7  # at most 0x7F80: a non-negative int16
    return bits.to(torch.int16).view(torch.float16).to(torch.float32) / 128.0
