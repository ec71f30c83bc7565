"""The one registry of KV-cache types, shared by every layer.

A cache type's *name* is what users type (``-ctk q8_0``, ``cache_type_k="q8_0"``)
and what ggml calls the type (``ggml_type_name``).  Everything else is read
from the compiled headers and ggml's type traits, never retyped:

* ``ggml_type``: the ``enum ggml_type`` value, through the cffi API-mode module;
* ``block_size`` and ``bytes_per_block``: ``ggml_blck_size`` / ``ggml_type_size``;
* ``bits_per_element``: derived from the two above.

``needs_flash_attn`` follows llama.cpp's rule: a quantized **V** cache is only
supported by the flash-attention path (K is read by a matrix product either way).
"""
from __future__ import annotations

from dataclasses import dataclass

from ._native import c_str, lib

# Cache types llama.cpp accepts for -ctk/-ctv, in its own order of listing, then ours
# (csrc/rotorquant: block rotation + 3- or 4-bit codebook, 64-value blocks).
_NAMES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1",
          "planar3", "iso3", "planar4", "iso4")


@dataclass(frozen=True)
class CacheType:
    name: str
    ggml_type: int
    block_size: int
    bytes_per_block: int

    @property
    def bits_per_element(self) -> float:
        return 8.0 * self.bytes_per_block / self.block_size

    @property
    def quantized(self) -> bool:
        return bool(lib.ggml_is_quantized(self.ggml_type))

    @property
    def rotorquant(self) -> bool:
        """One of ours: planar3, iso3, planar4, iso4."""
        return bool(lib.rq_is_cache_type(self.ggml_type))

    @property
    def needs_flash_attn(self) -> bool:
        """True if llama.cpp needs flash attention to use this type for V."""
        return self.quantized

    def __str__(self) -> str:
        return self.name


def _load() -> dict[str, CacheType]:
    registry = {}
    for name in _NAMES:
        type_id = getattr(lib, "GGML_TYPE_" + name.upper())
        c_name = c_str(lib.ggml_type_name(type_id))
        if c_name != name:  # the C enum and the name must agree, or the build is wrong
            raise RuntimeError(f"cache type {name!r}: ggml calls type {type_id} {c_name!r}")
        registry[name] = CacheType(name, type_id, int(lib.ggml_blck_size(type_id)),
                                   int(lib.ggml_type_size(type_id)))
    return registry


_REGISTRY = _load()


def names() -> list[str]:
    """Every valid cache-type name, in display order."""
    return list(_REGISTRY)


def all_types() -> list[CacheType]:
    return list(_REGISTRY.values())


def get(name: str | CacheType) -> CacheType:
    """Look up a cache type by name (case-insensitive).

    Raises ``ValueError`` naming the valid choices for anything else.
    """
    if isinstance(name, CacheType):
        return name
    if isinstance(name, str):
        found = _REGISTRY.get(name.strip().lower())
        if found is not None:
            return found
    raise ValueError(f"unknown KV cache type {name!r}; valid types: {', '.join(_REGISTRY)}")
