"""``KVPolicy``: what a KV policy file holds, how it is written and read back.

The file format is defined by the reader in libllama (csrc/rotorquant/rq-kv-policy.cpp);
``describe`` asks that reader, so Python and C can never disagree about a file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import cache_types
from .._native import ffi, lib
from ..errors import KVPolicyError
from ._gguf_write import write_gguf

FORMAT_VERSION = 1
_PREFIX = "rotorquant.kv_policy."


@dataclass
class KVPolicy:
    """Per-model KV-cache choices.

    ``type_k[il]`` / ``type_v[il]`` are cache-type names for layer ``il``, or ``None``
    for "the context's type"; they apply only when the context's types equal
    ``base_type_k`` / ``base_type_v``.  ``attn_rot_k`` / ``attn_rot_v`` switch
    upstream's whole-head Hadamard rotation (``None`` = engine default).
    ``k_center[il]`` is the per-channel K offset of layer ``il`` (post-RoPE,
    ``n_embd_k_gqa`` values) or ``None``.
    """

    n_layer: int
    base_type_k: "str | None" = None
    base_type_v: "str | None" = None
    type_k: "list[str | None]" = field(default_factory=list)
    type_v: "list[str | None]" = field(default_factory=list)
    attn_rot_k: "bool | None" = None
    attn_rot_v: "bool | None" = None
    k_center: "list[np.ndarray | None]" = field(default_factory=list)
    notes: str = ""

    def __post_init__(self) -> None:
        self.type_k = list(self.type_k) or [None] * self.n_layer
        self.type_v = list(self.type_v) or [None] * self.n_layer
        self.k_center = list(self.k_center) or [None] * self.n_layer
        for name in ("type_k", "type_v", "k_center"):
            if len(getattr(self, name)) != self.n_layer:
                raise KVPolicyError(f"{name} has {len(getattr(self, name))} entries for {self.n_layer} layers")
        for t in (self.base_type_k, self.base_type_v, *self.type_k, *self.type_v):
            if t is not None:
                cache_types.get(t)  # raises on an unknown name

    def bits_per_element(self, n_embd_k: "list[int]", n_embd_v: "list[int]") -> float:
        """Average bits per cached element over K and V of the layers that have a cache."""
        bits = elems = 0.0
        for il in range(self.n_layer):
            for types, base, n in ((self.type_k, self.base_type_k, n_embd_k[il]),
                                   (self.type_v, self.base_type_v, n_embd_v[il])):
                if n:
                    t = types[il] or base or "f16"
                    bits += cache_types.get(t).bits_per_element * n
                    elems += n
        return bits / elems if elems else 0.0

    def write(self, path: "str | os.PathLike[str]") -> Path:
        kv: dict = {}
        if self.base_type_k:
            kv[_PREFIX + "base_type_k"] = self.base_type_k
        if self.base_type_v:
            kv[_PREFIX + "base_type_v"] = self.base_type_v
        kv[_PREFIX + "type_k"] = [t or "" for t in self.type_k]
        kv[_PREFIX + "type_v"] = [t or "" for t in self.type_v]
        for key, flag in (("attn_rot_k", self.attn_rot_k), ("attn_rot_v", self.attn_rot_v)):
            kv[_PREFIX + key] = -1 if flag is None else int(bool(flag))
        if self.notes:
            kv[_PREFIX + "notes"] = self.notes
        tensors = {f"k_center.{il}": np.asarray(mu, dtype=np.float32)
                   for il, mu in enumerate(self.k_center) if mu is not None}
        out = write_gguf(path, kv, {_PREFIX + "version": FORMAT_VERSION, _PREFIX + "n_layer": self.n_layer},
                         tensors)
        describe(out)  # what libllama will read: refuse to leave a file it would reject
        return out


def describe(path: "str | os.PathLike[str]") -> dict:
    """The policy as libllama reads it: base/per-layer types, Hadamard flags, centered layers."""
    p = Path(path)
    if not p.is_file():
        raise KVPolicyError(f"KV policy file not found: {p}")
    size = 1 << 16
    while True:
        buf = ffi.new("char[]", size)
        n = lib.rq_kv_policy_describe(os.fsencode(p), buf, size)
        if abs(n) < size:
            break
        size = abs(n) + 1
    text = ffi.string(buf).decode("utf-8", "replace")
    if n < 0:
        raise KVPolicyError(text)
    return json.loads(text)
