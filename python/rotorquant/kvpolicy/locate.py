"""Where a model's KV policy lives, and what ``kv_policy="auto"`` means.

``auto`` uses a policy written by ``rq-run calibrate`` for this model file: first
``MODEL.kvpolicy.gguf`` next to the model, then the user cache
(``$RQ_CACHE_DIR`` or ``~/.cache/rotorquant``)/kv-policy/, keyed by the model's
file name and size, for models in read-only places (e.g. a wheel).  No policy
found means none is used: plain cache types, upstream's defaults.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import KVPolicyError

SUFFIX = ".kvpolicy.gguf"


def _cache_dir() -> Path:
    return Path(os.environ.get("RQ_CACHE_DIR") or Path.home() / ".cache" / "rotorquant") / "kv-policy"


def sidecar_path(model_path: "str | os.PathLike[str]") -> Path:
    """``dir/model.gguf`` -> ``dir/model.kvpolicy.gguf``."""
    p = Path(model_path)
    stem = p.name[:-5] if p.name.endswith(".gguf") else p.name
    return p.with_name(stem + SUFFIX)


def cache_path(model_path: "str | os.PathLike[str]") -> Path:
    p = Path(model_path)
    stem = p.name[:-5] if p.name.endswith(".gguf") else p.name
    return _cache_dir() / f"{stem}-{p.stat().st_size}{SUFFIX}"


def default_output(model_path: "str | os.PathLike[str]") -> Path:
    """Where ``rq-run calibrate`` writes: next to the model if that folder is writable."""
    side = sidecar_path(model_path)
    return side if os.access(side.parent, os.W_OK) else cache_path(model_path)


def resolve(kv_policy: "str | os.PathLike[str] | None", model_path: "str | os.PathLike[str]") -> "Path | None":
    """``None``/``"none"`` -> no policy; ``"auto"`` -> the model's policy if there is one;
    anything else is a path that must exist."""
    if kv_policy is None or (isinstance(kv_policy, str) and kv_policy.lower() == "none"):
        return None
    if isinstance(kv_policy, str) and kv_policy.lower() == "auto":
        for candidate in (sidecar_path(model_path), cache_path(model_path)):
            if candidate.is_file():
                return candidate
        return None
    p = Path(kv_policy)
    if not p.is_file():
        raise KVPolicyError(f"KV policy file not found: {p}")
    return p
