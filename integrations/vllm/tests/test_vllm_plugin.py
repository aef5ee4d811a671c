"""The vLLM side: registration, and the plugin's linear against the reference GEMM on a GPU.

Needs an installed vLLM (and, for the GEMM, a CUDA GPU); skipped with that reason otherwise.
Without vLLM, what is checked is that the torch-only half never imports it.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (pip install vllm, then pip install -e integrations/vllm)")


def test_reference_half_does_not_import_vllm():
    import marlin_fp4_vllm  # noqa: F401
    import marlin_fp4_vllm.plugin  # noqa: F401

    if not HAVE_VLLM:
        assert "vllm" not in sys.modules


@needs_vllm
def test_register_adds_marlin_fp4_once():
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config

    from marlin_fp4_vllm.plugin import register

    register()
    register()  # vLLM may call a plugin more than once per process
    assert QUANTIZATION_METHODS.count("marlin_fp4") == 1
    config_cls = get_quantization_config("marlin_fp4")
    config = config_cls.from_config({"quant_method": "marlin_fp4", "layout": "v2", "activation_dtype": "bfloat16", "group_size": 16})
    assert config.get_name() == "marlin_fp4"
    with pytest.raises(ValueError, match="layout v1 is not supported"):
        config_cls.from_config({"quant_method": "marlin_fp4", "layout": "v1", "activation_dtype": "float16", "group_size": 16})


@needs_vllm
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU for vLLM's Marlin FP4 GEMM")
def test_vllm_marlin_gemm_on_loader_tensors_matches_reference(converted):
    from vllm.model_executor.layers.quantization.utils.marlin_utils import marlin_make_workspace_new
    from vllm.model_executor.layers.quantization.utils.marlin_utils_fp4 import apply_fp4_marlin_linear

    from marlin_fp4_vllm import MarlinCheckpoint, load_rank
    from marlin_fp4_vllm.reference_gemm import reference_marlin_gemm

    directory, _ = converted("llama-tp")
    ckpt = MarlinCheckpoint(str(directory))
    tensors = load_rank(str(directory))
    layer = "model.layers.0.self_attn.qkv_proj"
    device = torch.device("cuda")
    x = torch.randn(16, 128, dtype=torch.bfloat16, device=device)
    weight = tensors[f"{layer}.weight"].to(device)
    n = weight.shape[1] // 2
    y = apply_fp4_marlin_linear(
        input=x,
        weight=weight,
        weight_scale=tensors[f"{layer}.weight_scale"].to(device).view(torch.float8_e4m3fn),
        weight_global_scale=tensors[f"{layer}.weight_scale_2"].to(device),
        workspace=marlin_make_workspace_new(device),
        size_n=n,
        size_k=128,
    )
    want = reference_marlin_gemm(x.cpu(), tensors[f"{layer}.weight"], tensors[f"{layer}.weight_scale"], tensors[f"{layer}.weight_scale_2"], n, ckpt.activation_dtype)
    error = (torch.linalg.norm(y.cpu().double() - want) / torch.linalg.norm(want)).item()
    assert error < 1e-2
