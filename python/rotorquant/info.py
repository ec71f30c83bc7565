"""What this build of rotorquant is: versions, patches, backends, cache types."""
from __future__ import annotations

from . import cache_types
from ._native import build_config, c_str, lib


def devices() -> list[dict]:
    """Compute devices ggml can use in this process (CPU first)."""
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        out.append({
            "name": c_str(lib.ggml_backend_dev_name(dev)),
            "description": c_str(lib.ggml_backend_dev_description(dev)),
            "backend": c_str(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev))),
        })
    return out


def build_info() -> dict:
    """Facts about the installed build, for bug reports and for tests.

    ``backends`` lists the compute backends with at least one device here
    (``["CPU"]``, ``["CUDA", "CPU"]``...); ``backends_built`` what was compiled in.
    """
    backends = list(dict.fromkeys(d["backend"] for d in devices()))
    return {
        "version": build_config.VERSION,
        "upstream_commit": build_config.UPSTREAM_COMMIT,
        "patches": list(build_config.PATCHES),
        "backends": backends,
        "backends_built": list(build_config.BACKENDS_BUILT),
        "devices": devices(),
        "tools": list(build_config.TOOLS),
        "cache_types": cache_types.names(),
        "system_info": c_str(lib.llama_print_system_info()).strip(),
    }


__all__ = ["build_info", "devices"]
