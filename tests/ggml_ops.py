"""Run one ggml op on a named backend device ("CPU", "CUDA0", ...) and read its result back.

The tests compare backends through this: the same graph, the same input bytes, two devices.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from rotorquant._native import ffi, lib


OURS = ("planar3", "iso3", "planar4", "iso4")


def gtype(name: str) -> int:
    return getattr(lib, "GGML_TYPE_" + name.upper())


def encode(x: np.ndarray, name: str) -> bytes:
    """Rows of x (last axis) in ggml type `name`, by the CPU's reference quantisers."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_per_row, nrows = x.shape[-1], x.size // x.shape[-1]
    t = gtype(name)
    size = nrows * n_per_row // lib.ggml_blck_size(t) * lib.ggml_type_size(t)
    out = ffi.new("char[]", size)
    src = ffi.from_buffer("float[]", x)
    if name in OURS:
        assert lib.rq_quantize(t, src, out, nrows, n_per_row) == size
    elif name == "f32":
        return x.tobytes()
    else:
        assert lib.ggml_quantize_chunk(t, src, out, 0, nrows, n_per_row, ffi.NULL) == size
    return ffi.unpack(out, size)


def decode(data: bytes, name: str, shape) -> np.ndarray:
    """The CPU's decoding of `data` (type `name`) as float32 of `shape`."""
    if name == "f32":
        return np.frombuffer(data, np.float32).reshape(shape).copy()
    y = np.empty(shape, dtype=np.float32)
    lib.ggml_get_type_traits(gtype(name)).to_float(data, ffi.from_buffer("float[]", y), y.size)
    return y


def attention(q, k, v, scale, mask=None):
    """float64 softmax(scale q k^T + mask) v; q [head, n_q, d], k/v [kv_head, n_kv, d] -> [n_q, head, d]."""
    n_head, n_kv_heads = q.shape[0], k.shape[0]
    out = np.empty((q.shape[1], n_head, q.shape[2]))
    for h in range(n_head):
        kh, vh = k[h // (n_head // n_kv_heads)].astype(np.float64), v[h // (n_head // n_kv_heads)].astype(np.float64)
        s = scale * q[h].astype(np.float64) @ kh.T
        if mask is not None:
            s = s + mask.astype(np.float64)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, h, :] = (p / p.sum(axis=1, keepdims=True)) @ vh
    return out


def nmse(a, b) -> float:
    return float(np.sum((a - b) ** 2) / np.sum(b ** 2))


def device_names() -> list[str]:
    return [ffi.string(lib.ggml_backend_dev_name(lib.ggml_backend_dev_get(i))).decode()
            for i in range(lib.ggml_backend_dev_count())]


def _device(name: str):
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if ffi.string(lib.ggml_backend_dev_name(dev)).decode() == name:
            return dev
    raise LookupError(f"no ggml device {name!r} (have {device_names()})")


class Builder:
    """Creates the graph's tensors; inputs are uploaded once the backend buffer exists."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.uploads: list[tuple[object, bytes]] = []

    def tensor(self, type_name: str, ne, data: "bytes | np.ndarray | None" = None):
        ne = list(ne) + [1] * (4 - len(ne))
        t = lib.ggml_new_tensor_4d(self.ctx, gtype(type_name), *ne)
        if data is not None:
            raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
            assert len(raw) == lib.ggml_nbytes(t), (len(raw), lib.ggml_nbytes(t))
            self.uploads.append((t, raw))
        return t


def run(device: str, build: Callable[[Builder], object]) -> bytes:
    """Build with ``build(b)`` -> the output tensor (or (node, tensor to read)); compute on `device`."""
    params = ffi.new("struct ggml_init_params *", {
        "mem_size": 64 * lib.ggml_tensor_overhead() + lib.ggml_graph_overhead(),
        "mem_buffer": ffi.NULL, "no_alloc": True})
    ctx = lib.ggml_init(params[0])
    backend = buf = ffi.NULL
    try:
        b = Builder(ctx)
        out = build(b)
        node, read = out if isinstance(out, tuple) else (out, out)
        graph = lib.ggml_new_graph(ctx)
        lib.ggml_build_forward_expand(graph, node)
        backend = lib.ggml_backend_dev_init(_device(device), ffi.NULL)
        assert backend != ffi.NULL, f"could not start {device}"
        assert lib.ggml_backend_supports_op(backend, node), f"{device} does not support this op"
        buf = lib.ggml_backend_alloc_ctx_tensors(ctx, backend)
        assert buf != ffi.NULL
        for t, raw in b.uploads:
            lib.ggml_backend_tensor_set(t, raw, 0, len(raw))
        assert lib.ggml_backend_graph_compute(backend, graph) == lib.GGML_STATUS_SUCCESS
        n = lib.ggml_nbytes(read)
        res = ffi.new("char[]", n)
        lib.ggml_backend_tensor_get(read, res, 0, n)
        return ffi.unpack(res, n)
    finally:
        if buf != ffi.NULL:
            lib.ggml_backend_buffer_free(buf)
        if backend != ffi.NULL:
            lib.ggml_backend_free(backend)
        lib.ggml_free(ctx)
