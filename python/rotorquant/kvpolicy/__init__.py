"""Per-model KV-cache policies: K centering, Hadamard choice, per-layer cache types.

``rq-run calibrate`` measures a model and writes a policy file (``calibrate_model``);
``Llama(kv_policy="auto")`` and ``rq-run`` find it (``locate``) and libllama applies it.
A policy can also be written by hand, e.g. to keep layer 0's K in q8_0::

    from rotorquant.kvpolicy import KVPolicy
    KVPolicy(n_layer=24, base_type_k="iso3", base_type_v="iso3",
             type_k=["q8_0"] + [None] * 23).write("model.kvpolicy.gguf")

The numpy-based parts are imported on first use, so ``import rotorquant`` stays light.
"""
from . import locate

# (not `calibrate`/`capture`: those names are the submodules)
_LAZY = {"KVPolicy": "policy", "describe": "policy", "calibrate_model": "calibrate"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["locate", *_LAZY]
