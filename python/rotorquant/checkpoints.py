"""Recurrent-state checkpoints: prompt reuse for hybrid and recurrent models.

An attention KV cache can drop any tail, so a new prompt that shares a prefix with the
cache evaluates only what differs.  A recurrent state (Qwen3.5's linear-attention layers,
Mamba) holds only "after the last token": it cannot go back.  So where the history is
rewritten — a thinking model's template drops the reasoning of earlier turns, a stop
string leaves extra tokens behind, the same prompt is asked again — the whole prompt had
to be evaluated again.  With a copy of the recurrent part of the state taken at the end
of each prompt (``llama_state_seq_*_ext`` with ``LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY``,
as llama-server's context checkpoints), the cache goes back to the newest checkpoint
inside the shared prefix: the recurrent state is restored, the attention cache drops its
tail, and only the rest is evaluated.
"""
from __future__ import annotations

from ._native import ffi, lib

_PARTIAL = lib.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY


class Checkpoints:
    """Up to ``limit`` snapshots of sequence 0's recurrent state, keyed by how many units of
    the KV cache's record (tokens, and a whole medium as one) were evaluated."""

    def __init__(self, ctx, limit: int):
        self._ctx = ctx
        self.limit = limit
        self._saved: list[tuple[int, bytes]] = []  # (tokens in memory, state), ascending

    def __len__(self) -> int:
        return len(self._saved)

    def token_counts(self) -> list[int]:
        return [n for n, _ in self._saved]

    def nbytes(self) -> int:
        return sum(len(s) for _, s in self._saved)

    def take(self, n_tokens: int) -> None:
        """Snapshot the state as it is with ``n_tokens`` tokens evaluated."""
        if self.limit <= 0:
            return
        size = lib.llama_state_seq_get_size_ext(self._ctx, 0, _PARTIAL)
        buf = ffi.new("uint8_t[]", size)
        n = lib.llama_state_seq_get_data_ext(self._ctx, buf, size, 0, _PARTIAL)
        if n == 0:
            return
        self._saved = [c for c in self._saved if c[0] < n_tokens]
        self._saved.append((n_tokens, bytes(ffi.buffer(buf, n))))
        del self._saved[:-self.limit]

    def restore(self, at_most: int) -> int:
        """Put back the newest snapshot of at most ``at_most`` tokens (dropping newer
        ones); return its token count, 0 if there is none."""
        self.drop_after(at_most)
        while self._saved:
            n_tokens, state = self._saved[-1]
            if lib.llama_state_seq_set_data_ext(self._ctx, state, len(state), 0, _PARTIAL) == len(state):
                return n_tokens
            self._saved.pop()  # unreadable: forget it, try an older one
        return 0

    def drop_after(self, n_tokens: int) -> None:
        """Forget snapshots of a history longer than ``n_tokens`` (it was rewritten)."""
        self._saved = [c for c in self._saved if c[0] <= n_tokens]

    def clear(self) -> None:
        self._saved = []
