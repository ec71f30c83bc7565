"""Flash attention on the CPU backend with RotorQuant K/V, against numpy references.

Two references per case: attention over the *decoded* K/V (the kernel must match it to
float rounding: this checks the rotated-domain scoring and the single inverse rotation
of V) and attention over the original f32 K/V (this bounds the quantisation error).
"""
import numpy as np
import pytest

from rotorquant._native import ffi, lib

from ggml_ops import OURS, attention, decode, encode, gtype, nmse


def ggml_flash_attn(q, k_bytes, v_bytes, k_type, v_type, n_kv, n_head_kv, scale, n_threads=2):
    n_head, n_q, d = q.shape
    params = ffi.new("struct ggml_init_params *", {"mem_size": 256 << 20, "mem_buffer": ffi.NULL, "no_alloc": False})
    ctx = lib.ggml_init(params[0])
    try:
        Q = lib.ggml_new_tensor_4d(ctx, lib.GGML_TYPE_F32, d, n_q, n_head, 1)
        K = lib.ggml_new_tensor_4d(ctx, gtype(k_type), d, n_kv, n_head_kv, 1)
        V = lib.ggml_new_tensor_4d(ctx, gtype(v_type), d, n_kv, n_head_kv, 1)
        ffi.memmove(Q.data, np.ascontiguousarray(q, np.float32).tobytes(), lib.ggml_nbytes(Q))
        ffi.memmove(K.data, k_bytes, lib.ggml_nbytes(K))
        ffi.memmove(V.data, v_bytes, lib.ggml_nbytes(V))
        out = lib.ggml_flash_attn_ext(ctx, Q, K, V, ffi.NULL, scale, 0.0, 0.0)
        graph = lib.ggml_new_graph(ctx)
        lib.ggml_build_forward_expand(graph, out)
        assert lib.ggml_graph_compute_with_ctx(ctx, graph, n_threads) == lib.GGML_STATUS_SUCCESS
        res = np.frombuffer(ffi.buffer(out.data, lib.ggml_nbytes(out)), dtype=np.float32).copy()
        return res.reshape(n_q, n_head, d)
    finally:
        lib.ggml_free(ctx)


# Quantisation error of the attention output vs f32 K/V (random data, measured ~0.5x these).
QUALITY_BOUND = {"planar3": 0.08, "iso3": 0.08, "planar4": 0.025, "iso4": 0.025, "q8_0": 1e-3, "f16": 1e-5}

CASES = [  # (n_q, n_kv, head_dim): 1 query over >= 512 keys takes the split-KV decode path
    (1, 600, 128), (1, 700, 64), (6, 96, 256), (3, 40, 64),
]


@pytest.mark.parametrize("k_type, v_type", [(t, t) for t in OURS] + [("iso3", "q8_0"), ("planar3", "f16"), ("q8_0", "iso4")])
@pytest.mark.parametrize("n_q, n_kv, d", CASES)
def test_flash_attention_matches_references(k_type, v_type, n_q, n_kv, d):
    rng = np.random.default_rng(n_q * 1000 + d)
    n_head, n_head_kv = 4, 2
    q = rng.standard_normal((n_head, n_q, d)).astype(np.float32)
    k = rng.standard_normal((n_head_kv, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((n_head_kv, n_kv, d)).astype(np.float32)
    scale = 1.0 / np.sqrt(d)
    kb, vb = encode(k, k_type), encode(v, v_type)
    got = ggml_flash_attn(q, kb, vb, k_type, v_type, n_kv, n_head_kv, scale)
    exact = attention(q, decode(kb, k_type, k.shape), decode(vb, v_type, v.shape), scale)
    # upstream's quantized K types score against a q8_0 copy of Q; ours use Q in f32
    exact_tol = 1e-5 if k_type in OURS else 2e-4
    assert nmse(got, exact) < exact_tol, "kernel differs from attention over the decoded cache"
    assert nmse(got, attention(q, k, v, scale)) < max(QUALITY_BOUND[k_type], QUALITY_BOUND[v_type])


def run_graph(build):
    """Build one op with `build(ctx)` -> tensor, compute it on the CPU, return its bytes."""
    params = ffi.new("struct ggml_init_params *", {"mem_size": 64 << 20, "mem_buffer": ffi.NULL, "no_alloc": False})
    ctx = lib.ggml_init(params[0])
    try:
        out = build(ctx)
        graph = lib.ggml_new_graph(ctx)
        lib.ggml_build_forward_expand(graph, out)
        assert lib.ggml_graph_compute_with_ctx(ctx, graph, 2) == lib.GGML_STATUS_SUCCESS
        return ffi.unpack(ffi.cast("char *", out.data), lib.ggml_nbytes(out))
    finally:
        lib.ggml_free(ctx)


def new_tensor(ctx, name, data: bytes, ne0, ne1):
    t = lib.ggml_new_tensor_4d(ctx, gtype(name) if isinstance(name, str) else name, ne0, ne1, 1, 1)
    ffi.memmove(t.data, data, lib.ggml_nbytes(t))
    return t


@pytest.mark.parametrize("t", OURS)
def test_get_rows_decodes_the_selected_rows(t):
    x = np.random.default_rng(7).standard_normal((10, 128)).astype(np.float32)
    data, rows = encode(x, t), np.array([7, 0, 3], dtype=np.int32)
    got = np.frombuffer(run_graph(lambda ctx: lib.ggml_get_rows(
        ctx, new_tensor(ctx, t, data, 128, 10), new_tensor(ctx, lib.GGML_TYPE_I32, rows.tobytes(), 3, 1))), np.float32)
    assert np.array_equal(got.reshape(3, 128), decode(data, t, x.shape)[rows])


@pytest.mark.parametrize("t", OURS)
def test_copies_to_and_from_f32_are_the_codec(t):
    """ggml_cpy F32 -> rotor is the reference quantiser; rotor -> F32 its decoder (K-shift path)."""
    x = np.random.default_rng(8).standard_normal((4, 128)).astype(np.float32)
    to_rotor = run_graph(lambda ctx: lib.ggml_cpy(ctx, new_tensor(ctx, "f32", x.tobytes(), 128, 4),
                                                  lib.ggml_new_tensor_4d(ctx, gtype(t), 128, 4, 1, 1)))
    assert to_rotor == encode(x, t)
    back = run_graph(lambda ctx: lib.ggml_cpy(ctx, new_tensor(ctx, t, to_rotor, 128, 4),
                                              lib.ggml_new_tensor_4d(ctx, lib.GGML_TYPE_F32, 128, 4, 1, 1)))
    assert np.array_equal(np.frombuffer(back, np.float32).reshape(4, 128), decode(to_rotor, t, x.shape))
