"""Quantize-then-dequantize rows through the C codecs the KV cache itself uses.

Calibration must measure the error of the real formats (our rotor types via
``rq_quantize``, upstream's via ``ggml_quantize_chunk``), not of a Python model
of them.  Also the Walsh-Hadamard matrix upstream's KV cache rotates with.
"""
from __future__ import annotations

import numpy as np

from .. import cache_types
from .._native import ffi, lib


def roundtrip(x: np.ndarray, type_name: str) -> np.ndarray:
    """``x`` (rows along the last axis) as the cache type would store and return it."""
    ct = cache_types.get(type_name)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if ct.name == "f32":
        return x.copy()
    n_per_row = x.shape[-1]
    if n_per_row % ct.block_size:
        raise ValueError(f"{ct.name} needs rows of a multiple of {ct.block_size} values, not {n_per_row}")
    nrows = x.size // n_per_row
    dst = ffi.new("uint8_t[]", nrows * n_per_row // ct.block_size * ct.bytes_per_block)
    src = ffi.from_buffer("float[]", x)
    if ct.rotorquant:
        lib.rq_quantize(ct.ggml_type, src, dst, nrows, n_per_row)
    else:
        lib.ggml_quantize_chunk(ct.ggml_type, src, dst, 0, nrows, n_per_row, ffi.NULL)
    out = np.empty_like(x)
    lib.ggml_get_type_traits(ct.ggml_type).to_float(dst, ffi.from_buffer("float[]", out), x.size)
    return out


def hadamard(n: int) -> np.ndarray:
    """The orthonormal Sylvester-ordered Walsh-Hadamard matrix of size ``n`` (a power of 2)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of 2, not {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return (h / np.sqrt(n)).astype(np.float32)


def k_rotation_size(head_dim: int) -> int:
    """Upstream's K rotation block: the largest power of 2 (>= 64) dividing head_dim."""
    n = 64
    while head_dim % (n * 2) == 0:
        n *= 2
    return n


V_ROTATION_SIZE = 64  # upstream rotates V in 64-value blocks


def rotate(x: np.ndarray, n: int) -> np.ndarray:
    """Apply the size-``n`` Hadamard to consecutive ``n``-value blocks of the last axis."""
    h = hadamard(n)
    shape = x.shape
    return (x.reshape(-1, n) @ h.T).reshape(shape)  # h is symmetric and its own inverse
