"""A minimal GGUF v3 writer for KV-policy files (metadata plus a few F32 vectors).

Policy files are ours and tiny; libllama reads them with ggml's own GGUF reader
(csrc/rotorquant/rq-kv-policy.cpp), so only the writing side lives in Python.
The file appears under its final name only when complete.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .._files import write_atomic

_ALIGN = 32
_UINT32, _INT32, _STRING, _ARRAY = 4, 5, 8, 9
_GGML_F32 = 0


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(v) -> tuple[int, bytes]:
    if isinstance(v, bool) or not isinstance(v, (int, str, list, tuple)):
        raise TypeError(f"unsupported GGUF value {v!r}")
    if isinstance(v, str):
        return _STRING, _str(v)
    if isinstance(v, int):
        return _INT32, struct.pack("<i", v)
    if not all(isinstance(x, str) for x in v):
        raise TypeError("only arrays of strings are written")
    return _ARRAY, struct.pack("<IQ", _STRING, len(v)) + b"".join(_str(x) for x in v)


def write_gguf(path: "str | os.PathLike[str]", kv: dict, u32: dict, tensors: "dict[str, np.ndarray]") -> Path:
    """Write ``kv`` (int32 / str / list[str]), ``u32`` (uint32) and 1-D float32 ``tensors``."""
    path = Path(path)
    header = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv) + len(u32)))
    for key, val in u32.items():
        header += _str(key) + struct.pack("<II", _UINT32, val)
    for key, val in kv.items():
        vtype, payload = _value(val)
        header += _str(key) + struct.pack("<I", vtype) + payload
    blobs, offset = [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype="<f4")
        if data.ndim != 1:
            raise ValueError(f"tensor {name} must be 1-D")
        header += _str(name) + struct.pack("<IQIQ", 1, data.shape[0], _GGML_F32, offset)
        blob = data.tobytes()
        blob += b"\0" * (-len(blob) % _ALIGN)
        blobs.append(blob)
        offset += len(blob)
    header += b"\0" * (-len(header) % _ALIGN)
    return write_atomic(path, [header, *blobs])
