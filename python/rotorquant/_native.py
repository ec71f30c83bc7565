"""The compiled core: the cffi module over libllama, and where the build put things.

Importing this initialises the llama.cpp backends once per process and routes
C logs to Python.  Nothing else in the package touches ``_ffi`` directly
except through the names re-exported here.
"""
from __future__ import annotations

from pathlib import Path

try:
    from ._ffi import ffi, lib
except ImportError as exc:  # pragma: no cover - only on broken installs
    raise ImportError(
        "rotorquant's compiled extension is missing or cannot load its libraries "
        f"({exc}). Reinstall with `pip install --force-reinstall rotorquant` "
        "(or `pip install .` from a checkout)."
    ) from exc

from . import _build_config as build_config
from . import _logging

# The extension sits next to lib/ and bin/ in the installed package; for an
# editable install this is site-packages, not the source tree.
PACKAGE_DIR = Path(__import__(__package__ + "._ffi", fromlist=["_ffi"]).__file__).resolve().parent
BIN_DIR = PACKAGE_DIR / "bin"
LIB_DIR = PACKAGE_DIR / "lib"

_logging.install()
lib.llama_backend_init()


def c_str(ptr) -> str:
    """A C string from llama.cpp as Python text (NULL -> "")."""
    return "" if ptr == ffi.NULL else ffi.string(ptr).decode("utf-8", "replace")


__all__ = ["ffi", "lib", "build_config", "PACKAGE_DIR", "BIN_DIR", "LIB_DIR", "c_str"]
