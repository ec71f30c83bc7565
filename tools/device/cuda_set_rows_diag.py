"""On a GPU machine: SET_ROWS on CUDA vs the CPU quantiser, byte by byte, and per block the
stored scale against the candidates it could be (n/r is the format's; n = block norm,
r = norm of the chosen codebook levels)."""
import os
import sys

import numpy as np

sys.path.insert(0, "tests")
from ggml_ops import OURS, decode, encode, run  # noqa: E402
from rotorquant._native import lib  # noqa: E402

DEV = os.environ.get("RQ_DIAG_DEVICE", "CUDA0")
x = np.random.default_rng(1).standard_normal((8, 128)).astype(np.float32)
ids = np.arange(8, dtype=np.int64)
for t in sys.argv[1:] or OURS:
    z = bytes(len(encode(x, t)))

    def build(b):
        c = b.tensor(t, (128, 8), z)
        return lib.ggml_set_rows(b.ctx, c, b.tensor("f32", (128, 8), x), b.tensor("i64", (8,), ids))

    g, w = run(DEV, build), encode(x, t)
    diff = [i for i in range(len(w)) if g[i] != w[i]]
    print(f"{t}: bytes equal {g == w}; first differing offsets {diff[:12]}")
    bb = len(w) // 16  # 16 blocks of 64 values
    sg = np.frombuffer(b"".join(g[i * bb:i * bb + 2] for i in range(16)), np.float16).astype(np.float64)
    sw = np.frombuffer(b"".join(w[i * bb:i * bb + 2] for i in range(16)), np.float16).astype(np.float64)
    n = np.linalg.norm(x.reshape(16, 64).astype(np.float64), axis=1)
    r = np.linalg.norm(decode(w, t, x.shape).reshape(16, 64).astype(np.float64), axis=1) / sw
    for i in range(4):
        print(f"  block {i}: gpu {sg[i]:.6g} cpu {sw[i]:.6g} | n {n[i]:.6g} r {r[i]:.6g} "
              f"gpu/(n/r) {sg[i] * r[i] / n[i]:.6f} gpu/n {sg[i] / n[i]:.6f} gpu/(n*r) {sg[i] / (n[i] * r[i]):.6f}")
    dg, dw = decode(g, t, x.shape), decode(w, t, x.shape)
    eg = np.linalg.norm(dg - x, axis=1) / np.linalg.norm(x, axis=1)
    ew = np.linalg.norm(dw - x, axis=1) / np.linalg.norm(x, axis=1)
    print(f"  mean row error gpu {eg.mean():.4f} cpu {ew.mean():.4f}")
