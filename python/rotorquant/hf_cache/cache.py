"""``IsoQuantCache`` / ``PlanarQuantCache``: RotorQuant KV compression for transformers.

    from rotorquant import IsoQuantCache
    cache = IsoQuantCache(bits=4, config=model.config)
    model.generate(**inputs, past_key_values=cache)   # or cache=cache (transformers >= 5.25)

The formats are the C cache types' (``iso3`` = ``IsoQuantCache(bits=3)``...), block for
block and byte for byte; ``bits=2`` is a Python-only format with 4 Lloyd-Max levels.
Only attention layers are compressed: linear-attention (recurrent) state, as in Qwen3.5's
Gated DeltaNet layers, is kept as transformers keeps it, and sliding-window layers keep
their window.  Without ``config`` every layer is taken as full attention (fine for
Llama, Qwen2/3, SmolLM...); models with linear-attention or sliding-window layers need
``config=model.config``.
"""
from __future__ import annotations

import operator

from transformers.cache_utils import (Cache, DummyLayer, LinearAttentionCacheLayerMixin, LinearAttentionLayer,
                                      get_layer_types_and_kwargs)

from .codec import QK
from .layers import RotorQuantLayer, RotorQuantSlidingWindowLayer

BITS = (2, 3, 4)
DEFAULT_RESIDUAL_LENGTH = 128  # chosen by measurement: docs/BENCHMARKS.md, section hf-cache-quality (residual sweep)
_LINEAR_TYPES = ("linear_attention", "conv")
_SLIDING_TYPES = ("sliding_attention", "chunked_attention")


def _whole(name: str, value, allowed=None) -> int:
    """An integer (numpy's too, not a float or bool) within ``allowed``."""
    try:
        n = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        n = None
    if n is None or (allowed is not None and n not in allowed) or (allowed is None and n < 0):
        want = "2, 3 or 4" if allowed is not None else "an integer >= 0"
        raise ValueError(f"{name} must be {want}, not {value!r}")
    return n


class RotorQuantCache(Cache):
    """A transformers ``Cache`` whose attention layers store RotorQuant blocks.

    The class's ``rotation`` is ``"iso"`` (4D quaternion blocks, ``IsoQuantCache``) or
    ``"planar"`` (2D Givens pairs, ``PlanarQuantCache``); ``bits`` sets K and V
    (``value_bits`` sets V apart: V tolerates fewer bits than K); the newest ``residual_length`` tokens of each layer stay in the model's precision
    (default 128).
    """

    rotation = "iso"

    def __init__(self, bits: int = 4, *, value_bits: int | None = None, config=None,
                 residual_length: int = DEFAULT_RESIDUAL_LENGTH):
        bits = _whole("bits", bits, BITS)
        value_bits = bits if value_bits is None else _whole("value_bits", value_bits, BITS)
        residual_length = _whole("residual_length", residual_length)
        self.kind_k, self.kind_v = f"{self.rotation}{bits}", f"{self.rotation}{value_bits}"
        self.residual_length = residual_length
        self._configured = config is not None
        if config is None:
            super().__init__(layer_class_to_replicate=self._attention_layer)
        else:
            super().__init__(layers=self._layers_for(config))

    def _attention_layer(self, layer_idx: int | None = None) -> RotorQuantLayer:
        return RotorQuantLayer(self.kind_k, self.kind_v, self.residual_length, layer_idx)

    def _layers_for(self, config) -> list:
        text = config.get_text_config(decoder=True)
        layer_types, layer_kwargs = get_layer_types_and_kwargs(text)
        head_dim = getattr(text, "head_dim", None) or (
            text.hidden_size // text.num_attention_heads if getattr(text, "num_attention_heads", 0) else None)
        if isinstance(head_dim, int) and head_dim % QK and any(
                t == "full_attention" or t in _SLIDING_TYPES for t in layer_types):
            raise ValueError(f"this model's head_dim is {head_dim}, not a multiple of {QK}, the RotorQuant block "
                             f"({type(self).__name__} needs head_dim 64, 128, 256...)")
        layers = []
        for il, (kind, kw) in enumerate(zip(layer_types, layer_kwargs)):
            if kind == "full_attention":
                layers.append(self._attention_layer(il))
            elif kind in _SLIDING_TYPES:
                layers.append(RotorQuantSlidingWindowLayer(self.kind_k, self.kind_v, self.residual_length,
                                                           kw["sliding_window"], il))
            elif kind in _LINEAR_TYPES:
                layers.append(LinearAttentionLayer(**kw))  # recurrent state: not a KV cache, left as it is
            elif kind == "dummy":
                layers.append(DummyLayer(**kw))
            else:
                raise ValueError(f"layer {il} of this model is of type {kind!r}, which {type(self).__name__} "
                                 "does not handle (it handles full, sliding-window, chunked and linear attention)")
        return layers

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while not self._configured and len(self.layers) <= layer_idx:
            self.layers.append(self._attention_layer(len(self.layers)))
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def crop(self, tokens_to_remove: int) -> None:
        """As transformers' caches; refused before any layer changes if one layer cannot."""
        for layer in self.layers:
            if isinstance(layer, RotorQuantLayer):
                layer.check_crop(tokens_to_remove)
        super().crop(tokens_to_remove)

    def _linear(self, layer_idx: int) -> None:
        if not self._configured and (layer_idx >= len(self.layers)
                                     or not isinstance(self.layers[layer_idx], LinearAttentionCacheLayerMixin)):
            raise ValueError(f"this model has linear-attention layers (layer {layer_idx}): build the cache with "
                             f"{type(self).__name__}(..., config=model.config)")

    def get_conv_state(self, layer_idx: int, state_idx: int = 0):
        self._linear(layer_idx)
        return super().get_conv_state(layer_idx, state_idx)

    def update_conv_state(self, conv_states, layer_idx: int, state_idx: int = 0, **kwargs):
        self._linear(layer_idx)
        return super().update_conv_state(conv_states, layer_idx, state_idx, **kwargs)

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0):
        self._linear(layer_idx)
        return super().get_recurrent_state(layer_idx, state_idx)

    def update_recurrent_state(self, recurrent_states, layer_idx: int, state_idx: int = 0, **kwargs):
        self._linear(layer_idx)
        return super().update_recurrent_state(recurrent_states, layer_idx, state_idx, **kwargs)

    def nbytes(self) -> int:
        """Bytes of the stored attention states (blocks plus recent tokens); linear-attention
        state is not counted."""
        return sum(layer.nbytes() for layer in self.layers if isinstance(layer, RotorQuantLayer))

    def __repr__(self):
        return (f"{type(self).__name__}(K {self.kind_k}, V {self.kind_v}, residual_length={self.residual_length}, "
                f"{len(self.layers)} layers)")


class IsoQuantCache(RotorQuantCache):
    """RotorQuant with 4D quaternion rotation blocks: ``IsoQuantCache(bits=3)`` stores
    the C type ``iso3`` (3.25 bits per element), ``bits=4`` ``iso4`` (4.25), ``bits=2`` a
    2.25-bit Python-only format."""

    rotation = "iso"


class PlanarQuantCache(RotorQuantCache):
    """RotorQuant with 2D Givens rotation pairs: ``planar3`` / ``planar4`` / 2-bit."""

    rotation = "planar"
