"""Run a model over a sample and keep each attention layer's post-RoPE Q, K and V.

The tensors come from llama.cpp's own graph (the nodes upstream names ``Qcur-N``,
``Kcur-N``, ``Vcur-N``), captured by a C eval callback in the shim, so the keys are
exactly those the KV cache would store, for any architecture llama.cpp runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._native import ffi, lib
from ..llama import Llama


@dataclass
class LayerActivations:
    """One attention layer over T tokens: q [T, n_head, d], k [T, n_head_kv, d], v (or None)."""

    layer: int
    q: np.ndarray
    k: np.ndarray
    v: "np.ndarray | None"


class _CapturingLlama(Llama):
    def __init__(self, model_path, capture, **kwargs):
        self._capture = capture
        super().__init__(model_path, **kwargs)

    def _context_params(self, cparams) -> None:
        cparams.n_ubatch = cparams.n_batch  # one graph per decode: the capture appends per graph
        cparams.cb_eval = ffi.addressof(lib, "rq_capture_eval")
        cparams.cb_eval_user_data = self._capture


def _get(cap, name: str) -> "np.ndarray | None":
    data = ffi.new("float **")
    ne = ffi.new("int64_t[4]")
    n = lib.rq_capture_get(cap, name.encode(), data, ne)
    if n == 0:
        return None
    arr = np.frombuffer(ffi.buffer(data[0], 4 * n), dtype=np.float32).copy()
    return arr.reshape(int(ne[2]), int(ne[1]), int(ne[0]))  # [tokens, heads, head_dim]


def capture(model_path, tokens: "list[int]", *, n_threads: "int | None" = None,
            n_gpu_layers: int = 0) -> "tuple[list[LayerActivations], int]":
    """Evaluate ``tokens`` (one ubatch) with an f16 cache; return the attention layers'
    activations (layers without a KV cache are absent) and the model's layer count."""
    cap = ffi.gc(lib.rq_capture_new(b"Qcur,Kcur,Vcur"), lib.rq_capture_free)
    n = len(tokens)
    with _CapturingLlama(model_path, cap, n_ctx=n + 16, n_batch=n, n_threads=n_threads,
                         n_gpu_layers=n_gpu_layers, kv_policy=None) as llm:
        n_layer = int(lib.llama_model_n_layer(llm._model))
        lib.rq_capture_next_graph(cap)
        llm.eval(tokens)
    layers = []
    for il in range(n_layer):
        q, k, v = (_get(cap, f"{p}-{il}") for p in ("Qcur", "Kcur", "Vcur"))
        if q is None or k is None or k.shape[0] != n or q.shape[0] != n:
            continue
        if v is not None and v.shape[0] != n:
            v = None
        layers.append(LayerActivations(il, q, k, v))
    return layers, n_layer
