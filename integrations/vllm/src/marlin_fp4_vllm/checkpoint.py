"""Open a marlin-fp4 converted checkpoint: its config, per-layer metadata and tensors by name.

One place decides whether a directory is something this package can serve (quant_method
`marlin_fp4`, layout v2) so that the reference loader and the vLLM plugin refuse the same
inputs with the same words.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from .layer_schemes import LayerSchemeError, check_layer_table
from .safetensors_io import SafetensorsError, TensorEntry, read_header, read_tensor
from .vllm_sources import QUANT_METHOD

#: Activation dtypes the converter writes, with the exponent bias of FORMAT.md §4.
EXPONENT_BIAS = {"float16": 14, "bfloat16": 126}


class CheckpointError(ValueError):
    """The checkpoint cannot be served as asked; the message names the file or layer and why."""


@dataclass(frozen=True)
class LayerInfo:
    """One converted module as the shard metadata records it (FORMAT.md §8)."""

    name: str
    kind: str  # "linear", "moe-w13" or "moe-w2"
    n: int
    k: int
    np: int
    kp: int
    sf: float
    experts: int | None = None
    hidden: int | None = None
    intermediate: int | None = None


def check_quantization_config(config: dict[str, Any], where: str) -> dict[str, Any]:
    """Return config.json's quantization_config if this package can serve it, else raise why not."""
    quant = config.get("quantization_config")
    if not isinstance(quant, dict) or quant.get("quant_method") != QUANT_METHOD:
        found = quant.get("quant_method") if isinstance(quant, dict) else None
        raise CheckpointError(f"{where}: quantization_config.quant_method is {found!r}, not {QUANT_METHOD!r}")
    layout = quant.get("layout")
    if layout == "v1":
        raise CheckpointError(
            f"{where}: layout v1 is not supported (its scales are pair-interleaved and its global scale is 16-bit); "
            "convert again with --layout v2"
        )
    if layout != "v2":
        raise CheckpointError(f"{where}: unknown layout {layout!r}")
    if quant.get("scheme", "nvfp4") == "mxfp4":
        raise CheckpointError(
            f"{where}: scheme mxfp4 (E8M0 scales, no global scale, biases): "
            "MXFP4 Marlin-ready checkpoints are not served by this plugin version yet"
        )
    if quant.get("scheme", "nvfp4") != "nvfp4":
        raise CheckpointError(f"{where}: unknown scheme {quant.get('scheme')!r}")
    if quant.get("activation_dtype") not in EXPONENT_BIAS:
        raise CheckpointError(f"{where}: activation_dtype {quant.get('activation_dtype')!r} is not float16 or bfloat16")
    if quant.get("group_size", 16) != 16:
        raise CheckpointError(f"{where}: group_size {quant.get('group_size')} is not 16 (NVFP4)")
    if "quantized_layers" in quant:
        try:
            check_layer_table(quant["quantized_layers"], where)
        except LayerSchemeError as err:
            raise CheckpointError(str(err)) from None
    return quant


class MarlinCheckpoint:
    """A converted checkpoint directory, read lazily: headers at open, tensors on demand."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.realpath(directory)
        config_path = os.path.join(self.directory, "config.json")
        try:
            with open(config_path, encoding="utf-8") as handle:
                self.config: dict[str, Any] = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{config_path}: cannot read ({err})") from None
        self.quantization = check_quantization_config(self.config, config_path)
        self.activation_dtype: str = self.quantization["activation_dtype"]
        self.entries: dict[str, TensorEntry] = {}
        self.layers: dict[str, LayerInfo] = {}
        for path in self._shard_paths():
            try:
                entries, metadata = read_header(path)
            except SafetensorsError as err:
                raise CheckpointError(str(err)) from None
            self.entries.update(entries)
            self._read_layer_metadata(path, metadata)

    @property
    def fused_groups(self) -> list[list[str]] | None:
        """Module prefixes fused in vLLM, in concatenation order, when the converter recorded them."""
        groups = self.quantization.get("fused_groups")
        return [list(group) for group in groups] if isinstance(groups, list) else None

    def _shard_paths(self) -> list[str]:
        """The shard files, from the index when there is one; links out of the directory refused."""
        index_path = os.path.join(self.directory, "model.safetensors.index.json")
        if os.path.exists(index_path):
            with open(index_path, encoding="utf-8") as handle:
                names = sorted(set(json.load(handle)["weight_map"].values()))
        else:
            names = sorted(name for name in os.listdir(self.directory) if name.endswith(".safetensors"))
        if not names:
            raise CheckpointError(f"{self.directory}: no .safetensors files")
        paths = []
        for name in names:
            path = os.path.realpath(os.path.join(self.directory, name))
            if os.path.dirname(path) != self.directory:
                raise CheckpointError(f"{os.path.join(self.directory, name)}: points outside the model directory")
            paths.append(path)
        return paths

    def _read_layer_metadata(self, path: str, metadata: dict[str, str]) -> None:
        if "marlin_fp4" not in metadata:
            raise CheckpointError(f"{path}: __metadata__ has no marlin_fp4 entry (not written by marlin-fp4 convert)")
        described = json.loads(metadata["marlin_fp4"])
        if described.get("layout") != "v2":
            raise CheckpointError(f"{path}: shard layout {described.get('layout')!r} is not v2")
        for layer in described.get("layers", []):
            if layer.get("gated") is False:
                raise CheckpointError(
                    f"{path}: {layer['name']} is a non-gated expert stack (w13 = up alone, FORMAT.md §6.2); "
                    "not served by this plugin version yet"
                )
            self.layers[layer["name"]] = LayerInfo(
                name=layer["name"],
                kind=layer["kind"],
                n=layer["n"],
                k=layer["k"],
                np=layer["np"],
                kp=layer["kp"],
                sf=layer["sf"],
                experts=layer.get("experts"),
                hidden=layer.get("hidden"),
                intermediate=layer.get("intermediate"),
            )

    def has(self, name: str) -> bool:
        """Whether a tensor of that name is in some shard."""
        return name in self.entries

    def tensor(self, name: str) -> torch.Tensor:
        """Read one tensor by name (F8 tensors as uint8 bytes)."""
        if name not in self.entries:
            raise CheckpointError(f"{self.directory}: tensor {name} is missing")
        return read_tensor(self.entries[name])

    def layer(self, prefix: str) -> LayerInfo:
        """The metadata of one converted module, or an error naming it."""
        if prefix not in self.layers:
            raise CheckpointError(f"{self.directory}: {prefix} is not a converted layer")
        return self.layers[prefix]

    def linear_prefixes(self) -> list[str]:
        """Every converted dense linear, sorted."""
        return sorted(name for name, info in self.layers.items() if info.kind == "linear")

    def moe_prefixes(self) -> list[str]:
        """Every converted MoE experts module (the prefix before `.w13_weight`), sorted."""
        return sorted({name.rsplit(".", 1)[0] for name, info in self.layers.items() if info.kind.startswith("moe-")})
