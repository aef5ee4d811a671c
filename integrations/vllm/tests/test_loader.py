"""Reference loader on every fixture: shapes, fused concatenation, TP slices, refusals."""

from __future__ import annotations

import struct

import pytest
import torch

from conftest import copy_tree, overwrite_tensor
from marlin_fp4_vllm import CheckpointError, MarlinCheckpoint, load_rank
from marlin_fp4_vllm.partition import PartitionError

COMMITTED = ["llama-tiny-modelopt", "llama-tiny-ct", "qwen3-moe-tiny-modelopt", "qwen3-moe-tiny-ct"]


@pytest.mark.parametrize("name", COMMITTED + ["llama-tp", "qwen3-moe-tp"])
def test_tp1_loads_every_layer_with_kernel_shapes(converted, name):
    directory, _ = converted(name)
    ckpt = MarlinCheckpoint(str(directory))
    tensors = load_rank(str(directory))
    layers = {key.rsplit(".", 1)[0] for key in tensors if key.endswith(".weight")}
    # Every converted linear appears, fused or alone; every MoE stack appears.
    covered = {p for p in ckpt.linear_prefixes() if any(p.rsplit(".", 1)[0] in layer for layer in layers)}
    assert covered == set(ckpt.linear_prefixes())
    for prefix in ckpt.moe_prefixes():
        assert tensors[f"{prefix}.w13_weight"].dtype == torch.int32
    for layer in layers:
        weight, scale = tensors[f"{layer}.weight"], tensors[f"{layer}.weight_scale"]
        assert weight.dtype == torch.int32 and scale.dtype == torch.uint8
        assert weight.shape[0] == scale.shape[0] and weight.shape[1] == 2 * scale.shape[1]
        assert tensors[f"{layer}.weight_scale_2"].shape == (1,)


def test_fused_qkv_is_the_parts_concatenated(converted):
    directory, _ = converted("llama-tiny-modelopt")
    ckpt = MarlinCheckpoint(str(directory))
    tensors = load_rank(str(directory))
    prefix = "model.layers.0.self_attn"
    qkv = tensors[f"{prefix}.qkv_proj.weight"]
    parts = [ckpt.tensor(f"{prefix}.{p}.weight") for p in ("q_proj", "k_proj", "v_proj")]
    assert qkv.shape == (8, 512)  # K 128 / 16 rows; 2 words x (128 + 64 + 64) columns
    assert torch.equal(qkv, torch.cat(parts, dim=1))
    scales = [ckpt.tensor(f"{prefix}.{p}.weight_scale") for p in ("q_proj", "k_proj", "v_proj")]
    assert torch.equal(tensors[f"{prefix}.qkv_proj.weight_scale"], torch.cat(scales, dim=1))
    assert torch.equal(tensors[f"{prefix}.qkv_proj.weight_scale_2"], ckpt.tensor(f"{prefix}.q_proj.weight_scale_2"))


def test_fused_parts_with_different_globals_are_refused(converted, tmp_path):
    directory, _ = converted("llama-tiny-modelopt")
    broken = copy_tree(directory, tmp_path / "older-converter")
    name = "model.layers.1.self_attn.k_proj.weight_scale_2"
    value = MarlinCheckpoint(str(broken)).tensor(name).item()
    overwrite_tensor(broken, name, struct.pack("<f", value * 2))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.qkv_proj: fused parts .*q_proj and .*k_proj have different processed global scales"):
        load_rank(str(broken))


@pytest.mark.parametrize("name", ["llama-tp", "qwen3-moe-tp"])
@pytest.mark.parametrize("tp_size", [2, 4])
def test_ranks_are_slices_that_tile_the_whole(converted, name, tp_size):
    directory, _ = converted(name)
    whole = load_rank(str(directory))
    ranks = [load_rank(str(directory), tp_size, rank) for rank in range(tp_size)]
    ckpt = MarlinCheckpoint(str(directory))
    for layer_weight in [k for k in whole if k.endswith(".weight") and ("down_proj" in k or "o_proj" in k)]:
        # Row-parallel: ranks stack along the packed rows.
        assert torch.equal(torch.cat([r[layer_weight] for r in ranks], dim=0), whole[layer_weight])
    gate_up = [k for k in whole if k.endswith("gate_up_proj.weight")]
    for key in gate_up:
        # Column-parallel merged: each rank holds its share of gate, then its share of up.
        n = whole[key].shape[1] // 2
        gate, up = whole[key][:, :n], whole[key][:, n:]
        share = n // tp_size
        for rank, tensors in enumerate(ranks):
            expected = torch.cat([gate[:, rank * share : (rank + 1) * share], up[:, rank * share : (rank + 1) * share]], 1)
            assert torch.equal(tensors[key], expected)
    for prefix in ckpt.moe_prefixes():
        w2 = torch.cat([r[f"{prefix}.w2_weight"] for r in ranks], dim=1)
        assert torch.equal(w2, whole[f"{prefix}.w2_weight"])
        assert all(torch.equal(r[f"{prefix}.w13_weight_scale_2"], whole[f"{prefix}.w13_weight_scale_2"]) for r in ranks)


def test_qkv_tp_split_replicates_kv_heads(converted):
    # llama-tp: 4 heads, 2 KV heads, head_dim 64. TP 4: one q head per rank, KV head rank // 2.
    directory, _ = converted("llama-tp")
    ckpt = MarlinCheckpoint(str(directory))
    prefix = "model.layers.0.self_attn"
    q, k, v = (ckpt.tensor(f"{prefix}.{p}.weight") for p in ("q_proj", "k_proj", "v_proj"))
    for rank in range(4):
        got = load_rank(str(directory), 4, rank)[f"{prefix}.qkv_proj.weight"]
        kv = rank // 2
        expected = torch.cat([q[:, 128 * rank : 128 * (rank + 1)], k[:, 128 * kv : 128 * (kv + 1)], v[:, 128 * kv : 128 * (kv + 1)]], 1)
        assert torch.equal(got, expected)


@pytest.mark.parametrize(
    ("name", "tp_size", "reason"),
    [
        ("llama-tiny-modelopt", 2, r"gate_up_proj: tensor parallel size 2 gives N 96 per rank, not a multiple of 64"),
        ("llama-tiny-modelopt", 4, r"gate_up_proj: tensor parallel size 4 gives N 48 per rank, not a multiple of 64"),
        ("qwen3-moe-tiny-modelopt", 2, r"qkv_proj: 1 attention heads do not split over 2 ranks"),
        ("llama-tp", 3, r"gate_up_proj: N 256 does not split into 3 equal parts"),
    ],
)
def test_tp_sizes_the_shapes_forbid_are_refused_with_the_reason(converted, name, tp_size, reason):
    directory, _ = converted(name)
    with pytest.raises(PartitionError, match=reason):
        load_rank(str(directory), tp_size, 0)


def test_v1_and_foreign_checkpoints_are_refused(converted, tmp_path):
    import json
    import subprocess

    from conftest import FIXTURES, REPO

    out = tmp_path / "v1"
    subprocess.run(["node", "bin/marlin-fp4.js", "convert", str(FIXTURES / "llama-tiny-modelopt"), "-o", str(out), "--layout", "v1", "--dtype", "float16", "--device", "cpu", "--quiet"], cwd=REPO, check=True)
    with pytest.raises(CheckpointError, match="layout v1 is not supported"):
        MarlinCheckpoint(str(out))
    with pytest.raises(CheckpointError, match="quant_method is 'modelopt', not 'marlin_fp4'"):
        MarlinCheckpoint(str(FIXTURES / "llama-tiny-modelopt"))
    config = json.loads((FIXTURES / "llama-tiny-modelopt" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "modelopt"


def test_moe_intermediate_too_small_for_the_split_is_refused(converted):
    from marlin_fp4_vllm.loader import load_moe

    directory, _ = converted("qwen3-moe-tiny-modelopt")
    with pytest.raises(PartitionError, match=r"model\.layers\.0\.mlp\.experts: tensor parallel size 2 gives N 32 per rank, not a multiple of 64"):
        load_moe(MarlinCheckpoint(str(directory)), "model.layers.0.mlp.experts", 2, 0)
