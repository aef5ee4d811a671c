"""The vLLM sources this package was written against, pinned by file and commit.

vLLM's quantization internals change between releases (parameter names, the MoE method
signature, the Marlin scale processing); recording exactly what was read says which vLLM
the plugin's calls match, and lets `plugin.register` name it when an import fails.
"""

#: File path in github.com/vllm-project/vllm -> commit whose text was read. modelopt.py at this
#: commit is also where ModelOptFp8Config's constructor, ModelOptFp8MoEMethod and
#: ModelOptMixedPrecisionConfig._resolve_quant_algo (mirrored by layer_schemes.py) were read.
VLLM_SOURCES: dict[str, str] = {
    "vllm/model_executor/layers/quantization/modelopt.py": "00155cdecca722d98e34234c3d172725b7720b7d",
    "vllm/model_executor/layers/quantization/utils/marlin_utils_fp4.py": "00d52e93333741b205e70acb9217a2849f173696",
    "vllm/model_executor/layers/fused_moe/fused_marlin_moe.py": "00a130a03146d74300d01c0bcf806f323f887fbb",
    "vllm/model_executor/layers/quantization/__init__.py": "0034007debee2a009e030804f2cde7953aff78c6",
    "vllm/plugins/__init__.py": "01425553bdbed63400efa72ff14a8f4ffe20bada",
}

#: The entry-point group vLLM's plugin loader reads (vllm/plugins/__init__.py).
PLUGIN_GROUP = "vllm.general_plugins"

#: The quant_method our config.json carries (docs/FORMAT.md §8).
QUANT_METHOD = "marlin_fp4"
