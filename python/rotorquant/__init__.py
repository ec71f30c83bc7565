"""rotorquant: llama.cpp with RotorQuant KV-cache compression.

>>> import rotorquant
>>> rotorquant.build_info()["upstream_commit"]
'0c1e57098'
>>> from rotorquant import Llama
>>> llm = Llama("model.gguf", cache_type_k="iso4", cache_type_v="iso3")
"""
from . import cache_types, errors
from .errors import ChatError, ContextError, DecodeError, KVPolicyError, ModelLoadError, RotorQuantError, RpcError
from .info import build_info
from ._native import build_config
from .llama import Llama
from .sampling import Sampling

__version__ = build_config.VERSION

__all__ = ["Llama", "Sampling", "build_info", "cache_types", "errors", "RotorQuantError", "ModelLoadError",
           "ChatError", "ContextError", "DecodeError", "KVPolicyError", "RpcError", "__version__"]
