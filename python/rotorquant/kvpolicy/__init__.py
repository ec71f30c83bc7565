"""Per-model KV-cache policies: K centering, Hadamard choice, per-layer cache types.

``rq-run calibrate`` measures a model and writes a policy file (``calibrate``);
``Llama(kv_policy="auto")`` and ``rq-run`` find it (``locate``) and libllama
applies it.  Modules that need numpy are imported on use, so ``import rotorquant``
stays light.
"""
from . import locate

__all__ = ["locate"]
