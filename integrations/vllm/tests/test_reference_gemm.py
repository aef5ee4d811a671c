"""Reference GEMM on the loader's tensors against the dequantized NVFP4 source, per rank."""

from __future__ import annotations

import pytest
import torch

from marlin_fp4_vllm import MarlinCheckpoint, load_rank
from marlin_fp4_vllm.loader import fused_layer_groups
from marlin_fp4_vllm.marlin_layout import weight_permutation
from marlin_fp4_vllm.reference_gemm import reference_marlin_gemm
from marlin_fp4_vllm.source import NvFp4Source

#: Relative Frobenius error allowed: both sides are exact float64 products of the same
#: values, so anything above rounding noise is a layout or scale mistake (those give ~1).
TOLERANCE = 1e-12


def test_weight_permutation_matches_the_format_text():
    perm = weight_permutation()
    assert perm[:8].tolist() == [0, 128, 8, 136, 16, 144, 24, 152]
    assert sorted(perm.tolist()) == list(range(1024))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (torch.linalg.norm(got - want) / torch.linalg.norm(want)).item()


def source_weight(source: NvFp4Source, prefixes: list[str]) -> torch.Tensor:
    return torch.cat([source.dequantize(p) for p in prefixes], dim=0)


@pytest.mark.parametrize("name", ["llama-tiny-modelopt", "llama-tiny-ct", "qwen3-moe-tiny-modelopt", "qwen3-moe-tiny-ct", "llama-tp"])
def test_dense_layers_match_the_source_at_tp1(converted, name):
    directory, source_dir = converted(name)
    ckpt = MarlinCheckpoint(str(directory))
    source = NvFp4Source(str(source_dir))
    tensors = load_rank(str(directory))
    x = torch.randn(7, ckpt.config["hidden_size"] * 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for layer, prefixes in fused_layer_groups(ckpt).items():
        w = source_weight(source, prefixes)
        n, k = w.shape
        y = reference_marlin_gemm(x[:, :k], tensors[f"{layer}.weight"], tensors[f"{layer}.weight_scale"], tensors[f"{layer}.weight_scale_2"], n, ckpt.activation_dtype)
        assert relative_error(y, x[:, :k] @ w.T) < TOLERANCE, layer


@pytest.mark.parametrize("tp_size", [2, 4])
def test_tp_ranks_sum_to_the_source_gemm(converted, tp_size):
    # Row-parallel layers: the ranks' partial products sum to the whole (vLLM's all-reduce).
    # Column-parallel: each rank's output is its columns of the whole.
    directory, source_dir = converted("llama-tp")
    ckpt = MarlinCheckpoint(str(directory))
    source = NvFp4Source(str(source_dir))
    ranks = [load_rank(str(directory), tp_size, r) for r in range(tp_size)]
    prefix = "model.layers.1"
    down = source.dequantize(f"{prefix}.mlp.down_proj")
    x = torch.randn(5, down.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    share = down.shape[1] // tp_size
    total = sum(
        reference_marlin_gemm(x[:, r * share : (r + 1) * share], t[f"{prefix}.mlp.down_proj.weight"], t[f"{prefix}.mlp.down_proj.weight_scale"], t[f"{prefix}.mlp.down_proj.weight_scale_2"], down.shape[0], ckpt.activation_dtype)
        for r, t in enumerate(ranks)
    )
    assert relative_error(total, x @ down.T) < TOLERANCE
    gate, up = source.dequantize(f"{prefix}.mlp.gate_proj"), source.dequantize(f"{prefix}.mlp.up_proj")
    xg = torch.randn(5, gate.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    n = gate.shape[0] // tp_size
    for r, t in enumerate(ranks):
        y = reference_marlin_gemm(xg, t[f"{prefix}.mlp.gate_up_proj.weight"], t[f"{prefix}.mlp.gate_up_proj.weight_scale"], t[f"{prefix}.mlp.gate_up_proj.weight_scale_2"], 2 * n, ckpt.activation_dtype)
        want = xg @ torch.cat([gate[r * n : (r + 1) * n], up[r * n : (r + 1) * n]]).T
        assert relative_error(y, want) < TOLERANCE


@pytest.mark.parametrize("name", ["qwen3-moe-tiny-modelopt", "qwen3-moe-tiny-ct", "qwen3-moe-tp"])
def test_moe_experts_match_the_source(converted, name):
    directory, source_dir = converted(name)
    ckpt = MarlinCheckpoint(str(directory))
    source = NvFp4Source(str(source_dir))
    tensors = load_rank(str(directory))
    gate_name = "w1" if name.endswith("-ct") else "gate_proj"
    up_name, down_name = ("w3", "w2") if name.endswith("-ct") else ("up_proj", "down_proj")
    for prefix in ckpt.moe_prefixes():
        experts = tensors[f"{prefix}.w13_weight"].shape[0]
        for e in range(experts):
            w13 = torch.cat([source.dequantize(f"{prefix}.{e}.{gate_name}"), source.dequantize(f"{prefix}.{e}.{up_name}")])
            x = torch.randn(3, w13.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(e))
            y = reference_marlin_gemm(x, tensors[f"{prefix}.w13_weight"][e], tensors[f"{prefix}.w13_weight_scale"][e], tensors[f"{prefix}.w13_weight_scale_2"][e : e + 1], w13.shape[0], ckpt.activation_dtype)
            assert relative_error(y, x @ w13.T) < TOLERANCE, (prefix, e)
            w2 = source.dequantize(f"{prefix}.{e}.{down_name}")
            x2 = torch.randn(3, w2.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(100 + e))
            y2 = reference_marlin_gemm(x2, tensors[f"{prefix}.w2_weight"][e], tensors[f"{prefix}.w2_weight_scale"][e], tensors[f"{prefix}.w2_weight_scale_2"][e : e + 1], w2.shape[0], ckpt.activation_dtype)
            assert relative_error(y2, x2 @ w2.T) < TOLERANCE, (prefix, e)


#: docs/FORMAT.md §8.1: a re-encoded block scale moves a weight by at most 2^-4 of itself
#: (or 2^-10 of the shared global per unit of code, below E4M3's normal range).
REENCODING_BOUND = 2.0**-4


@pytest.mark.parametrize("name", ["llama-split-globals", "qwen3-moe-split-globals"])
def test_parts_with_different_globals_load_and_stay_within_the_reencoding_bound(converted, name):
    # The parts share one processed global (the loader refuses otherwise), and their product is
    # the source's within the bound of the re-encoding, which is not exact here.
    directory, source_dir = converted(name)
    ckpt = MarlinCheckpoint(str(directory))
    source = NvFp4Source(str(source_dir))
    tensors = load_rank(str(directory))
    x = torch.randn(7, ckpt.config["hidden_size"] * 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = {}
    for layer, prefixes in fused_layer_groups(ckpt).items():
        w = source_weight(source, prefixes)
        n, k = w.shape
        y = reference_marlin_gemm(x[:, :k], tensors[f"{layer}.weight"], tensors[f"{layer}.weight_scale"], tensors[f"{layer}.weight_scale_2"], n, ckpt.activation_dtype)
        errors[layer] = relative_error(y, x[:, :k] @ w.T)
    fused = [layer for layer, prefixes in fused_layer_groups(ckpt).items() if len(prefixes) > 1]
    assert fused
    for layer, err in errors.items():
        assert err < REENCODING_BOUND, (layer, err)
        if layer not in fused:
            assert err < TOLERANCE, layer
    assert max(errors[layer] for layer in fused) > TOLERANCE  # re-encoded, not exact
    # MoE: each expert's gate and up share the larger of their globals in w13.
    for prefix in ckpt.moe_prefixes():
        for e in range(tensors[f"{prefix}.w13_weight"].shape[0]):
            w13 = torch.cat([source.dequantize(f"{prefix}.{e}.gate_proj"), source.dequantize(f"{prefix}.{e}.up_proj")])
            x13 = torch.randn(3, w13.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(e))
            y = reference_marlin_gemm(x13, tensors[f"{prefix}.w13_weight"][e], tensors[f"{prefix}.w13_weight_scale"][e], tensors[f"{prefix}.w13_weight_scale_2"][e : e + 1], w13.shape[0], ckpt.activation_dtype)
            err = relative_error(y, x13 @ w13.T)
            assert TOLERANCE < err < REENCODING_BOUND, (prefix, e, err)
