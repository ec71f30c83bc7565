"""RotorQuant KV-cache compression for transformers (the ``rotorquant[transformers]`` extra).

``IsoQuantCache`` / ``PlanarQuantCache`` are also importable from ``rotorquant`` itself;
importing ``rotorquant`` does not import torch, only asking for these names does.
"""
from __future__ import annotations

try:
    import torch  # noqa: F401
    import transformers
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"IsoQuantCache needs torch and transformers ({exc.name} is missing): "
                      "pip install 'rotorquant[transformers]'") from exc

_MIN_TRANSFORMERS = (5, 24)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _version(transformers.__version__) < _MIN_TRANSFORMERS:
    raise ImportError(f"IsoQuantCache needs transformers >= {'.'.join(map(str, _MIN_TRANSFORMERS))} (its layer-based "
                      f"Cache API), not {transformers.__version__}: pip install 'rotorquant[transformers]'")

from .cache import DEFAULT_RESIDUAL_LENGTH, IsoQuantCache, PlanarQuantCache, RotorQuantCache  # noqa: E402
from .codec import BlockCodec, codec  # noqa: E402

__all__ = ["IsoQuantCache", "PlanarQuantCache", "RotorQuantCache", "BlockCodec", "codec", "DEFAULT_RESIDUAL_LENGTH"]
