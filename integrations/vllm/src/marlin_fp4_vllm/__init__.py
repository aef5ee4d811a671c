"""marlin-fp4-vllm: serve marlin-fp4's Marlin-ready checkpoints with vLLM, without repacking.

Two halves with one contract (docs/FORMAT.md §8 of marlin-fp4):
- a torch-only reference loader and reference GEMM (no vLLM import), usable and tested
  anywhere PyTorch runs;
- a vLLM plugin (`marlin_fp4_vllm.plugin:register`, entry point group
  `vllm.general_plugins`) that registers the quantization method `marlin_fp4` and slices
  tensors with the same functions the reference loader uses.
"""

from .checkpoint import CheckpointError, MarlinCheckpoint
from .loader import LinearTensors, MoeTensors, load_linear, load_moe, load_rank
from .reference_gemm import dequantize_marlin_linear, reference_marlin_gemm

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "LinearTensors",
    "MarlinCheckpoint",
    "MoeTensors",
    "dequantize_marlin_linear",
    "load_linear",
    "load_moe",
    "load_rank",
    "reference_marlin_gemm",
]
