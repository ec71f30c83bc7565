"""Where a model's weights go: llama_model_params fields for devices, splitting, tensor
overrides and loading, checked before any C call.

``override_tensor`` maps regular expressions over tensor names (as llama.cpp's
``--override-tensor``, matched with ``std::regex_search``) to a device name ("CPU",
"CUDA0", "RPC0", ...).  ``rpc_servers`` adds the devices of ``ggml-rpc-server`` processes
(:mod:`rotorquant.rpc`) in front of this machine's GPUs.  ``n_cpu_moe=N`` keeps the expert tensors of the first N layers in system
memory, the usual way to run a large MoE (Qwen3.5-397B) with the rest on the GPU.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from . import rpc
from ._native import ffi, lib

SPLIT_MODES = {"none": "LLAMA_SPLIT_MODE_NONE", "layer": "LLAMA_SPLIT_MODE_LAYER",
               "row": "LLAMA_SPLIT_MODE_ROW", "tensor": "LLAMA_SPLIT_MODE_TENSOR"}


def device_names() -> list[str]:
    return [ffi.string(lib.ggml_backend_dev_name(lib.ggml_backend_dev_get(i))).decode()
            for i in range(lib.ggml_backend_dev_count())]


def moe_patterns(n_cpu_moe: int) -> dict[str, str]:
    """Expert tensors (gate/up/down, fused gate_up, chunked) of layers 0..n-1 -> CPU."""
    return {rf"blk\.{i}\.ffn_(up|down|gate|gate_up)_(ch|)exps": "CPU" for i in range(n_cpu_moe)}


class Placement:
    """Validated placement settings; ``apply(mparams)`` fills the C struct.  The object
    keeps the C arrays alive, so it must outlive the model load."""

    def __init__(self, *, split_mode: str = "layer", main_gpu: int = 0,
                 tensor_split: Sequence[float] | None = None,
                 override_tensor: Mapping[str, str] | None = None, n_cpu_moe: int = 0,
                 use_mmap: bool | None = None, use_mlock: bool = False,
                 rpc_servers: Sequence[str] | None = None):
        if split_mode not in SPLIT_MODES:
            raise ValueError(f"split_mode must be one of {sorted(SPLIT_MODES)}, not {split_mode!r}")
        for name, value in (("main_gpu", main_gpu), ("n_cpu_moe", n_cpu_moe)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
        if use_mmap is not None and not isinstance(use_mmap, bool):
            raise ValueError(f"use_mmap must be True, False or None (llama.cpp decides), not {use_mmap!r}")
        if not isinstance(use_mlock, bool):
            raise ValueError(f"use_mlock must be a bool, not {use_mlock!r}")
        self.split_mode, self.main_gpu, self.use_mmap, self.use_mlock = split_mode, main_gpu, use_mmap, use_mlock
        # first: the servers' devices are names override_tensor may use.  They count as in
        # use (rpc.release) from here until whoever loads with this placement is done.
        self._devices = rpc.model_devices(rpc.add_servers(rpc_servers) if rpc_servers is not None else [])
        self.rpc_servers = list(rpc_servers) if rpc_servers is not None else []
        try:
            self._check_rest(tensor_split, override_tensor, n_cpu_moe)
        except BaseException:
            rpc.release(self.rpc_servers)
            raise

    def _check_rest(self, tensor_split, override_tensor, n_cpu_moe) -> None:
        self._split = ffi.NULL
        if tensor_split is not None:
            shares = list(tensor_split)
            if (not shares or len(shares) > lib.llama_max_devices()
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in shares)
                    or not any(shares)):
                raise ValueError(f"tensor_split must be 1..{lib.llama_max_devices()} non-negative shares, "
                                 f"not all zero; got {tensor_split!r}")
            self._split = ffi.new("float[]", lib.llama_max_devices())
            for i, x in enumerate(shares):
                self._split[i] = x
        overrides = dict(moe_patterns(n_cpu_moe))
        if override_tensor is not None:
            if not isinstance(override_tensor, Mapping):
                raise ValueError("override_tensor must map tensor-name patterns to device names")
            overrides.update(override_tensor)
        self._overrides = ffi.NULL
        self._keep = []
        if overrides:
            names = device_names()
            arr = ffi.new("struct llama_model_tensor_buft_override[]", len(overrides) + 1)  # NULL-terminated
            for i, (pattern, device) in enumerate(overrides.items()):
                try:
                    re.compile(pattern)
                except (re.error, TypeError) as exc:
                    raise ValueError(f"override_tensor pattern {pattern!r} is not a regular expression: {exc}") from None
                if device not in names:
                    raise ValueError(f"override_tensor: no device {device!r} (devices here: {', '.join(names)})")
                c_pattern = ffi.new("char[]", pattern.encode())
                self._keep.append(c_pattern)
                arr[i].pattern = c_pattern
                arr[i].buft = lib.ggml_backend_dev_buffer_type(lib.ggml_backend_dev_by_name(device.encode()))
            self._overrides = arr

    def fit(self, path: bytes, mparams, cparams, margin_mib: int, n_ctx_min: int) -> int:
        """Run upstream's fitting over ``mparams``/``cparams`` (after :meth:`apply`):
        the fields still at llama.cpp's defaults are set to what fits the devices' free
        memory.  The arrays it writes are kept here, for the load.  Returns its status
        (0 fits, 1 nothing found fits, 2 error)."""
        n_dev, n_tbo = lib.llama_max_devices(), lib.llama_max_tensor_buft_overrides()
        split = ffi.new("float[]", n_dev)
        if self._split != ffi.NULL:
            ffi.memmove(split, self._split, n_dev * ffi.sizeof("float"))
        overrides = ffi.new("struct llama_model_tensor_buft_override[]", n_tbo)
        if self._overrides != ffi.NULL:
            n = 0
            while self._overrides[n].pattern != ffi.NULL:
                overrides[n] = self._overrides[n]
                n += 1
        self._keep += [split, overrides]
        return lib.rq_fit_params(path, ffi.addressof(mparams), ffi.addressof(cparams), split, overrides,
                                 margin_mib << 20, n_ctx_min)

    def apply(self, mparams) -> None:
        mparams.devices = self._devices
        mparams.split_mode = getattr(lib, SPLIT_MODES[self.split_mode])
        mparams.main_gpu = self.main_gpu
        mparams.tensor_split = self._split
        mparams.tensor_buft_overrides = self._overrides
        if self.use_mmap is not None or self.use_mlock:
            mmap = True if self.use_mmap is None else self.use_mmap
            mparams.load_mode = {(True, True): lib.LLAMA_LOAD_MODE_MMAP_MLOCK, (True, False): lib.LLAMA_LOAD_MODE_MMAP,
                                 (False, True): lib.LLAMA_LOAD_MODE_MLOCK,
                                 (False, False): lib.LLAMA_LOAD_MODE_NONE}[(mmap, self.use_mlock)]
