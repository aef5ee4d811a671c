"""The vLLM side of `marlin_fp4`: a QuantizationConfig, a linear method and an MoE method.

Each layer's method comes from layer_schemes.layer_algo (the output's quantized_layers table
resolved as vLLM resolves ModelOpt MIXED_PRECISION): Marlin FP4 layers get ours, FP8 layers of
a mixed source get vLLM's own ModelOpt FP8 methods (a ModelOptFp8Config built as
ModelOptMixedPrecisionConfig._from_config builds its FP8 sub-config), the rest stay unquantized.

Parameters hold our tensors as written (FORMAT.md §8) — Marlin int32 weight, processed F8
scales, processed F32 global — sliced per rank by the reference loader's functions, so
`process_weights_after_loading` repacks nothing. `apply` calls the same vLLM kernels with
the same arguments vLLM's own NVFP4 Marlin paths pass after their repack
(`apply_fp4_marlin_linear`, `fused_marlin_moe`; see vllm_sources.VLLM_SOURCES for the
commits read). Imports vLLM: load it only through `plugin.register`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import Parameter

from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase
from vllm.model_executor.layers.fused_moe.fused_marlin_moe import fused_marlin_moe
from vllm.model_executor.layers.linear import (
    LinearBase,
    LinearMethodBase,
    QKVParallelLinear,
    RowParallelLinear,
    UnquantizedLinearMethod,
)
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig, QuantizeMethodBase
from vllm.model_executor.layers.quantization.modelopt import ModelOptFp8Config, ModelOptFp8MoEMethod
from vllm.model_executor.layers.quantization.utils.marlin_utils import marlin_make_workspace_new
from vllm.model_executor.layers.quantization.utils.marlin_utils_fp4 import apply_fp4_marlin_linear
from vllm.model_executor.utils import set_weight_attrs
from vllm.scalar_type import scalar_types

from .checkpoint import CheckpointError, check_quantization_config
from .layer_schemes import MARLIN_FP4, UNQUANTIZED, LayerSchemeError, layer_algo, source_kv_cache_algo
from .loader import WORDS_PER_COLUMN, slice_columns, slice_rows, stored_columns, stored_rows
from .partition import PartitionError, Span, check_kernel_tiles, column_span, qkv_spans, round_up, row_span, v2_padded_shape
from .vllm_sources import QUANT_METHOD

_ACTIVATION_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_QKV_SHARDS = {"q": 0, "k": 1, "v": 2}


class MarlinFp4Config(QuantizationConfig):
    """config.json `quantization_config` of a marlin-fp4 output (quant_method `marlin_fp4`, layout v2)."""

    def __init__(self, quantization: dict[str, Any]) -> None:
        super().__init__()
        self.quantization = quantization
        self.activation_dtype = _ACTIVATION_DTYPES[quantization["activation_dtype"]]
        self.original = quantization.get("original_quantization_config") or {}
        self._fp8_configs: dict[str, ModelOptFp8Config] = {}

    @classmethod
    def get_name(cls) -> str:
        return QUANT_METHOD

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 75  # is_fp4_marlin_supported(): compute capability 7.5

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MarlinFp4Config":
        return cls(check_quantization_config({"quantization_config": config}, "config.json"))

    def apply_vllm_mapper(self, hf_to_vllm_mapper: Any) -> None:
        # As ModelOptMixedPrecisionConfig: table keys are checkpoint names (e.g. Nemotron-H's
        # `backbone.`), layer prefixes are vLLM's; map the keys once.
        table = self.quantization.get("quantized_layers")
        if table:
            self.quantization = {**self.quantization, "quantized_layers": hf_to_vllm_mapper.apply_dict(table)}

    def layer_algo(self, prefix: str) -> str:
        try:
            return layer_algo(self.quantization, prefix, getattr(self, "packed_modules_mapping", None))
        except LayerSchemeError as err:
            raise CheckpointError(str(err)) from None

    def fp8_config(self, algo: str) -> ModelOptFp8Config:
        """vLLM's config for the FP8 layers a mixed source passed through (one per FP8 algorithm)."""
        if algo not in self._fp8_configs:
            self._fp8_configs[algo] = ModelOptFp8Config(
                quant_method=algo,
                is_checkpoint_fp8_serialized=True,
                kv_cache_quant_method=source_kv_cache_algo(self.original),
                exclude_modules=[],
            )
        return self._fp8_configs[algo]

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        is_linear = isinstance(layer, LinearBase)
        is_moe = not is_linear and hasattr(layer, "moe_config")
        if not (is_linear or is_moe):
            return None
        algo = self.layer_algo(prefix)
        if algo == UNQUANTIZED:
            return UnquantizedLinearMethod() if is_linear else None
        if algo == MARLIN_FP4:
            return MarlinFp4LinearMethod(self, prefix) if is_linear else MarlinFp4MoEMethod(self, layer, prefix)
        fp8 = self.fp8_config(algo)
        if is_linear:
            return fp8.LinearMethodCls(fp8)
        if algo != "FP8":
            raise CheckpointError(f"{prefix}: FP8 experts of quant_algo {algo}; vLLM's ModelOpt FP8 MoE method takes per-tensor FP8 only")
        return ModelOptFp8MoEMethod(quant_config=fp8, moe_config=layer.moe_config)


def _tp() -> tuple[int, int]:
    return get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()


class MarlinFp4LinearMethod(LinearMethodBase):
    """A dense (possibly fused) linear read straight from Marlin-ready tensors."""

    def __init__(self, config: MarlinFp4Config, prefix: str) -> None:
        self.config = config
        self.prefix = prefix

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        if params_dtype != self.config.activation_dtype:
            raise CheckpointError(
                f"{self.prefix}: converted for {self.config.activation_dtype} activations (its global scale depends "
                f"on it), served as {params_dtype}; pass --dtype {str(self.config.activation_dtype).split('.')[-1]}"
            )
        tp_size, _ = _tp()
        if tp_size == 1 and len(output_partition_sizes) == 1:
            padded_n, padded_k = v2_padded_shape(output_partition_sizes[0], input_size_per_partition)
        else:
            for size in output_partition_sizes:
                if size % 64:
                    raise PartitionError(f"{self.prefix}: a part of N {size} per rank is not a multiple of 64")
            padded_n = sum(output_partition_sizes)
            padded_k = v2_padded_shape(output_partition_sizes[0], input_size_per_partition)[1] if tp_size == 1 else input_size_per_partition
        check_kernel_tiles(self.prefix, padded_n, padded_k)
        layer.marlin_fp4_size_n = sum(output_partition_sizes)
        layer.marlin_fp4_size_k = input_size_per_partition
        layer.marlin_fp4_padded_n = padded_n
        layer.marlin_fp4_padded_k = padded_k
        layer.marlin_fp4_offsets = [sum(output_partition_sizes[:i]) for i in range(len(output_partition_sizes))]
        layer.input_size_per_partition = input_size_per_partition
        layer.output_size_per_partition = sum(output_partition_sizes)
        parts = len(output_partition_sizes)
        loader = self._make_loader(layer, input_size, output_partition_sizes)
        for name, data in (
            ("weight", torch.empty(padded_k // 16, WORDS_PER_COLUMN * padded_n, dtype=torch.int32)),
            ("weight_scale", torch.empty(padded_k // 16, padded_n, dtype=torch.float8_e4m3fn)),
            ("weight_scale_2", torch.zeros(parts, dtype=torch.float32)),
            ("input_scale", torch.zeros(parts, dtype=torch.float32)),
        ):
            param = Parameter(data, requires_grad=False)
            layer.register_parameter(name, param)
            set_weight_attrs(param, {"weight_loader": loader})

    def _make_loader(self, layer: torch.nn.Module, input_size: int, output_partition_sizes: list[int]):
        """A weight_loader(param, loaded, shard_id) that slices this rank's piece with loader.py's rules."""
        tp_size, tp_rank = _tp()
        prefix = self.prefix

        def part_index(shard_id: Any) -> int:
            if shard_id is None:
                return 0
            return _QKV_SHARDS[shard_id] if isinstance(shard_id, str) else int(shard_id)

        def columns(index: int, full_n: int) -> Span:
            if isinstance(layer, QKVParallelLinear):
                spans = qkv_spans(prefix, layer.total_num_heads, layer.total_num_kv_heads, layer.head_size, tp_size, tp_rank)
                return spans[index]
            if isinstance(layer, RowParallelLinear):
                return Span(0, full_n)
            return column_span(prefix, full_n, tp_size, tp_rank)

        def weight_loader(param: Parameter, loaded: torch.Tensor, loaded_shard_id: Any = None) -> None:
            index = part_index(loaded_shard_id)
            if loaded.dim() <= 1 or param.dim() == 1:
                param.data[index] = loaded.reshape(-1)[0].to(param.dtype)
                return
            per_column = WORDS_PER_COLUMN if loaded.dtype == torch.int32 else 1
            full_np = loaded.shape[-1] // per_column
            full_kp = loaded.shape[0] * 16
            full_n = full_np if len(output_partition_sizes) > 1 or tp_size > 1 else layer.marlin_fp4_size_n
            cols = stored_columns(columns(index, full_n), full_n, full_np)
            if isinstance(layer, RowParallelLinear):
                rows = stored_rows(row_span(prefix, input_size, full_kp, tp_size, tp_rank), input_size, full_kp)
            else:
                rows = Span(0, full_kp // 16)
            piece = slice_rows(slice_columns(loaded, cols, per_column), rows)
            if loaded.dtype == torch.uint8:
                piece = piece.view(torch.float8_e4m3fn)
            start = layer.marlin_fp4_offsets[index] * per_column
            target = param.data[:, start : start + piece.shape[1]]
            if target.shape != piece.shape:
                raise CheckpointError(f"{prefix}: part {index} is {list(piece.shape)} on this rank, the layer expects {list(target.shape)}")
            target.copy_(piece)

        return weight_loader

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        globals_ = layer.weight_scale_2.data
        if not torch.all(globals_ == globals_[0]):
            raise CheckpointError(
                f"{self.prefix}: fused parts have different processed global scales {globals_.tolist()}; the kernel "
                "takes one per layer. Convert again with a marlin-fp4 that shares the scale factor across fused groups"
            )
        layer.weight_scale_2 = Parameter(globals_[:1].clone(), requires_grad=False)
        layer.workspace = marlin_make_workspace_new(layer.weight.device)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if layer.marlin_fp4_padded_k != layer.marlin_fp4_size_k:
            x = torch.nn.functional.pad(x, (0, layer.marlin_fp4_padded_k - layer.marlin_fp4_size_k))
        out = apply_fp4_marlin_linear(
            input=x,
            weight=layer.weight,
            weight_scale=layer.weight_scale,
            weight_global_scale=layer.weight_scale_2,
            workspace=layer.workspace,
            size_n=layer.marlin_fp4_padded_n,
            size_k=layer.marlin_fp4_padded_k,
            bias=bias,
        )
        if layer.marlin_fp4_padded_n != layer.marlin_fp4_size_n:
            out = out[..., : layer.marlin_fp4_size_n]
        return out


class MarlinFp4MoEMethod(FusedMoEMethodBase):
    """MoE experts read straight from our w13_*/w2_* stacks; fused_marlin_moe as vLLM's NVFP4 Marlin path."""

    def __init__(self, config: MarlinFp4Config, layer: torch.nn.Module, prefix: str) -> None:
        super().__init__(layer.moe_config)
        if not getattr(self.moe, "is_act_and_mul", True):
            raise CheckpointError(f"{prefix}: non-gated experts (w13 = up alone, FORMAT.md §6.2) are not served by this plugin version yet")
        self.config = config
        self.prefix = prefix

    def create_weights(
        self,
        layer: torch.nn.Module,
        num_experts: int,
        hidden_size: int,
        intermediate_size_per_partition: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        global_experts = extra_weight_attrs.get("global_num_experts", num_experts)
        if global_experts not in (None, num_experts):
            raise PartitionError(f"{self.prefix}: expert parallelism is not supported (our stacks hold all {global_experts} experts)")
        if params_dtype != self.config.activation_dtype:
            raise CheckpointError(f"{self.prefix}: converted for {self.config.activation_dtype}, served as {params_dtype}")
        tp_size, tp_rank = _tp()
        inter = intermediate_size_per_partition
        if tp_size == 1:
            inter_p = round_up(inter, 64 if hidden_size % 128 == 0 else 128)  # FORMAT.md §4, MoE under v2
        elif inter % 64:
            raise PartitionError(f"{self.prefix}: intermediate size {inter} per rank is not a multiple of 64")
        else:
            inter_p = inter
        check_kernel_tiles(f"{self.prefix}.w13", 2 * inter_p, hidden_size)
        check_kernel_tiles(f"{self.prefix}.w2", hidden_size, inter_p)
        layer.marlin_fp4_tp = (tp_size, tp_rank)
        shapes = {
            "w13_weight": ((num_experts, hidden_size // 16, WORDS_PER_COLUMN * 2 * inter_p), torch.int32),
            "w13_weight_scale": ((num_experts, hidden_size // 16, 2 * inter_p), torch.float8_e4m3fn),
            "w13_weight_scale_2": ((num_experts,), torch.float32),
            "w2_weight": ((num_experts, inter_p // 16, WORDS_PER_COLUMN * hidden_size), torch.int32),
            "w2_weight_scale": ((num_experts, inter_p // 16, hidden_size), torch.float8_e4m3fn),
            "w2_weight_scale_2": ((num_experts,), torch.float32),
            # Per-expert activation scales of the source, kept so their names resolve; unused by W4A16.
            "w13_input_scale": ((num_experts, 2), torch.float32),
            "w2_input_scale": ((num_experts,), torch.float32),
        }
        loader = self._make_loader(layer)
        for name, (shape, dtype) in shapes.items():
            param = Parameter(torch.zeros(shape, dtype=dtype) if dtype == torch.float32 else torch.empty(shape, dtype=dtype), requires_grad=False)
            layer.register_parameter(name, param)
            set_weight_attrs(param, {"weight_loader": loader, "marlin_fp4_name": name})

    def _make_loader(self, layer: torch.nn.Module):
        prefix = self.prefix

        def weight_loader(param: Parameter, loaded: torch.Tensor, weight_name: str | None = None, shard_id: Any = None, expert_id: int | None = None, **_: Any) -> bool:
            name = param.marlin_fp4_name
            if name.endswith("input_scale"):
                if expert_id is not None:
                    column = 0 if shard_id in ("w1", None) or name == "w2_input_scale" else 1
                    target = param.data[expert_id] if param.dim() == 1 else param.data[expert_id, column]
                    target.fill_(loaded.reshape(-1)[0].item())
                return True
            tp_size, tp_rank = layer.marlin_fp4_tp
            if name.endswith("scale_2"):
                param.data.copy_(loaded.reshape(-1).to(torch.float32))
                return True
            per_column = WORDS_PER_COLUMN if loaded.dtype == torch.int32 else 1
            if name.startswith("w13"):
                inter_p = loaded.shape[-1] // per_column // 2
                share = column_span(prefix, inter_p, tp_size, tp_rank)
                gate = stored_columns(share, inter_p, inter_p)
                up = Span(inter_p + gate.start, inter_p + gate.stop)
                piece = torch.cat([slice_columns(loaded, gate, per_column), slice_columns(loaded, up, per_column)], -1)
            else:
                inter_p = loaded.shape[-2] * 16
                piece = slice_rows(loaded, stored_rows(row_span(prefix, inter_p, inter_p, tp_size, tp_rank), inter_p, inter_p))
            if loaded.dtype == torch.uint8:
                piece = piece.view(torch.float8_e4m3fn)
            if piece.shape != param.data.shape:
                raise CheckpointError(f"{prefix}: {name} is {list(piece.shape)} on this rank, the layer expects {list(param.data.shape)}")
            param.data.copy_(piece)
            return True

        return weight_loader

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        layer.workspace = marlin_make_workspace_new(layer.w13_weight.device, 4)

    def get_fused_moe_quant_config(self, layer: torch.nn.Module) -> None:
        return None  # fused_marlin_moe takes its scales as arguments (below), not through a quant config

    def apply(
        self,
        layer: torch.nn.Module,
        x: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        shared_experts: Any = None,
        shared_experts_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if shared_experts is not None:
            raise NotImplementedError(f"{self.prefix}: shared experts are not supported by marlin_fp4 yet")
        return fused_marlin_moe(
            hidden_states=x,
            w1=layer.w13_weight,
            w2=layer.w2_weight,
            bias1=None,
            bias2=None,
            w1_scale=layer.w13_weight_scale,
            w2_scale=layer.w2_weight_scale,
            gating_output=None,
            topk_weights=topk_weights,
            topk_ids=topk_ids,
            quant_type_id=scalar_types.float4_e2m1f.id,
            apply_router_weight_on_input=layer.apply_router_weight_on_input,
            global_num_experts=layer.global_num_experts,
            activation=layer.activation,
            expert_map=layer.expert_map,
            global_scale1=layer.w13_weight_scale_2,
            global_scale2=layer.w2_weight_scale_2,
            workspace=layer.workspace,
        )
