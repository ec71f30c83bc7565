"""End-to-end quality of a KV configuration on a token sample: KL divergence of the
next-token distributions against an f16 cache, and the perplexity ratio.

Calibration uses it to choose between candidate policies by what the model actually
does, not only by the per-layer error model.  As with llama-perplexity, only the second
half of the window is scored (every scored token sees at least half a window of context).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._native import ffi, lib
from ..errors import DecodeError
from ..llama import Llama


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def scored_logprobs(model_path, tokens: "list[int]", *, n_threads: "int | None" = None, **llama_kw) -> np.ndarray:
    """log-softmax of the logits at the second half of ``tokens`` (one decode call)."""
    n = len(tokens)
    with Llama(model_path, n_ctx=n + 16, n_batch=n, n_threads=n_threads, **llama_kw) as llm:
        ids = ffi.new("llama_token[]", tokens)
        want = ffi.new("int8_t[]", [1 if i >= n // 2 else 0 for i in range(n)])
        batch = lib.llama_batch_get_one(ids, n)
        batch.logits = want
        if lib.llama_decode(llm._ctx, batch) != 0:
            raise DecodeError("llama_decode failed while measuring a KV configuration")
        n_vocab = llm.n_vocab
        rows = n - n // 2
        logits = np.frombuffer(ffi.buffer(lib.llama_get_logits(llm._ctx), 4 * rows * n_vocab),
                               dtype=np.float32).reshape(rows, n_vocab)
        return _log_softmax(logits.astype(np.float64))


@dataclass
class SampleQuality:
    kl: float          # mean KL(f16 || candidate) per scored token, nats
    ppl_ratio: float   # perplexity of the candidate / perplexity with an f16 cache


def compare(reference: np.ndarray, candidate: np.ndarray, tokens: "list[int]") -> SampleQuality:
    n = len(tokens)
    target = np.asarray(tokens[n // 2 + 1:])
    ref, cand = reference[:-1], candidate[:-1]  # the last position has no next token
    kl = float(np.mean(np.sum(np.exp(ref) * (ref - cand), axis=-1)))
    rows = np.arange(len(target))
    nll_ref, nll_cand = -ref[rows, target].mean(), -cand[rows, target].mean()
    return SampleQuality(kl=kl, ppl_ratio=float(np.exp(nll_cand - nll_ref)))
