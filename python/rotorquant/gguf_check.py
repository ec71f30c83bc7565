"""Cheap checks on a model path before it reaches C.

llama.cpp reports a missing or foreign file only through its log; checking the
path and the 4-byte magic first gives the usual Python exceptions instead.
"""
from __future__ import annotations

import os
from pathlib import Path

GGUF_MAGIC = b"GGUF"


def check_gguf_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path if it names a readable GGUF file.

    Raises ``FileNotFoundError`` (missing), ``IsADirectoryError`` (a folder),
    ``PermissionError`` (unreadable) or ``ValueError`` (not GGUF), each naming
    the file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"model_path must be a str or os.PathLike, not {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(2, "model file not found", str(p))
    if p.is_dir():
        raise IsADirectoryError(21, "model_path is a directory, not a GGUF file", str(p))
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{p} is not a GGUF file (first bytes {magic!r}, expected {GGUF_MAGIC!r})")
    return p
