"""The RotorQuant block formats in torch, on any device.

``encode`` writes the very bytes of the C quantiser (and of ``rotor.reference``, which
mirrors it operation for operation): the block statistics and the rotation run in float64
in the same order, so a cache filled in torch can be compared byte for byte with one
filled by ggml.  ``decode`` runs in float32 -- it runs over the whole cache at every step,
and float32 agrees with ggml's decoder to a few ulps.

A format is named as the C cache types: ``planar3``, ``iso3``, ``planar4``, ``iso4``, plus
the Python-only ``planar2``/``iso2`` (``rotor.reference`` documents every layout).
"""
from __future__ import annotations

import torch

from ..rotor import _tables as T
from ..rotor.reference import BLOCK_BYTES, QK

FORMATS = tuple(BLOCK_BYTES)


class BlockCodec:
    """One format's tables on one device, and the two directions of its code.

    Values are packed along the last axis: ``(..., D)`` with ``D`` a multiple of 64 becomes
    ``(..., D // 64 * block_bytes)`` uint8, each 64 values one C block (fp16 scale first).
    """

    def __init__(self, kind: str, device: torch.device | str = "cpu"):
        if kind not in BLOCK_BYTES:
            raise ValueError(f"unknown RotorQuant format {kind!r}; choose from {', '.join(FORMATS)}")
        self.kind, self.bits, self.device = kind, int(kind[-1]), torch.device(device)
        self.block_bytes = BLOCK_BYTES[kind]
        self.planar = kind.startswith("planar")
        f64 = dict(dtype=torch.float64, device=self.device)
        # the tables are float32 numbers; float64 copies of them are exact
        as32 = lambda xs: torch.tensor(xs, dtype=torch.float32, device=self.device)
        self._levels32 = as32(getattr(T, f"LEVELS{self.bits}"))
        self._levels64 = self._levels32.to(**f64)
        self._bounds64 = as32(getattr(T, f"BOUNDS{self.bits}")).to(**f64)
        if self.planar:
            self._rot32 = (as32(T.PLANAR_COS), as32(T.PLANAR_SIN))
        else:
            q = as32(T.ISO_QUAT)
            self._rot32 = tuple(q[:, i].contiguous() for i in range(4))
        self._rot64 = tuple(t.to(**f64) for t in self._rot32)
        self._shift = (2 * torch.arange(4, device=self.device, dtype=torch.int32)).view(4, 1)

    def packed_width(self, head_dim: int) -> int:
        """Bytes per row of ``head_dim`` values."""
        return head_dim // QK * self.block_bytes

    # -- rotation --------------------------------------------------------------------

    def _rotate(self, x: torch.Tensor, rot) -> torch.Tensor:
        """y = R x over blocks (..., QK)."""
        if self.planar:
            c, s = rot
            u0, u1 = x[..., 0::2], x[..., 1::2]
            return torch.stack((c * u0 - s * u1, s * u0 + c * u1), dim=-1).flatten(-2)
        a0, a1, a2, a3 = rot
        v0, v1, v2, v3 = (x[..., i::4] for i in range(4))
        return torch.stack((a0 * v0 - a1 * v1 - a2 * v2 - a3 * v3,
                            a1 * v0 + a0 * v1 - a3 * v2 + a2 * v3,
                            a2 * v0 + a3 * v1 + a0 * v2 - a1 * v3,
                            a3 * v0 - a2 * v1 + a1 * v2 + a0 * v3), dim=-1).flatten(-2)

    def _unrotate(self, w: torch.Tensor, rot) -> torch.Tensor:
        """x = R^T w over blocks (..., QK)."""
        if self.planar:
            c, s = rot
            w0, w1 = w[..., 0::2], w[..., 1::2]
            return torch.stack((c * w0 + s * w1, c * w1 - s * w0), dim=-1).flatten(-2)
        a0, a1, a2, a3 = rot
        w0, w1, w2, w3 = (w[..., i::4] for i in range(4))
        return torch.stack((a0 * w0 + a1 * w1 + a2 * w2 + a3 * w3,
                            a0 * w1 - a1 * w0 + a3 * w2 - a2 * w3,
                            a0 * w2 - a2 * w0 - a3 * w1 + a1 * w3,
                            a0 * w3 - a3 * w0 + a2 * w1 - a1 * w2), dim=-1).flatten(-2)

    @staticmethod
    def _tree_sum(a: torch.Tensor) -> torch.Tensor:
        """The format's summation order over a block: t[l] += t[l + h], h = 32, ..., 1."""
        while a.shape[-1] > 1:
            h = a.shape[-1] // 2
            a = a[..., :h] + a[..., h:]
        return a[..., 0]

    # -- the two directions ---------------------------------------------------------

    def _chunk_rows(self, width: int) -> int:
        """Rows per pass: bounds the temporaries (float64 blocks, indices) to tens of MB on
        the CPU; a GPU takes larger passes (fewer kernel launches)."""
        values = (1 << 25) if self.device.type == "cuda" else (1 << 21)
        return max(1, values // width)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` floats -> ``(..., D // 64 * block_bytes)`` uint8 blocks.

        A block holding NaN or inf is written as the C quantiser writes it: the scale clamps
        to 65504 (fp16's largest), so the row decodes to large finite values, never NaN."""
        d = x.shape[-1]
        if d % QK:
            raise ValueError(f"the last dimension ({d}) is not a multiple of the block of {QK} values")
        rows = x.reshape(-1, d)
        out = torch.empty((rows.shape[0], self.packed_width(d)), dtype=torch.uint8, device=self.device)
        step = self._chunk_rows(d)
        for r0 in range(0, rows.shape[0], step):
            out[r0:r0 + step] = self._encode_rows(rows[r0:r0 + step])
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def _encode_rows(self, rows: torch.Tensor) -> torch.Tensor:
        blocks = rows.to(self.device, torch.float32).reshape(rows.shape[0], -1, QK).to(torch.float64)
        n = torch.sqrt(self._tree_sum(blocks * blocks))
        y = self._rotate(blocks, self._rot64)
        u = torch.where(n[..., None] > 0, y / torch.where(n > 0, n, 1.0)[..., None], 0.0)
        u = torch.where(torch.isnan(u), -torch.inf, u)  # NaN exceeds no bound (as the C comparisons)
        idx = torch.searchsorted(self._bounds64, u, out_int32=True)  # = number of bounds below u
        lv = self._levels64[idx]
        r = torch.sqrt(self._tree_sum(lv * lv))
        s = torch.where(r > 0, n / torch.where(r > 0, r, 1.0), n).to(torch.float32)
        s = torch.where(s <= 65504.0, s, 65504.0).to(torch.float16)
        scale_bytes = s.unsqueeze(-1).view(torch.uint8)                       # (rows, nb, 2)
        return torch.cat((scale_bytes, self._pack(idx)), dim=-1).flatten(-2)

    def _pack(self, idx: torch.Tensor) -> torch.Tensor:
        fields = idx.unflatten(-1, (4, 16))                                   # [f, c] = element 16 f + c
        if self.bits == 4:
            return (idx[..., :QK // 2] | (idx[..., QK // 2:] << 4)).to(torch.uint8)
        qs = ((fields & 3) << self._shift).sum(-2, dtype=torch.int32)         # bits 2f of qs[c]
        if self.bits == 2:
            return qs.to(torch.uint8)
        hi = (fields >> 2).unflatten(-1, (2, 8))                              # [f, c // 8, c % 8]
        shift = self._shift.view(4, 1, 1) + torch.arange(2, device=self.device, dtype=torch.int32).view(1, 2, 1)
        signs = (hi << shift).sum((-3, -2), dtype=torch.int32)
        return torch.cat((qs, signs), dim=-1).to(torch.uint8)

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, heads, tokens, packed)`` uint8 blocks -> ``(..., D)`` of ``dtype``, written
        into ``out`` (e.g. the head of a larger tensor) when given, a pass of tokens at a time."""
        if codes.dtype != torch.uint8 or codes.shape[-1] % self.block_bytes:
            raise ValueError(f"{self.kind} codes must be uint8 rows of whole {self.block_bytes}-byte blocks, not "
                             f"{codes.dtype} rows of {codes.shape[-1]} bytes")
        d = codes.shape[-1] // self.block_bytes * QK
        if out is None:
            out = torch.empty((*codes.shape[:-1], d), dtype=dtype, device=codes.device)
        if codes.dim() < 2 or codes.shape[-2] == 0:
            return out
        per_token = max(1, codes[..., 0, 0].numel()) * d
        step = max(1, self._chunk_rows(1) // per_token)
        for t0 in range(0, codes.shape[-2], step):
            out[..., t0:t0 + step, :] = self._decode_rows(codes[..., t0:t0 + step, :])
        return out

    def _decode_rows(self, codes: torch.Tensor) -> torch.Tensor:
        raw = codes.unflatten(-1, (-1, self.block_bytes))
        s = raw[..., :2].contiguous().view(torch.float16).to(torch.float32)  # (..., nb, 1)
        idx = self._unpack(raw[..., 2:])
        return (self._unrotate(self._levels32[idx], self._rot32) * s).flatten(-2)

    def _unpack(self, payload: torch.Tensor) -> torch.Tensor:
        p = payload.to(torch.int32)
        if self.bits == 4:
            return torch.cat((p & 15, p >> 4), dim=-1)
        lo = (p[..., :QK // 4].unsqueeze(-2) >> self._shift) & 3               # [f, c]
        if self.bits == 2:
            return lo.flatten(-2)
        signs = p[..., QK // 4:]                                              # signs[c % 8]
        c = torch.arange(16, device=self.device)
        hi = (signs[..., c % 8].unsqueeze(-2) >> (self._shift + (c // 8).to(torch.int32))) & 1
        return (lo | (hi << 2)).flatten(-2)


_CODECS: dict[tuple[str, torch.device], BlockCodec] = {}


def codec(kind: str, device: torch.device | str = "cpu") -> BlockCodec:
    """The shared codec of ``kind`` on ``device`` (tables are made once per device)."""
    key = (kind, torch.device(device))
    if key not in _CODECS:
        _CODECS[key] = BlockCodec(kind, key[1])
    return _CODECS[key]
