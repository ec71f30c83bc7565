"""Cache layers that store K and V as RotorQuant blocks (transformers' layer-based Cache API).

A layer keeps two parts: the older tokens as packed blocks (uint8, fp16 scales inside,
exactly the C block layout) and the newest ``residual_length`` tokens in the model's
precision.  At each step the blocks are decoded and returned with the recent tokens, so
attention is computed by the model's own code on (mostly) dequantized values -- the cache
saves memory, not attention time.  Tokens move into blocks as they leave the recent
window, one C block per 64 values of a head, so any length works (no grouping along the
sequence).

The tokens of the latest update move into blocks only when the next update comes: until
then they are held as given, so ``crop`` of them (assisted decoding rejecting a draft, a
deferred stop) restores exactly the cache that never saw them.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from .codec import BlockCodec, QK, codec

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


class RotorQuantLayer(DynamicLayer):
    """A full-attention layer: every token kept, older ones as RotorQuant blocks."""

    is_sliding = False
    is_croppable = True

    def __init__(self, kind_k: str, kind_v: str, residual_length: int, layer_idx: int | None = None):
        super().__init__()
        self.kind_k, self.kind_v = kind_k, kind_v
        self.residual_length = residual_length
        self.layer_idx = layer_idx
        self.cumulative_length = 0
        self.latest = 0
        self.codes_k: torch.Tensor | None = None  # (batch, kv heads, tokens, packed bytes) uint8
        self.codes_v: torch.Tensor | None = None
        self._codec_k: BlockCodec | None = None
        self._codec_v: BlockCodec | None = None

    def __repr__(self):
        return f"{type(self).__name__}(K {self.kind_k}, V {self.kind_v}, residual_length={self.residual_length})"

    @property
    def _where(self) -> str:
        return "the cache" if self.layer_idx is None else f"layer {self.layer_idx}"

    # -- set-up and checks ---------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self._check_pair(key_states, value_states)
        for name, t in (("key", key_states), ("value", value_states)):
            if t.shape[-1] % QK:
                raise ValueError(f"{self._where}: {name} head_dim {t.shape[-1]} is not a multiple of {QK}, "
                                 f"the RotorQuant block (use a model whose head_dim is 64, 128, 256...)")
        self.device, self.dtype = key_states.device, key_states.dtype
        self._codec_k, self._codec_v = codec(self.kind_k, self.device), codec(self.kind_v, self.device)
        b, h, _, dk = key_states.shape
        dv = value_states.shape[-1]
        self.keys = key_states.new_empty((b, h, 0, dk))
        self.values = value_states.new_empty((b, value_states.shape[1], 0, dv))
        self.codes_k = torch.empty((b, h, 0, self._codec_k.packed_width(dk)), dtype=torch.uint8, device=self.device)
        self.codes_v = torch.empty((b, value_states.shape[1], 0, self._codec_v.packed_width(dv)), dtype=torch.uint8,
                                   device=self.device)
        self.is_initialized = True

    def _check_pair(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        for name, t in (("key", key_states), ("value", value_states)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{self._where}: {name} states must be a torch.Tensor, not {type(t).__name__}")
            if t.dtype not in _FLOATS:
                raise TypeError(f"{self._where}: {name} states are {t.dtype}; RotorQuant caches take float16, "
                                "bfloat16 or float32")
            if t.dim() != 4:
                raise ValueError(f"{self._where}: {name} states must be (batch, heads, tokens, head_dim), "
                                 f"not of shape {tuple(t.shape)}")
        if key_states.device != value_states.device or key_states.dtype != value_states.dtype:
            raise ValueError(f"{self._where}: keys are {key_states.dtype} on {key_states.device} but values are "
                             f"{value_states.dtype} on {value_states.device}")
        if key_states.shape[:3] != value_states.shape[:3]:
            raise ValueError(f"{self._where}: key states {tuple(key_states.shape)} and value states "
                             f"{tuple(value_states.shape)} differ in batch, heads or tokens")
        if self.is_initialized:
            if key_states.device != self.device or key_states.dtype != self.dtype:
                raise ValueError(f"{self._where} holds {self.dtype} states on {self.device}; got {key_states.dtype} "
                                 f"on {key_states.device} (move the model or the inputs, or reset the cache)")
            if key_states.shape[:2] != self.keys.shape[:2] or key_states.shape[-1] != self.keys.shape[-1] \
                    or value_states.shape[-1] != self.values.shape[-1]:
                raise ValueError(f"{self._where} holds states of batch {self.keys.shape[0]}, {self.keys.shape[1]} "
                                 f"heads, head_dim {self.keys.shape[-1]}; got {tuple(key_states.shape)}")

    # -- the cache ---------------------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new states; return every state the attention needs (decoded blocks,
        recent tokens, the new ones)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        else:
            self._check_pair(key_states, value_states)
        self._settle()
        self.latest = key_states.shape[-2]  # held as given until the next update
        self.cumulative_length += key_states.shape[-2]
        full_k = self._assemble(self.codes_k, self._codec_k, self.keys, key_states)
        full_v = self._assemble(self.codes_v, self._codec_v, self.values, value_states)
        self.keys = torch.cat((self.keys, key_states), dim=-2)
        self.values = torch.cat((self.values, value_states), dim=-2)
        return full_k, full_v

    def _assemble(self, codes: torch.Tensor, c: BlockCodec, recent: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """[decoded blocks | recent | new] along the tokens, written once into one tensor."""
        n_q, n_r = codes.shape[-2], recent.shape[-2]
        full = new.new_empty((*new.shape[:2], n_q + n_r + new.shape[-2], new.shape[-1]))
        c.decode(codes, self.dtype, out=full[:, :, :n_q])
        full[:, :, n_q:n_q + n_r] = recent
        full[:, :, n_q + n_r:] = new
        return full

    def _settle(self) -> None:
        """Forget what the layer no longer needs, then encode what left the recent window."""
        self._forget()
        n = self.keys.shape[-2] - self.residual_length
        if n <= 0:
            return
        self.codes_k = torch.cat((self.codes_k, self._codec_k.encode(self.keys[:, :, :n])), dim=-2)
        self.codes_v = torch.cat((self.codes_v, self._codec_v.encode(self.values[:, :, :n])), dim=-2)
        # copies, so the full-precision prefix is freed now
        self.keys = self.keys[:, :, n:].clone()
        self.values = self.values[:, :, n:].clone()

    def _forget(self) -> None:
        """Drop tokens the layer no longer needs (sliding-window layers)."""

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def nbytes(self) -> int:
        """Bytes of the stored states: blocks plus the recent tokens."""
        if not self.is_initialized:
            return 0
        return sum(t.numel() * t.element_size() for t in (self.codes_k, self.codes_v, self.keys, self.values))

    def check_crop(self, tokens_to_remove: int) -> None:
        """Raise if ``crop(tokens_to_remove)`` cannot be done (before any layer is touched)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, not {tokens_to_remove}")

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last ``-tokens_to_remove`` tokens (transformers' convention: a negative
        count; 0 removes none).  Exact for the tokens of the latest update; older ones were
        encoded already, and what stays is as encoded."""
        RotorQuantLayer.check_crop(self, tokens_to_remove)
        n = min(-tokens_to_remove, self.codes_k.shape[-2] + self.keys.shape[-2]) if self.is_initialized else 0
        if n == 0:
            return
        from_recent = min(n, self.keys.shape[-2])
        self.keys = self.keys[:, :, :self.keys.shape[-2] - from_recent]
        self.values = self.values[:, :, :self.values.shape[-2] - from_recent]
        from_blocks = n - from_recent
        if from_blocks:
            self.codes_k = self.codes_k[:, :, :self.codes_k.shape[-2] - from_blocks]
            self.codes_v = self.codes_v[:, :, :self.codes_v.shape[-2] - from_blocks]
        self.cumulative_length -= n
        self.latest = max(0, self.latest - n)

    def reset(self) -> None:
        self.codes_k = self.codes_v = None
        super().reset()  # drops keys/values, clears is_initialized and cumulative_length

    def _each(self, fn) -> None:
        if self.is_initialized:
            self.keys, self.values = fn(self.keys), fn(self.values)
            self.codes_k, self.codes_v = fn(self.codes_k), fn(self.codes_v)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._each(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._each(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._each(lambda t: t[indices, ...])


class RotorQuantSlidingWindowLayer(RotorQuantLayer):
    """A sliding-window (or chunked) layer: only the last ``sliding_window - 1`` tokens
    are kept, the older of them as blocks."""

    is_sliding = True

    def __init__(self, kind_k: str, kind_v: str, residual_length: int, sliding_window: int,
                 layer_idx: int | None = None):
        super().__init__(kind_k, kind_v, residual_length, layer_idx)
        self.sliding_window = sliding_window
        self._sliding_window_tensor = torch.tensor(sliding_window, dtype=torch.long)

    def _forget(self) -> None:
        """Keep the last ``sliding_window - 1`` tokens: drop the oldest blocks first (before
        anything is encoded, so no token is encoded only to be dropped)."""
        excess = self.codes_k.shape[-2] + self.keys.shape[-2] - (self.sliding_window - 1)
        if excess <= 0:
            return
        old = min(excess, self.codes_k.shape[-2])
        if old:
            self.codes_k = self.codes_k[:, :, old:].clone()
            self.codes_v = self.codes_v[:, :, old:].clone()
        if excess > old:
            self.keys = self.keys[:, :, excess - old:].clone()
            self.values = self.values[:, :, excess - old:].clone()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        kv_offset = max(self.cumulative_length - self.sliding_window + 1, 0)
        if self.cumulative_length >= self.sliding_window:
            return self.sliding_window - 1 + query_length, kv_offset
        return self.cumulative_length + query_length, kv_offset

    def get_max_length(self) -> int:
        return self.sliding_window

    def check_crop(self, tokens_to_remove: int) -> None:
        """Raise if ``crop(tokens_to_remove)`` cannot be exact: tokens already forgotten
        cannot return, so only the latest update (or anything before the window filled) can
        be removed."""
        super().check_crop(tokens_to_remove)
        held = (self.codes_k.shape[-2] + self.keys.shape[-2]) if self.is_initialized else 0
        if self.cumulative_length > held and -tokens_to_remove > self.latest:
            raise RuntimeError(f"{self._where}: cannot remove {-tokens_to_remove} tokens from a sliding window that "
                               f"already forgot older ones (only the latest update's {self.latest} can be removed)")

    def crop(self, tokens_to_remove: int) -> None:
        self.check_crop(tokens_to_remove)
        super().crop(tokens_to_remove)
