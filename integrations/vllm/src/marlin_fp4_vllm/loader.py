"""Reference loader: a converted checkpoint -> the tensors vLLM's Marlin kernels take, per TP rank.

torch only (no vLLM import). For a dense layer it returns the Marlin `weight`, the processed
`weight_scale` and the processed global `weight_scale_2` exactly as FORMAT.md §8 stores them,
fused parts (q/k/v, gate/up) concatenated along N and each rank's rows/columns sliced at the
boundaries `partition` allows; for MoE the `w13_*` / `w2_*` stacks sliced the same way. The
vLLM plugin calls `slice_columns` / `slice_rows` itself, so the two cannot drift apart.

A fused layer has one global scale in the kernel, so its parts must carry the same processed
global: checked here on the tensors themselves (not on metadata), because a checkpoint from a
converter that computed the scale factor per module carries different ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .checkpoint import CheckpointError, MarlinCheckpoint
from .partition import PartitionError, Span, check_kernel_tiles, column_span, qkv_spans, row_span

#: int32 words per output column in a Marlin weight row (16 codes of 4 bits per column).
WORDS_PER_COLUMN = 2


@dataclass
class LinearTensors:
    """One rank's dense (possibly fused) layer, ready for the Marlin FP4 GEMM."""

    weight: torch.Tensor  # int32 [padded_k / 16, 2 * padded_n]
    weight_scale: torch.Tensor  # uint8 (F8 bytes) [padded_k / 16, padded_n]
    weight_scale_2: torch.Tensor  # float32 [1], processed global (FORMAT.md §4 v2)
    input_scale: torch.Tensor | None  # float32 [parts], passed through, unused by W4A16
    bias: torch.Tensor | None  # padded and permuted (FORMAT.md §4), [padded_n]
    size_n: int  # output columns this rank produces
    size_k: int  # input columns this rank reads
    padded_n: int
    padded_k: int
    parts: tuple[str, ...]


@dataclass
class MoeTensors:
    """One rank's MoE experts stacks, ready for vLLM's fused Marlin MoE."""

    w13_weight: torch.Tensor  # int32 [E, hidden / 16, 2 * 2 * intermediate]
    w13_weight_scale: torch.Tensor  # uint8 [E, hidden / 16, 2 * intermediate]
    w13_weight_scale_2: torch.Tensor  # float32 [E]
    w2_weight: torch.Tensor  # int32 [E, intermediate / 16, 2 * hidden_padded]
    w2_weight_scale: torch.Tensor  # uint8 [E, intermediate / 16, hidden_padded]
    w2_weight_scale_2: torch.Tensor  # float32 [E]
    hidden: int
    intermediate: int  # per rank


def stored_columns(cols: Span, n: int, np: int) -> Span:
    """Logical columns -> stored columns: the slice that ends at N also takes N's padding."""
    return Span(cols.start, np if cols.stop == n else cols.stop)


def stored_rows(rows: Span, k: int, kp: int) -> Span:
    """Logical K rows -> packed rows of 16: the slice that ends at K also takes K's padding."""
    stop = kp if rows.stop == k else rows.stop
    return Span(rows.start // 16, stop // 16)


def slice_columns(tensor: torch.Tensor, cols: Span, per_column: int) -> torch.Tensor:
    """Columns [start, stop) of the last dimension, `per_column` stored elements per column."""
    return tensor[..., cols.start * per_column : cols.stop * per_column]


def slice_rows(tensor: torch.Tensor, packed_rows: Span) -> torch.Tensor:
    """Packed rows [start, stop) of the second-to-last dimension."""
    return tensor[..., packed_rows.start : packed_rows.stop, :]


def shared_global(ckpt: MarlinCheckpoint, layer_name: str, prefixes: Sequence[str]) -> torch.Tensor:
    """The one processed global of a fused layer's parts, or an error naming the layer."""
    values = [ckpt.tensor(f"{prefix}.weight_scale_2").reshape(-1).to(torch.float32) for prefix in prefixes]
    for prefix, value in zip(prefixes, values):
        if value.numel() != 1:
            raise CheckpointError(f"{layer_name}: {prefix}.weight_scale_2 has {value.numel()} values, not 1")
        if not torch.equal(value, values[0]):
            raise CheckpointError(
                f"{layer_name}: fused parts {prefixes[0]} and {prefix} have different processed global scales "
                f"({values[0].item():.9g} vs {value.item():.9g}); the kernel takes one per layer. This checkpoint "
                "comes from a marlin-fp4 that computed the scale factor per module: convert it again with one "
                "that shares the scale factor across fused groups"
            )
    return values[0].reshape(1).clone()


def load_linear(
    ckpt: MarlinCheckpoint,
    layer_name: str,
    parts: Sequence[tuple[str, Span | None]],
    rows: Span | None = None,
) -> LinearTensors:
    """Assemble one rank's layer from its parts: (prefix, columns or None for all) in concatenation order."""
    infos = [ckpt.layer(prefix) for prefix, _ in parts]
    first = infos[0]
    for info in infos:
        if info.kind != "linear":
            raise CheckpointError(f"{layer_name}: {info.name} is a {info.kind} layer, not a linear")
        if (info.k, info.kp) != (first.k, first.kp):
            raise CheckpointError(f"{layer_name}: parts {first.name} and {info.name} have different K ({first.k} vs {info.k})")
        if len(parts) > 1 and info.n != info.np:
            raise PartitionError(
                f"{layer_name}: part {info.name} has N {info.n}, padded to {info.np}; fused parts concatenate only "
                "when every part's N is a multiple of 64 (FORMAT.md §8)"
            )
    rows = rows or Span(0, first.k)
    packed_rows = stored_rows(rows, first.k, first.kp)
    weights, scales, biases, input_scales = [], [], [], []
    size_n = padded_n = 0
    for (prefix, cols), info in zip(parts, infos):
        cols = cols or Span(0, info.n)
        if not 0 <= cols.start <= cols.stop <= info.n:
            raise PartitionError(f"{layer_name}: columns [{cols.start}, {cols.stop}) are outside {info.name}'s N {info.n}")
        stored = stored_columns(cols, info.n, info.np)
        weight = ckpt.tensor(f"{prefix}.weight")
        scale = ckpt.tensor(f"{prefix}.weight_scale")
        expected = (info.kp // 16, WORDS_PER_COLUMN * info.np)
        if tuple(weight.shape) != expected or tuple(scale.shape) != (info.kp // 16, info.np):
            raise CheckpointError(f"{layer_name}: {prefix}.weight is {list(weight.shape)}, metadata says {list(expected)}")
        weights.append(slice_rows(slice_columns(weight, stored, WORDS_PER_COLUMN), packed_rows))
        scales.append(slice_rows(slice_columns(scale, stored, 1), packed_rows))
        if ckpt.has(f"{prefix}.bias"):
            biases.append(slice_columns(ckpt.tensor(f"{prefix}.bias"), stored, 1))
        if ckpt.has(f"{prefix}.input_scale"):
            input_scales.append(ckpt.tensor(f"{prefix}.input_scale").reshape(-1).to(torch.float32))
        size_n += cols.size
        padded_n += stored.size
    if biases and len(biases) != len(parts):
        raise CheckpointError(f"{layer_name}: only some fused parts have a bias")
    padded_k = packed_rows.size * 16
    check_kernel_tiles(layer_name, padded_n, padded_k)
    return LinearTensors(
        weight=torch.cat(weights, dim=1).contiguous(),
        weight_scale=torch.cat(scales, dim=1).contiguous(),
        weight_scale_2=shared_global(ckpt, layer_name, [prefix for prefix, _ in parts]),
        input_scale=torch.cat(input_scales) if len(input_scales) == len(parts) else None,
        bias=torch.cat(biases) if biases else None,
        size_n=size_n,
        size_k=rows.size,
        padded_n=padded_n,
        padded_k=padded_k,
        parts=tuple(prefix for prefix, _ in parts),
    )


def load_moe(ckpt: MarlinCheckpoint, prefix: str, tp_size: int = 1, tp_rank: int = 0) -> MoeTensors:
    """One rank's experts: w13 gate and up each column-sliced, w2 row-sliced (all experts: no EP)."""
    w13_info, w2_info = ckpt.layer(f"{prefix}.w13"), ckpt.layer(f"{prefix}.w2")
    inter, inter_p = w13_info.n, w13_info.np
    if tp_size > 1 and inter != inter_p:
        raise PartitionError(f"{prefix}: intermediate size {inter} is padded to {inter_p}; it cannot be split over {tp_size} ranks")
    share = column_span(prefix, inter, tp_size, tp_rank)
    gate = stored_columns(share, inter, inter_p)
    up = Span(inter_p + gate.start, inter_p + gate.stop)
    packed_rows = stored_rows(share, w2_info.k, w2_info.kp)

    def stack(name: str) -> torch.Tensor:
        return ckpt.tensor(f"{prefix}.{name}")

    w13, w13_scale = stack("w13_weight"), stack("w13_weight_scale")
    w2, w2_scale = stack("w2_weight"), stack("w2_weight_scale")
    tensors = MoeTensors(
        w13_weight=torch.cat([slice_columns(w13, gate, WORDS_PER_COLUMN), slice_columns(w13, up, WORDS_PER_COLUMN)], -1).contiguous(),
        w13_weight_scale=torch.cat([slice_columns(w13_scale, gate, 1), slice_columns(w13_scale, up, 1)], -1).contiguous(),
        w13_weight_scale_2=stack("w13_weight_scale_2").reshape(-1).to(torch.float32).clone(),
        w2_weight=slice_rows(w2, packed_rows).contiguous(),
        w2_weight_scale=slice_rows(w2_scale, packed_rows).contiguous(),
        w2_weight_scale_2=stack("w2_weight_scale_2").reshape(-1).to(torch.float32).clone(),
        hidden=w13_info.k,
        intermediate=share.size,
    )
    check_kernel_tiles(f"{prefix}.w13", 2 * gate.size, w13_info.kp)
    check_kernel_tiles(f"{prefix}.w2", w2_info.np, packed_rows.size * 16)
    return tensors


# --------------------------------------------------------------------------------------
# A whole checkpoint, named the way vLLM's Llama/Qwen-style models name their layers.

#: Module names vLLM fuses (its models' packed_modules_mapping), in concatenation order.
DEFAULT_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
#: Module names vLLM builds as RowParallelLinear (K split across ranks).
ROW_PARALLEL = ("o_proj", "down_proj")


def fused_layer_groups(ckpt: MarlinCheckpoint) -> dict[str, list[str]]:
    """vLLM layer name -> the checkpoint prefixes it is built from, in concatenation order."""
    recorded = ckpt.fused_groups
    groups: dict[str, list[str]] = {}
    grouped: set[str] = set()
    candidates = recorded if recorded is not None else _default_groups(ckpt.linear_prefixes())
    for parts in candidates:
        parent = parts[0].rsplit(".", 1)[0]
        leaves = tuple(part.rsplit(".", 1)[1] for part in parts)
        fused_name = next((name for name, members in DEFAULT_FUSED.items() if members == leaves), "_".join(leaves))
        groups[f"{parent}.{fused_name}"] = list(parts)
        grouped.update(parts)
    for prefix in ckpt.linear_prefixes():
        if prefix not in grouped:
            groups[prefix] = [prefix]
    return groups


def _default_groups(prefixes: Sequence[str]) -> list[list[str]]:
    present = set(prefixes)
    groups = []
    for prefix in prefixes:
        parent, leaf = prefix.rsplit(".", 1)
        for members in DEFAULT_FUSED.values():
            if leaf == members[0] and all(f"{parent}.{member}" in present for member in members):
                groups.append([f"{parent}.{member}" for member in members])
    return groups


def _attention_shape(ckpt: MarlinCheckpoint) -> tuple[int, int, int]:
    config = ckpt.config
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return heads, kv_heads, head_dim


def load_rank(directory: str, tp_size: int = 1, tp_rank: int = 0) -> dict[str, torch.Tensor]:
    """Every quantized tensor one rank's Marlin kernels take, by vLLM parameter name.

    Raises CheckpointError (PartitionError for a split the shapes do not allow) naming the layer.
    """
    ckpt = MarlinCheckpoint(directory)
    out: dict[str, torch.Tensor] = {}
    for layer_name, prefixes in fused_layer_groups(ckpt).items():
        leaf = layer_name.rsplit(".", 1)[1]
        if leaf == "qkv_proj":
            spans = qkv_spans(layer_name, *_attention_shape(ckpt), tp_size, tp_rank)
            tensors = load_linear(ckpt, layer_name, list(zip(prefixes, spans)))
        elif leaf in ROW_PARALLEL:
            info = ckpt.layer(prefixes[0])
            tensors = load_linear(ckpt, layer_name, [(prefixes[0], None)], row_span(layer_name, info.k, info.kp, tp_size, tp_rank))
        else:
            parts = [(prefix, column_span(layer_name, ckpt.layer(prefix).n, tp_size, tp_rank)) for prefix in prefixes]
            tensors = load_linear(ckpt, layer_name, parts)
        out[f"{layer_name}.weight"] = tensors.weight
        out[f"{layer_name}.weight_scale"] = tensors.weight_scale
        out[f"{layer_name}.weight_scale_2"] = tensors.weight_scale_2
        if tensors.input_scale is not None:
            out[f"{layer_name}.input_scale"] = tensors.input_scale
        if tensors.bias is not None:
            out[f"{layer_name}.bias"] = tensors.bias
    for prefix in ckpt.moe_prefixes():
        moe = load_moe(ckpt, prefix, tp_size, tp_rank)
        for name in ("w13_weight", "w13_weight_scale", "w13_weight_scale_2", "w2_weight", "w2_weight_scale", "w2_weight_scale_2"):
            out[f"{prefix}.{name}"] = getattr(moe, name)
    return out
