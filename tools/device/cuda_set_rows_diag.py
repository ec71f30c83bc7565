"""On a GPU machine: SET_ROWS on CUDA vs the CPU quantiser, byte by byte and as reconstruction error per row."""
import sys; sys.path.insert(0, "tests")
import numpy as np
from ggml_ops import encode, decode, run, gtype
from rotorquant._native import lib
t = "iso3"
x = np.random.default_rng(1).standard_normal((8, 128)).astype(np.float32)
ids = np.arange(8, dtype=np.int64)
z = bytes(len(encode(x, t)))
def build(b):
    c = b.tensor(t, (128, 8), z)
    return lib.ggml_set_rows(b.ctx, c, b.tensor("f32", (128, 8), x), b.tensor("i64", (8,), ids))
g = run("CUDA0", build); w = encode(x, t)
print("bytes equal", g == w, [i for i in range(len(w)) if g[i] != w[i]][:20])
dg, dw = decode(g, t, x.shape), decode(w, t, x.shape)
print("row errs gpu", [round(float(np.linalg.norm(dg[r]-x[r])/np.linalg.norm(x[r])),4) for r in range(8)])
print("row errs cpu", [round(float(np.linalg.norm(dw[r]-x[r])/np.linalg.norm(x[r])),4) for r in range(8)])
