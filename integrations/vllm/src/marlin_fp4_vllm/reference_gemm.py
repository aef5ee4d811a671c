"""Pure-torch reference for the Marlin FP4 GEMM: Y = X @ W^T from the Marlin-layout tensors.

It decodes the tensors the loader returns (FORMAT.md §2-§4: codes x decoded scale x processed
global / 2^(bias-7)) and multiplies in float64, so that a test can hold the loader's output
against the NVFP4 source without a GPU or vLLM.
"""

from __future__ import annotations

import torch

from .checkpoint import EXPONENT_BIAS
from .fp_codes import e2m1_values
from .marlin_layout import decode_scales, unpack_weight


def dequantize_marlin_linear(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_scale_2: torch.Tensor,
    activation_dtype: str,
) -> torch.Tensor:
    """W [padded_n, padded_k] in float64, as the kernel sees it (padding included)."""
    codes = unpack_weight(weight)  # [K, N]
    scales = decode_scales(weight_scale)  # [K/16, N], v * sf
    # The processed global is weight_scale_2 * 2^(bias-7) / sf (FORMAT.md §4 v2).
    global_scale = weight_scale_2.reshape(-1)[0].to(torch.float64) / 2.0 ** (EXPONENT_BIAS[activation_dtype] - 7)
    per_value = scales.to(torch.float64).repeat_interleave(16, dim=0)
    return (e2m1_values(codes).to(torch.float64) * per_value * global_scale).T.contiguous()


def reference_marlin_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_scale_2: torch.Tensor,
    size_n: int,
    activation_dtype: str,
) -> torch.Tensor:
    """Y [M, size_n] float64 = X @ W^T; X is zero-padded along K to the weight's padded K."""
    w = dequantize_marlin_linear(weight, weight_scale, weight_scale_2, activation_dtype)
    padded_k = w.shape[1]
    x64 = x.to(torch.float64)
    if x64.shape[-1] < padded_k:
        x64 = torch.nn.functional.pad(x64, (0, padded_k - x64.shape[-1]))
    return (x64 @ w.T)[..., :size_n]
