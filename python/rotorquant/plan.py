"""What a model needs per device at a context size and KV cache types, before loading it.

The figures are llama.cpp's own accounting of a load that allocates nothing (its model
parameter ``no_alloc``, the dry run its parameter fitting uses): weights, KV cache (only
the layers that have one: the full-attention layers of hybrid models, window-sized caches
for sliding-window layers), recurrent state (linear-attention layers), and the compute
buffers the scheduler reserves, per device; set against each device's free memory.  So a
plan is what the real load then allocates, not an estimate from a formula that drifts
from llama.cpp's.

    >>> p = plan("qwen3.5.gguf", n_ctx=262144, cache_type_k="iso3", cache_type_v="iso3")
    >>> print(p.table()); p.fits
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import cache_types, rpc
from ._checks import _positive_int
from ._logging import Capture
from ._native import ffi, lib
from .errors import ContextError, ModelLoadError
from .gguf_check import validate_gguf
from .kvpolicy import locate as _kv_locate
from .llama import _FLASH_ATTN, _flash_attn_mode, memory_by_device
from .placement import Placement

_MIB = 2**20


@dataclass(frozen=True)
class DevicePlan:
    """Bytes a load needs on one device, and what the device has free."""

    name: str
    model: int
    kv: int
    recurrent: int
    compute: int
    free: int
    total: int

    @property
    def needed(self) -> int:
        return self.model + self.kv + self.recurrent + self.compute

    @property
    def fits(self) -> bool:
        return self.needed <= self.free


@dataclass(frozen=True)
class Plan:
    model_path: str
    n_ctx: int
    n_parallel: int
    cache_type_k: str
    cache_type_v: str
    devices: tuple[DevicePlan, ...]

    @property
    def fits(self) -> bool:
        return all(d.fits for d in self.devices)

    def table(self) -> str:
        """The plan as a Markdown table, MiB."""
        rows = [f"{os.path.basename(self.model_path)}: n_ctx {self.n_ctx}, {self.n_parallel} sequence(s), "
                f"K {self.cache_type_k}, V {self.cache_type_v}", "",
                "| device | weights | KV cache | recurrent state | compute | needed | free | fits |",
                "|---|---:|---:|---:|---:|---:|---:|---|"]
        for d in self.devices:
            rows.append(f"| {d.name} | {d.model / _MIB:.1f} | {d.kv / _MIB:.1f} | {d.recurrent / _MIB:.1f} | "
                        f"{d.compute / _MIB:.1f} | {d.needed / _MIB:.1f} | {d.free / _MIB:.1f} | "
                        f"{'yes' if d.fits else '**no**'} |")
        return "\n".join(rows)


def device_memory(name: str) -> tuple[int, int]:
    """(free, total) bytes of a device by name; the CPU's is the system's memory."""
    dev = (lib.ggml_backend_dev_by_type(lib.GGML_BACKEND_DEVICE_TYPE_CPU) if name == "CPU"
           else lib.ggml_backend_dev_by_name(name.encode()))
    free, total = ffi.new("size_t *"), ffi.new("size_t *")
    if dev != ffi.NULL:
        lib.ggml_backend_dev_memory(dev, free, total)
    return int(free[0]), int(total[0])


def plan(model_path: str | os.PathLike[str], *, n_ctx: int, cache_type_k: str = "f16", cache_type_v: str = "f16",
         n_parallel: int = 1, n_gpu_layers: int = -1, n_batch: int = 2048, n_ubatch: int = 512,
         flash_attn: str | bool = "auto", kv_policy: str | os.PathLike[str] | None = "auto",
         split_mode: str = "layer", main_gpu: int = 0, tensor_split: Sequence[float] | None = None,
         override_tensor: Mapping[str, str] | None = None, n_cpu_moe: int = 0,
         rpc_servers: Sequence[str] | None = None) -> Plan:
    """The memory a load with these settings needs, per device (defaults as llama-server's:
    every layer offloaded, batch 2048, micro-batch 512).  ``n_ctx`` is the whole context,
    shared by ``n_parallel`` sequences as in ``llama-server -np``."""
    path = validate_gguf(model_path).path
    k, v = cache_types.get(cache_type_k), cache_types.get(cache_type_v)
    fa = _flash_attn_mode(flash_attn)
    _positive_int("n_ctx", n_ctx)
    _positive_int("n_parallel", n_parallel)
    _positive_int("n_batch", n_batch)
    _positive_int("n_ubatch", n_ubatch)
    if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int):
        raise ValueError(f"n_gpu_layers must be an integer, not {n_gpu_layers!r}")
    placement = Placement(split_mode=split_mode, main_gpu=main_gpu, tensor_split=tensor_split,
                          override_tensor=override_tensor, n_cpu_moe=n_cpu_moe, rpc_servers=rpc_servers)
    policy = _kv_locate.resolve(kv_policy, path) if (k.quantized or v.quantized or
                                                     kv_policy not in (None, "auto", "none")) else None

    mparams = lib.llama_model_default_params()
    mparams.n_gpu_layers = n_gpu_layers
    mparams.no_alloc = True
    placement.apply(mparams)
    mparams.load_mode = lib.LLAMA_LOAD_MODE_NONE  # no file mapping either: only the header is read
    cparams = lib.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, n_batch, min(n_batch, n_ubatch)
    cparams.n_seq_max = n_parallel
    cparams.flash_attn_type = _FLASH_ATTN[fa]
    cparams.type_k, cparams.type_v = k.ggml_type, v.ggml_type
    c_policy = ffi.new("char[]", os.fsencode(policy)) if policy else ffi.NULL
    cparams.kv_policy = c_policy

    try:
        with Capture() as cap:
            model = lib.llama_model_load_from_file(os.fsencode(path), mparams)
        if model == ffi.NULL:
            raise ModelLoadError(f"could not read model {path}", cap.reason())
        try:
            with Capture() as cap:
                ctx = lib.llama_init_from_model(model, cparams)
            if ctx == ffi.NULL:
                raise ContextError(f"could not plan a context (n_ctx={n_ctx}, K {k}, V {v})", cap.reason())
            try:
                used = memory_by_device(ctx)
                n_ctx_real = int(lib.llama_n_ctx(ctx))
            finally:
                lib.llama_free(ctx)
        finally:
            lib.llama_model_free(model)
    finally:
        rpc.release(placement.rpc_servers)
    used.setdefault("CPU", {"model": 0, "kv": 0, "recurrent": 0, "compute": 0})
    devices = tuple(DevicePlan(name, m["model"], m["kv"], m["recurrent"], m["compute"], *device_memory(name))
                    for name, m in sorted(used.items(), key=lambda kv: (kv[0] == "CPU", kv[0])))
    return Plan(str(path), n_ctx_real, n_parallel, k.name, v.name, devices)
