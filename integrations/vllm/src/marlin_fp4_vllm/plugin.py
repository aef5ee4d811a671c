"""vLLM general-plugin entry point: registers the quantization method `marlin_fp4`.

vLLM calls every `vllm.general_plugins` entry point in every process it starts (maybe more
than once per process, vllm/plugins/__init__.py), so registering must be idempotent; vLLM
itself is imported only here, never by the reference loader.
"""

from __future__ import annotations

from .vllm_sources import QUANT_METHOD


def register() -> None:
    """Register `marlin_fp4` with vLLM's quantization registry (once per process)."""
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, register_quantization_config

    if QUANT_METHOD in QUANTIZATION_METHODS:
        return
    from .vllm_method import MarlinFp4Config

    register_quantization_config(QUANT_METHOD)(MarlinFp4Config)
