"""rotorquant: llama.cpp with RotorQuant KV-cache compression.

>>> import rotorquant
>>> rotorquant.build_info()["upstream_commit"]
'0c1e57098'
>>> from rotorquant import Llama
>>> llm = Llama("model.gguf", cache_type_k="iso4", cache_type_v="iso3")
>>> from rotorquant import IsoQuantCache       # transformers' Cache (rotorquant[transformers])
>>> cache = IsoQuantCache(bits=4, config=model.config)
"""
from . import cache_types, errors
from .errors import (ChatError, ContextError, DecodeError, GGUFFormatError, KVPolicyError, ModelLoadError,
                     RotorQuantError, RpcError)
from .info import build_info
from ._native import build_config
from .llama import Llama
from .sampling import Sampling

__version__ = build_config.VERSION

_HF_CACHE = ("IsoQuantCache", "PlanarQuantCache", "RotorQuantCache")


def __getattr__(name: str):
    """The transformers caches, imported on first use: plain ``import rotorquant`` needs no torch."""
    if name in _HF_CACHE:
        from . import hf_cache
        return getattr(hf_cache, name)
    raise AttributeError(f"module 'rotorquant' has no attribute {name!r}")


__all__ = [*_HF_CACHE, "Llama", "Sampling", "build_info", "cache_types", "errors", "RotorQuantError", "ModelLoadError",
           "ChatError", "ContextError", "GGUFFormatError", "DecodeError", "KVPolicyError", "RpcError", "__version__"]
