"""Reference codec of the RotorQuant KV-cache types, in numpy.

It mirrors csrc/rotorquant/rq-quants.c operation for operation (float inputs,
double arithmetic, the same summation order), so for the same input it writes
the same bytes -- the byte-exact tests compare the two.  It is also the readable
specification of the formats:

    block of QK = 64 values x:  n = |x|;  y = R x / n;  k_j = #{bounds < y_j};
    s = half(n / |levels[k]|);  decode: s * R^T levels[k]

3-bit block (26 bytes): half s | qs[16] | signs[8].  Element j = 16 f + c: index bits
    0-1 in qs[c] at bit 2 f, bit 2 in signs[c % 8] at bit 2 f + c // 8.
4-bit block (34 bytes): half s | qs[32]: element j in qs[j % 32], low nibble if j < 32.
2-bit block (18 bytes), Python only (the transformers cache's ``bits=2``; no C type):
    half s | qs[16], element j = 16 f + c at bits 2 f of qs[c] (the 3-bit layout without
    its third bit), 4 Lloyd-Max levels.
"""
from __future__ import annotations

import numpy as np

from . import _tables as T

QK = T.QK
KINDS = ("planar3", "iso3", "planar4", "iso4")  # the C cache types
PYTHON_ONLY_KINDS = ("planar2", "iso2")
_PAYLOAD = {2: QK // 4, 3: QK // 4 + QK // 8, 4: QK // 2}
BLOCK_BYTES = {k: 2 + _PAYLOAD[int(k[-1])] for k in KINDS + PYTHON_ONLY_KINDS}

_COS = np.array(T.PLANAR_COS, dtype=np.float32).astype(np.float64)
_SIN = np.array(T.PLANAR_SIN, dtype=np.float32).astype(np.float64)
_QUAT = np.array(T.ISO_QUAT, dtype=np.float32).astype(np.float64)  # (QK/4, 4)


def _levels(kind: str) -> tuple[np.ndarray, np.ndarray]:
    bits = kind[-1]
    return np.array(getattr(T, "LEVELS" + bits), np.float32), np.array(getattr(T, "BOUNDS" + bits), np.float32)


def rotate(x: np.ndarray, kind: str) -> np.ndarray:
    """y = R x for blocks x of shape (..., QK), in double (as the C quantiser)."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    y = np.empty_like(x)
    if kind.startswith("planar"):
        u0, u1 = x[..., 0::2], x[..., 1::2]
        y[..., 0::2] = _COS * u0 - _SIN * u1
        y[..., 1::2] = _SIN * u0 + _COS * u1
    else:
        a0, a1, a2, a3 = (_QUAT[:, i] for i in range(4))
        v0, v1, v2, v3 = (x[..., i::4] for i in range(4))
        y[..., 0::4] = a0 * v0 - a1 * v1 - a2 * v2 - a3 * v3
        y[..., 1::4] = a1 * v0 + a0 * v1 - a3 * v2 + a2 * v3
        y[..., 2::4] = a2 * v0 + a3 * v1 + a0 * v2 - a1 * v3
        y[..., 3::4] = a3 * v0 - a2 * v1 + a1 * v2 + a0 * v3
    return y


def unrotate(w: np.ndarray, kind: str) -> np.ndarray:
    """x = R^T w (the inverse rotation), in double."""
    w = np.asarray(w, dtype=np.float64)
    x = np.empty_like(w)
    if kind.startswith("planar"):
        w0, w1 = w[..., 0::2], w[..., 1::2]
        x[..., 0::2] = _COS * w0 + _SIN * w1
        x[..., 1::2] = -_SIN * w0 + _COS * w1
    else:
        a0, a1, a2, a3 = (_QUAT[:, i] for i in range(4))
        w0, w1, w2, w3 = (w[..., i::4] for i in range(4))
        x[..., 0::4] = a0 * w0 + a1 * w1 + a2 * w2 + a3 * w3
        x[..., 1::4] = -a1 * w0 + a0 * w1 + a3 * w2 - a2 * w3
        x[..., 2::4] = -a2 * w0 - a3 * w1 + a0 * w2 + a1 * w3
        x[..., 3::4] = -a3 * w0 + a2 * w1 - a1 * w2 + a0 * w3
    return x


def _tree_sum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis (64 terms) in the format's order, a halving tree
    (t[l] += t[l + h] for h = 32, 16, ..., 1): the C quantiser's, and a CUDA warp's."""
    while a.shape[-1] > 1:
        h = a.shape[-1] // 2
        a = a[..., :h] + a[..., h:]
    return a[..., 0]


def quantize(x: np.ndarray, kind: str) -> bytes:
    """Encode values (length a multiple of QK) into the type's bytes."""
    if kind not in BLOCK_BYTES:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS + PYTHON_ONLY_KINDS}")
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, QK)
    levels, bounds = _levels(kind)
    x64 = blocks.astype(np.float64)
    n = np.sqrt(_tree_sum(x64 * x64))
    y = rotate(blocks, kind)
    safe = np.where(n > 0, n, 1.0)
    u = np.where(n[:, None] > 0, y / safe[:, None], 0.0)
    idx = (u[..., None] > bounds.astype(np.float64)).sum(-1).astype(np.uint8)
    lv = levels.astype(np.float64)[idx]
    r = np.sqrt(_tree_sum(lv * lv))
    s = np.where(r > 0, n / np.where(r > 0, r, 1.0), n).astype(np.float32)
    s = np.where(s <= 65504.0, s, np.float32(65504.0)).astype(np.float16)
    out = bytearray()
    for b in range(blocks.shape[0]):
        out += s[b].tobytes()
        k = idx[b].astype(np.uint32)
        if kind.endswith("2"):
            fields = k.reshape(4, 16)
            out += (fields << (2 * np.arange(4, dtype=np.uint32))[:, None]).sum(0).astype(np.uint8).tobytes()
        elif kind.endswith("3"):
            fields = k.reshape(4, 16)  # [f, c] = element 16 f + c
            qs = ((fields & 3) << (2 * np.arange(4, dtype=np.uint32))[:, None]).sum(0)
            hi = (fields >> 2).reshape(4, 2, 8)  # [f, c // 8, c % 8]
            shift = 2 * np.arange(4, dtype=np.uint32)[:, None, None] + np.arange(2, dtype=np.uint32)[None, :, None]
            signs = (hi << shift).sum((0, 1))
            out += qs.astype(np.uint8).tobytes() + signs.astype(np.uint8).tobytes()
        else:
            out += (k[:QK // 2] | (k[QK // 2:] << 4)).astype(np.uint8).tobytes()
    return bytes(out)


def indices(data: bytes, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(scales, codebook indices) of every block in ``data``."""
    nb = len(data) // BLOCK_BYTES[kind]
    raw = np.frombuffer(data, np.uint8).reshape(nb, BLOCK_BYTES[kind])
    s = raw[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    if kind.endswith("2"):
        f = np.arange(4, dtype=np.uint8)[:, None]
        idx = ((raw[:, None, 2:] >> (2 * f)) & 3).reshape(nb, QK)
    elif kind.endswith("3"):
        qs, signs = raw[:, 2:2 + QK // 4], raw[:, 2 + QK // 4:]
        f = np.arange(4, dtype=np.uint8)[:, None]
        lo = (qs[:, None, :] >> (2 * f)) & 3                                  # [block, f, c]
        sign_bit = 2 * f + (np.arange(16, dtype=np.uint8) // 8)[None, :]      # [f, c]
        hi = (signs[:, np.arange(16) % 8][:, None, :] >> sign_bit) & 1
        idx = (lo | (hi << 2)).reshape(nb, QK)
    else:
        qs = raw[:, 2:]
        idx = np.concatenate([qs & 15, qs >> 4], axis=1)
    return s, idx


def dequantize(data: bytes, kind: str) -> np.ndarray:
    s, idx = indices(data, kind)
    levels, _ = _levels(kind)
    return (unrotate(levels.astype(np.float64)[idx], kind) * s[:, None]).astype(np.float32).reshape(-1)
