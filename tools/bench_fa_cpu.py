#!/usr/bin/env python3
"""CPU flash-attention decode time per cache type: one query over a long context.

Isolates the attention op (no weights) with the shapes of a real model, through ggml's
CPU backend, so kernel changes can be measured in seconds.

    python tools/bench_fa_cpu.py [--n-kv 4096] [--heads 14 --kv-heads 2 --head-dim 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ggml_ops import encode, gtype  # noqa: E402
from rotorquant._native import ffi, lib  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_doc import write_section  # noqa: E402


def time_fa(k_type: str, v_type: str, n_kv: int, heads: int, kv_heads: int, d: int, threads: int, reps: int) -> float:
    rng = np.random.default_rng(0)
    k = rng.standard_normal((kv_heads, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((kv_heads, n_kv, d)).astype(np.float32)
    q = rng.standard_normal((heads, 1, d)).astype(np.float32)
    params = ffi.new("struct ggml_init_params *", {"mem_size": 512 << 20, "mem_buffer": ffi.NULL, "no_alloc": False})
    ctx = lib.ggml_init(params[0])
    try:
        Q = lib.ggml_new_tensor_4d(ctx, lib.GGML_TYPE_F32, d, 1, heads, 1)
        K = lib.ggml_new_tensor_4d(ctx, gtype(k_type), d, n_kv, kv_heads, 1)
        V = lib.ggml_new_tensor_4d(ctx, gtype(v_type), d, n_kv, kv_heads, 1)
        ffi.memmove(Q.data, q.tobytes(), lib.ggml_nbytes(Q))
        ffi.memmove(K.data, encode(k, k_type), lib.ggml_nbytes(K))
        ffi.memmove(V.data, encode(v, v_type), lib.ggml_nbytes(V))
        out = lib.ggml_flash_attn_ext(ctx, Q, K, V, ffi.NULL, 1.0 / np.sqrt(d), 0.0, 0.0)
        graph = lib.ggml_new_graph(ctx)
        lib.ggml_build_forward_expand(graph, out)
        times = []
        for _ in range(reps + 2):
            t0 = time.perf_counter()
            lib.ggml_graph_compute_with_ctx(ctx, graph, threads)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[2:])
    finally:
        lib.ggml_free(ctx)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-kv", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_0", "planar3", "iso3", "planar4", "iso4"])
    a = ap.parse_args()
    base = None
    rows = [f"| K/V | µs per decode step | vs f16 |", "|---|---:|---:|"]
    for t in a.types:
        s = time_fa(t, t, a.n_kv, a.heads, a.kv_heads, a.head_dim, a.threads, a.reps)
        base = base or s
        rows.append(f"| {t} | {s * 1e6:.0f} | {base / s:.2f}x |")
        print(rows[-1], flush=True)
    cmd = "python tools/bench_fa_cpu.py " + " ".join(sys.argv[1:])
    write_section("bench_fa_cpu", [
        "## CPU flash-attention op, decode step", "",
        f"One query per head over {a.n_kv} cached tokens, {a.heads} query / {a.kv_heads} KV heads, "
        f"head_dim {a.head_dim} (Qwen2.5-0.5B's shape), {a.threads} threads, median of {a.reps}; "
        f"`{cmd.strip()}`, {time.strftime('%Y-%m-%d')}.", ""] + rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
