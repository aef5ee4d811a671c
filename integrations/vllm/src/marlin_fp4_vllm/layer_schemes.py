"""Which method serves each layer of a converted checkpoint: Marlin FP4, the source's FP8, or none.

Pure name logic (no torch, no vLLM), so it is tested here. A whole-model NVFP4 source: every
layer the source did not exclude is Marlin FP4. A ModelOpt MIXED_PRECISION source: the
output's `quantization_config.quantized_layers` table (docs/FORMAT.md §8; converted entries
say `MARLIN_FP4`, the others — FP8 — are kept verbatim) is resolved as vLLM's
`ModelOptMixedPrecisionConfig._resolve_quant_algo` resolves it (modelopt.py at the commit
pinned in vllm_sources.py): the exact key, then the fused module's shards (which must agree),
then any key inside the module (an experts module finds `…experts.0.up_proj`); a layer the
table does not name, and that is not excluded, stays unquantized, as in vLLM.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Mapping, Sequence

#: A converted layer's quant_algo in the output's table (src/format/quant-config.ts CONVERTED_LAYER_ALGO).
MARLIN_FP4 = "MARLIN_FP4"
#: Source algorithms whose layers pass through and are served by vLLM's ModelOpt FP8 methods
#: (ModelOptFp8Config accepts exactly these three).
FP8_ALGOS = ("FP8", "FP8_PER_CHANNEL_PER_TOKEN", "FP8_PB_WO")
#: What get_quant_method does with a layer that resolves to no algorithm.
UNQUANTIZED = "UNQUANTIZED"


class LayerSchemeError(ValueError):
    """The table cannot say how to serve a layer; the message names the layer and why."""


def excluded(prefix: str, original: Mapping[str, Any]) -> bool:
    """Whether the source config left this module unquantized (ModelOpt wildcards, CT names / `re:`)."""
    patterns = list(original.get("exclude_modules") or []) + list(original.get("ignore") or [])
    quantization = original.get("quantization")
    if isinstance(quantization, dict):
        patterns += list(quantization.get("exclude_modules") or [])
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], prefix):
                return True
        elif prefix == pattern or fnmatch.fnmatch(prefix, pattern) or prefix.startswith(pattern + "."):
            return True
    return False


def prefix_candidates(prefix: str) -> tuple[str, ...]:
    """The table keys a vLLM prefix may appear under (vLLM's `_quantized_layer_prefix_candidates`)."""
    candidates = [prefix]
    if prefix.endswith(".lm_head"):
        candidates.append("lm_head")
    for a, b in (("language_model.model.", "model.language_model."), ("model.language_model.", "language_model.model.")):
        if prefix.startswith(a):
            candidates.append(b + prefix[len(a) :])
            break
    return tuple(dict.fromkeys(candidates))


def _algo(entry: Mapping[str, Any]) -> str:
    return str(entry.get("quant_algo", "")).upper()


def resolve_algo(table: Mapping[str, Mapping[str, Any]], prefix: str, packed: Mapping[str, Sequence[str]] | None = None) -> str | None:
    """The upper-cased quant_algo the table gives a vLLM layer prefix, or None when it names none."""
    for candidate in prefix_candidates(prefix):
        if candidate in table:
            return _algo(table[candidate])
    parent, _, leaf = prefix.rpartition(".")
    if packed and leaf in packed:
        algos = set()
        for base in prefix_candidates(parent) if parent else ("",):
            for shard in packed[leaf]:
                key = f"{base}.{shard}" if base else shard
                if key in table:
                    algos.add(_algo(table[key]))
        if len(algos) > 1:
            raise LayerSchemeError(f"{prefix}: its fused parts {list(packed[leaf])} have different quant_algo {sorted(algos)}; one fused layer takes one method")
        if algos:
            return algos.pop()
    for candidate in prefix_candidates(prefix):
        inside = candidate + "."
        for key, entry in table.items():
            if key.startswith(inside):
                return _algo(entry)
    return None


def check_layer_table(table: Any, where: str) -> dict[str, dict[str, Any]]:
    """The quantized_layers table if every entry is one this package serves, else raise naming the entry."""
    if not isinstance(table, dict) or not table:
        raise LayerSchemeError(f"{where}: quantized_layers must be a non-empty mapping of layer -> {{quant_algo: …}}")
    for key, entry in table.items():
        algo = _algo(entry) if isinstance(entry, dict) else None
        if algo != MARLIN_FP4 and algo not in FP8_ALGOS:
            raise LayerSchemeError(
                f"{where}: quantized_layers[{key!r}] has quant_algo {algo!r}; marlin_fp4 serves {MARLIN_FP4} layers "
                f"and passes {', '.join(FP8_ALGOS)} layers to vLLM's ModelOpt FP8 methods, nothing else"
            )
    return table


def layer_algo(quantization: Mapping[str, Any], prefix: str, packed: Mapping[str, Sequence[str]] | None = None) -> str:
    """How to serve one layer: MARLIN_FP4, one of FP8_ALGOS, or UNQUANTIZED.

    Exclusions of the source config apply first (as vLLM's `is_layer_excluded` does); a fused
    module is excluded when any of its parts is.
    """
    original = quantization.get("original_quantization_config") or {}
    parent, _, leaf = prefix.rpartition(".")
    parts = [prefix] + [f"{parent}.{member}" if parent else member for member in (packed or {}).get(leaf, [])]
    if any(excluded(part, original) for part in parts):
        return UNQUANTIZED
    table = quantization.get("quantized_layers")
    if table is None:
        return MARLIN_FP4
    return resolve_algo(table, prefix, packed) or UNQUANTIZED


def source_kv_cache_algo(original: Mapping[str, Any]) -> str | None:
    """The source's KV-cache algorithm as vLLM's ModelOpt config reads it (hf_quant_config or config.json form)."""
    quantization = original.get("quantization")
    if isinstance(quantization, dict):
        algo = quantization.get("kv_cache_quant_algo")
        return str(algo).upper() if algo else None
    scheme = original.get("kv_cache_scheme")
    if isinstance(scheme, dict) and scheme.get("type") == "float" and scheme.get("num_bits") == 8:
        return "FP8"
    return None
