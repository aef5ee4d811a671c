"""Dequantize an NVFP4 source checkpoint in torch (FORMAT.md §1), the ground truth for tests.

W[n, k] = E2M1 code x E4M3 block scale x global scale; the even k is the low nibble.
ModelOpt stores the global as `weight_scale_2`; compressed-tensors stores its reciprocal as
`weight_global_scale` and the codes as `weight_packed`.
"""

from __future__ import annotations

import json
import os

import torch

from .fp_codes import e2m1_values, e4m3_values
from .safetensors_io import TensorEntry, read_header, read_tensor


class NvFp4Source:
    """An NVFP4 checkpoint directory (ModelOpt or compressed-tensors), tensors read on demand."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.realpath(directory)
        with open(os.path.join(self.directory, "config.json"), encoding="utf-8") as handle:
            self.config = json.load(handle)
        self.entries: dict[str, TensorEntry] = {}
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".safetensors"):
                self.entries.update(read_header(os.path.join(self.directory, name))[0])

    def tensor(self, name: str) -> torch.Tensor:
        return read_tensor(self.entries[name])

    def dequantize(self, prefix: str) -> torch.Tensor:
        """The float64 weight [N, K] of one quantized module."""
        if f"{prefix}.weight_packed" in self.entries:
            packed = self.tensor(f"{prefix}.weight_packed")
            # The float32 reciprocal, as vLLM computes it (and as the converter stores it).
            reciprocal = 1.0 / self.tensor(f"{prefix}.weight_global_scale").to(torch.float32).reshape(-1)[0]
            global_scale = reciprocal.to(torch.float64)
        else:
            packed = self.tensor(f"{prefix}.weight")
            global_scale = self.tensor(f"{prefix}.weight_scale_2").to(torch.float64).reshape(-1)[0]
        n, half_k = packed.shape
        codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(n, 2 * half_k)
        block = e4m3_values(self.tensor(f"{prefix}.weight_scale")).to(torch.float64)
        return e2m1_values(codes).to(torch.float64) * block.repeat_interleave(16, dim=1) * global_scale
