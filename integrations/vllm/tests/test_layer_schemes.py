"""Per-layer method choice (layer_schemes.py) and the refusals of checkpoint.py.

The table tests use the shape convert writes (src/format/quant-config.ts outputLayerTable:
converted entries `{"quant_algo": "MARLIN_FP4", …}`, FP8 entries verbatim). The end-to-end
test converts the fixture generator's ModelOpt MIXED_PRECISION structure with the real CLI
and checks that every layer resolves to the method its tensors need.
"""

from __future__ import annotations

import json

import pytest

from conftest import convert
from marlin_fp4_vllm.checkpoint import CheckpointError, MarlinCheckpoint, check_quantization_config
from marlin_fp4_vllm.layer_schemes import MARLIN_FP4, UNQUANTIZED, LayerSchemeError, layer_algo, resolve_algo, source_kv_cache_algo
from marlin_fp4_vllm.safetensors_io import read_header

PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
CONVERTED = {"quant_algo": MARLIN_FP4, "source_quant_algo": "NVFP4", "group_size": 16}
TABLE = {
    "model.layers.0.self_attn.q_proj": {"quant_algo": "FP8"},
    "model.layers.0.self_attn.k_proj": {"quant_algo": "FP8"},
    "model.layers.0.self_attn.v_proj": {"quant_algo": "FP8"},
    "model.layers.0.mlp.experts": CONVERTED,
    "model.layers.1.mlp.experts.0.gate_proj": {**CONVERTED, "source_quant_algo": "W4A16_NVFP4"},
    "model.layers.1.mlp.shared_expert.gate_proj": CONVERTED,
    "model.layers.1.mlp.shared_expert.up_proj": CONVERTED,
    "model.language_model.layers.2.self_attn.o_proj": {"quant_algo": "fp8"},
    "lm_head": CONVERTED,
}


def quant(table=None, **original):
    q = {"quant_method": "marlin_fp4", "layout": "v2", "activation_dtype": "bfloat16", "group_size": 16, "original_quantization_config": original}
    if table is not None:
        q["quantized_layers"] = table
    return q


@pytest.mark.parametrize(
    ("prefix", "want"),
    [
        ("model.layers.0.self_attn.q_proj", "FP8"),  # exact key
        ("model.layers.0.self_attn.qkv_proj", "FP8"),  # fused: every shard FP8
        ("model.layers.0.mlp.experts", MARLIN_FP4),  # the experts module's own key
        ("model.layers.1.mlp.experts", MARLIN_FP4),  # a key inside the module (per-expert entries)
        ("model.layers.1.mlp.shared_expert.gate_up_proj", MARLIN_FP4),
        ("language_model.model.layers.2.self_attn.o_proj", "FP8"),  # the two multimodal spellings; case folded
        ("language_model.lm_head", MARLIN_FP4),  # *.lm_head -> lm_head
        ("model.layers.0.self_attn.o_proj", None),  # not in the table
        ("model.layers.1.mlp.gate", None),
    ],
)
def test_resolution_follows_vllm_modelopt_mixed(prefix, want):
    assert resolve_algo(TABLE, prefix, PACKED) == want


def test_fused_parts_with_different_algos_are_refused():
    table = {**TABLE, "model.layers.0.self_attn.k_proj": CONVERTED}
    with pytest.raises(LayerSchemeError, match=r"^model\.layers\.0\.self_attn\.qkv_proj: its fused parts .* different quant_algo \['FP8', 'MARLIN_FP4'\]"):
        resolve_algo(table, "model.layers.0.self_attn.qkv_proj", PACKED)


def test_a_fused_layer_takes_the_algo_of_the_parts_the_table_names():
    # vLLM collects the shards that are present; absent ones do not veto (PR #47318, sparse tables).
    table = {"model.layers.0.mlp.gate_proj": CONVERTED}
    assert resolve_algo(table, "model.layers.0.mlp.gate_up_proj", PACKED) == MARLIN_FP4


def test_layer_algo_unquantized_excluded_and_whole_model():
    mixed = quant(TABLE, quantization={"quant_algo": "MIXED_PRECISION", "exclude_modules": ["model.layers.1.mlp.shared_expert*"]})
    assert layer_algo(mixed, "model.layers.0.self_attn.o_proj", PACKED) == UNQUANTIZED
    assert layer_algo(mixed, "model.layers.1.mlp.shared_expert.gate_up_proj", PACKED) == UNQUANTIZED  # excluded first
    assert layer_algo(mixed, "model.layers.0.self_attn.qkv_proj", PACKED) == "FP8"
    whole = quant(quant_algo="NVFP4", ignore=["lm_head", "re:.*mlp\\.gate$"])
    assert layer_algo(whole, "model.layers.0.self_attn.qkv_proj", PACKED) == MARLIN_FP4
    assert layer_algo(whole, "lm_head", PACKED) == UNQUANTIZED
    assert layer_algo(whole, "model.layers.3.mlp.gate", PACKED) == UNQUANTIZED


def test_kv_cache_algo_from_either_config_form():
    assert source_kv_cache_algo({"quantization": {"kv_cache_quant_algo": "fp8"}}) == "FP8"
    assert source_kv_cache_algo({"kv_cache_scheme": {"type": "float", "num_bits": 8}}) == "FP8"
    assert source_kv_cache_algo({"quant_algo": "NVFP4"}) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scheme": "mxfp4", "group_size": 32}, r"^config\.json: scheme mxfp4 .*MXFP4 Marlin-ready checkpoints are not served by this plugin version yet$"),
        ({"layout": "v1"}, r"^config\.json: layout v1 is not supported"),
        ({"quantized_layers": {"a.b": {"quant_algo": "NVFP4"}}}, r"^config\.json: quantized_layers\['a\.b'\] has quant_algo 'NVFP4'; marlin_fp4 serves MARLIN_FP4"),
        ({"quantized_layers": {"a.b": {"quant_algo": "W4A16_AWQ"}}}, r"quant_algo 'W4A16_AWQ'"),
        ({"quantized_layers": {}}, r"quantized_layers must be a non-empty mapping"),
    ],
)
def test_config_refusals(change, message):
    with pytest.raises(CheckpointError, match=message):
        check_quantization_config({"quantization_config": {**quant(), **change}}, "config.json")


@pytest.mark.parametrize("algo_in", ["hf_quant_config", "config"])
def test_converted_mixed_precision_every_layer_gets_the_method_its_tensors_need(structure_source, tmp_path, algo_in):
    out = tmp_path / "out"
    done = convert(structure_source("mixed-precision", algo_in), out)
    assert done.returncode == 0, done.stderr
    ckpt = MarlinCheckpoint(str(out))
    q = ckpt.quantization
    dtypes = {}
    for shard in out.glob("*.safetensors"):
        entries, _ = read_header(str(shard))
        dtypes.update({name: entry.dtype for name, entry in entries.items()})
    # vLLM's module prefixes of this Qwen3-MoE-like model.
    for layer in range(2):
        p = f"model.layers.{layer}"
        assert layer_algo(q, f"{p}.self_attn.qkv_proj", PACKED) == "FP8"
        assert layer_algo(q, f"{p}.self_attn.o_proj", PACKED) == "FP8"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert dtypes[f"{p}.self_attn.{name}.weight"] == "F8_E4M3"  # passed through for vLLM's FP8 method
        assert layer_algo(q, f"{p}.mlp.experts", PACKED) == MARLIN_FP4
        assert f"{p}.mlp.experts" in ckpt.moe_prefixes()  # ...and there are Marlin stacks for it
        assert layer_algo(q, f"{p}.mlp.gate", PACKED) == UNQUANTIZED
    assert layer_algo(q, "lm_head", PACKED) == UNQUANTIZED
    assert dtypes["lm_head.weight"] == "BF16"
    # Every converted layer the shard metadata lists resolves to Marlin FP4, nothing else does.
    marlin = {name.rsplit(".", 1)[0] if info.kind.startswith("moe-") else name for name, info in ckpt.layers.items()}
    assert {m for m in marlin if layer_algo(q, m, PACKED) != MARLIN_FP4} == set()
    assert q["original_quantization_config"] and source_kv_cache_algo(q["original_quantization_config"]) == "FP8"


def test_non_gated_stacks_are_refused_naming_the_stack(structure_source, tmp_path):
    out = tmp_path / "out"
    done = convert(structure_source("nemotron-h"), out)
    assert done.returncode == 0, done.stderr
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.\d+\.mixer\.experts\.w13 is a non-gated expert stack .*not served by this plugin version yet"):
        MarlinCheckpoint(str(out))


def test_mxfp4_output_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {**quant(), "scheme": "mxfp4", "group_size": 32}}))
    with pytest.raises(CheckpointError, match="MXFP4 Marlin-ready checkpoints are not served by this plugin version yet"):
        MarlinCheckpoint(str(tmp_path))
