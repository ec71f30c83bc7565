"""The rotor cache types on CUDA, against the CPU implementation (needs a CUDA build and a GPU).

Cross-backend contract (the public fork broke it with three rotation tables):
  * quantising gives the same bytes on both backends (SET_ROWS and CPY F32 -> rotor);
  * decoding the same bytes gives the same floats up to float rounding of the inverse
    rotation (fused vs separate multiply-adds): |delta| <= 1e-6 * max |value|;
  * flash attention agrees with the CPU's, and with float64 attention over the decoded
    cache, to float rounding (decode: our kernel; prompts: upstream's kernels on f16 copies).
"""
import numpy as np
import pytest

from ggml_ops import OURS, attention, decode, device_names, encode, gtype, nmse, run
from rotorquant._native import ffi, lib
from rotorquant.kvpolicy.fakequant import hadamard

CUDA = "CUDA0"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(CUDA not in device_names(), reason="no CUDA device (CPU build or no GPU)"),
]


def rows(n, d, seed):
    """Rows with the spread of real K/V: a few large channels, a zero row, a tiny row."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.1, 8.0, (n, 1)).astype(np.float32)
    x[:, rng.choice(d, 4, replace=False)] *= 9.0
    x[0] = 0.0
    x[1] *= 1e-3
    return x


@pytest.mark.parametrize("t", OURS)
def test_set_rows_writes_the_cpu_bytes(t):
    x = rows(40, 256, seed=1)
    ids = np.random.default_rng(2).permutation(64)[:40].astype(np.int64)
    zeros = bytes(len(encode(np.zeros((64, 256), np.float32), t)))

    def build(b):
        cache = b.tensor(t, (256, 64), zeros)
        return lib.ggml_set_rows(b.ctx, cache, b.tensor("f32", (256, 40), x), b.tensor("i64", (40,), ids))

    got = run(CUDA, build)
    expect = np.zeros((64, 256), np.float32)
    expect[ids] = x
    want = bytearray(encode(expect, t))
    row = len(want) // 64
    untouched = set(range(64)) - set(ids.tolist())
    for r in untouched:  # rows SET_ROWS did not write stay zero bytes
        want[r * row:(r + 1) * row] = bytes(row)
    assert got == bytes(want)


@pytest.mark.parametrize("t", OURS)
@pytest.mark.parametrize("n", [64, 128, 256, 512])
def test_the_hadamard_pre_rotation_fused_into_the_store_writes_the_cpu_bytes(t, n):
    """A Hadamard MUL_MAT whose only consumer is a rotor SET_ROWS runs with it as one kernel
    on CUDA (rq-cuda-graph.cu); the cache bytes are those the CPU writes running both."""
    d, n_rows = max(256, n), 40
    x = rows(n_rows, d, seed=7)
    ids = np.random.default_rng(8).permutation(64)[:n_rows].astype(np.int64)
    zeros = bytes(len(encode(np.zeros((64, d), np.float32), t)))

    def build(b, read_transform=False):
        cache = b.tensor(t, (d, 64), zeros)
        chunks = lib.ggml_reshape_2d(b.ctx, b.tensor("f32", (d, n_rows), x), n, d * n_rows // n)
        hx = lib.ggml_mul_mat(b.ctx, b.tensor("f32", (n, n), hadamard(n)), chunks)
        lib.ggml_mul_mat_set_hint(hx, lib.GGML_HINT_SRC0_IS_HADAMARD)
        b.uploads.append((hx, bytes(lib.ggml_nbytes(hx))))  # zeros, unless the MUL_MAT runs
        node = lib.ggml_set_rows(b.ctx, cache, lib.ggml_reshape_2d(b.ctx, hx, d, n_rows), b.tensor("i64", (n_rows,), ids))
        return (node, hx) if read_transform else node

    got = run(CUDA, build)
    assert got == run("CPU", build)
    assert not any(run(CUDA, lambda b: build(b, read_transform=True)))  # fused: the MUL_MAT itself never ran
    stored = decode(got, t, (64, d))[ids]
    rotated = (x.reshape(-1, n) @ hadamard(n)).reshape(n_rows, d)
    assert nmse(stored, rotated) < 0.1 < nmse(stored, x)  # the transform was applied


@pytest.mark.parametrize("t", OURS)
def test_cpy_to_a_strided_view_is_the_cpu_quantiser(t):
    """The K-shift writes F32 rows back into a view of the cache (head stride != row size)."""
    n_kv, n_head, d = 24, 3, 128
    x = rows(n_kv * n_head, d, seed=3).reshape(n_kv, n_head, d)
    zeros = bytes(len(encode(np.zeros((n_kv, 4, d), np.float32), t)))

    def build(b):
        cache = b.tensor(t, (d, 4, n_kv), zeros)          # 4 heads allocated, 3 written
        blk = lib.ggml_type_size(gtype(t)) * d // 64
        view = lib.ggml_view_4d(b.ctx, cache, d, n_head, n_kv, 1, cache.nb[1], cache.nb[2], cache.nb[3], blk)
        node = lib.ggml_cpy(b.ctx, b.tensor("f32", (d, n_head, n_kv), x), view)
        return node, cache

    got = run(CUDA, build)
    full = np.zeros((n_kv, 4, d), np.float32)
    full[:, 1:] = x
    want = bytearray(encode(full, t))
    blk = len(want) // (n_kv * 4)
    for i in range(n_kv):  # head 0 of each row was never written
        want[(4 * i) * blk:(4 * i + 1) * blk] = bytes(blk)
    assert got == bytes(want)


@pytest.mark.parametrize("t", OURS)
def test_cuda_decodes_the_cpu_bytes(t):
    x = rows(50, 192, seed=4)
    data = encode(x, t)

    def build(b):
        return lib.ggml_cpy(b.ctx, b.tensor(t, (192, 50), data), b.tensor("f32", (192, 50)))

    got = np.frombuffer(run(CUDA, build), np.float32).reshape(50, 192)
    want = decode(data, t, x.shape)
    assert np.max(np.abs(got - want)) <= 1e-6 * np.max(np.abs(want))


def flash_attn(device, q, k, v, k_type, v_type, mask=None, softcap=0.0, sinks=None):
    n_head, n_q, d = q.shape
    n_head_kv, n_kv, _ = k.shape
    kb, vb = encode(k, k_type), encode(v, v_type)

    def build(b):
        Q = b.tensor("f32", (d, n_q, n_head), np.ascontiguousarray(q, np.float32))
        K = b.tensor(k_type, (d, n_kv, n_head_kv), kb)
        V = b.tensor(v_type, (d, n_kv, n_head_kv), vb)
        M = b.tensor("f16", (n_kv, n_q), mask.astype(np.float16)) if mask is not None else ffi.NULL
        node = lib.ggml_flash_attn_ext(b.ctx, Q, K, V, M, 1.0 / np.sqrt(d), 0.0, softcap)
        if sinks is not None:
            lib.ggml_flash_attn_ext_add_sinks(node, b.tensor("f32", (n_head,), np.asarray(sinks, np.float32)))
        return node

    out = np.frombuffer(run(device, build), np.float32).reshape(n_q, n_head, d)
    return out, decode(kb, k_type, k.shape), decode(vb, v_type, v.shape)


PAIRS = [(t, t) for t in OURS] + [("iso3", "iso4"), ("planar3", "f16"), ("iso4", "q8_0"), ("q8_0", "iso3"), ("f16", "planar4")]
SHAPES = [  # (n_q, n_kv, head_dim, n_head, n_head_kv): n_q == 1 is decode (our kernel)
    (1, 1000, 128, 32, 8), (1, 77, 64, 8, 8), (1, 3000, 256, 32, 2), (1, 300, 128, 12, 2),
    (7, 500, 128, 8, 2), (33, 256, 256, 4, 2),
]


@pytest.mark.parametrize("k_type, v_type", PAIRS)
@pytest.mark.parametrize("n_q, n_kv, d, n_head, n_head_kv", SHAPES)
def test_flash_attention_agrees_with_the_cpu(k_type, v_type, n_q, n_kv, d, n_head, n_head_kv):
    rng = np.random.default_rng(n_kv + d)
    q = rng.standard_normal((n_head, n_q, d)).astype(np.float32)
    k = rows(n_head_kv * n_kv, d, seed=5).reshape(n_head_kv, n_kv, d) * 0.3
    v = rows(n_head_kv * n_kv, d, seed=6).reshape(n_head_kv, n_kv, d)
    mask = np.zeros((n_q, n_kv), np.float32)
    mask[:, rng.choice(n_kv, n_kv // 5, replace=False)] = -np.inf   # some keys hidden
    got, kd, vd = flash_attn(CUDA, q, k, v, k_type, v_type, mask)
    cpu, _, _ = flash_attn("CPU", q, k, v, k_type, v_type, mask)
    exact = attention(q, kd, vd, 1.0 / np.sqrt(d), mask)
    # decode runs in f32 (3-bit keys: 16-bit queries against 8-bit images of the levels,
    # each <= 0.3 % off, which these peaked scores magnify); prompts use f16 copies of K/V
    # (upstream's kernels)
    bound = (5e-5 if k_type.endswith("3") else 1e-5) if n_q == 1 and k_type in OURS else 5e-4
    assert nmse(got, exact) < bound
    assert nmse(got, cpu) < bound


@pytest.mark.parametrize("mma", ["kv", "k", "v", "none"])
@pytest.mark.parametrize("k_type, v_type", [("iso3", "iso3"), ("planar3", "f16"), ("planar4", "planar3")])
@pytest.mark.parametrize("n_kv, d, n_head, n_head_kv", [
    (77, 64, 8, 8), (1000, 128, 32, 8), (300, 128, 12, 2), (3000, 256, 32, 2), (20000, 128, 32, 8)])
def test_every_phase_split_of_the_decode_kernel_agrees_with_the_cpu(monkeypatch, mma, k_type, v_type, n_kv, d, n_head, n_head_kv):
    """3-bit key scores and 3-bit V run on tensor cores unless RQ_CUDA_DECODE_MMA names
    fewer phases; each split gives the CPU's attention, partial tiles and head groups included
    (scores: the scalar path's integer sums exactly; V: f16 probabilities times scales)."""
    monkeypatch.setenv("RQ_CUDA_DECODE_MMA", mma)
    rng = np.random.default_rng(n_kv + d + 1)
    q = rng.standard_normal((n_head, 1, d)).astype(np.float32)
    k = rows(n_head_kv * n_kv, d, seed=7).reshape(n_head_kv, n_kv, d) * 0.3
    v = rows(n_head_kv * n_kv, d, seed=8).reshape(n_head_kv, n_kv, d)
    mask = np.zeros((1, n_kv), np.float32)
    mask[:, rng.choice(n_kv, n_kv // 5, replace=False)] = -np.inf
    got, _, _ = flash_attn(CUDA, q, k, v, k_type, v_type, mask)
    cpu, _, _ = flash_attn("CPU", q, k, v, k_type, v_type, mask)
    assert nmse(got, cpu) < (5e-5 if k_type.endswith("3") else 1e-5)


@pytest.mark.parametrize("k_type", ["iso3", "planar4"])
def test_decode_with_logit_softcap(k_type):
    rng = np.random.default_rng(9)
    q = rng.standard_normal((8, 1, 256)).astype(np.float32) * 4
    k = rng.standard_normal((2, 700, 256)).astype(np.float32)
    v = rng.standard_normal((2, 700, 256)).astype(np.float32)
    got, kd, vd = flash_attn(CUDA, q, k, v, k_type, "f16", softcap=30.0)
    cpu, _, _ = flash_attn("CPU", q, k, v, k_type, "f16", softcap=30.0)
    # peaked attention (|q| 4x) magnifies the 3-bit kernel's 8-bit level images (<= 0.3 % off)
    assert nmse(got, cpu) < (2e-5 if k_type.endswith("3") else 1e-6)


@pytest.mark.parametrize("k_type, v_type", [("iso3", "iso3"), ("planar4", "f16"), ("planar3", "planar3")])
@pytest.mark.parametrize("n_kv, d, n_head, n_head_kv", [(20000, 128, 32, 8), (20000, 64, 8, 8)])
def test_long_decode_agrees_with_the_cpu(k_type, v_type, n_kv, d, n_head, n_head_kv):
    """Enough keys that each block walks several tiles, copying the next while it computes
    one (head size 64: 26-byte rows, copied in 16-bit words instead)."""
    rng = np.random.default_rng(n_kv + d)
    q = rng.standard_normal((n_head, 1, d)).astype(np.float32)
    k = rng.standard_normal((n_head_kv, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((n_head_kv, n_kv, d)).astype(np.float32)
    mask = np.zeros((1, n_kv), np.float32)
    mask[:, rng.choice(n_kv, n_kv // 7, replace=False)] = -np.inf
    got, _, _ = flash_attn(CUDA, q, k, v, k_type, v_type, mask)
    cpu, _, _ = flash_attn("CPU", q, k, v, k_type, v_type, mask)
    assert nmse(got, cpu) < 1e-5


@pytest.mark.parametrize("n_kv", [100, 5000])  # one slice (the kernel writes the output) / many (merged)
@pytest.mark.parametrize("v_type", ["iso3", "f16"])
def test_decode_with_attention_sinks(n_kv, v_type):
    rng = np.random.default_rng(n_kv)
    q = rng.standard_normal((16, 1, 128)).astype(np.float32) * 2
    k = rng.standard_normal((4, n_kv, 128)).astype(np.float32)
    v = rng.standard_normal((4, n_kv, 128)).astype(np.float32)
    sinks = (np.log(n_kv) + rng.uniform(-1.0, 3.0, 16)).astype(np.float32)  # a share like the keys' own
    got, _, _ = flash_attn(CUDA, q, k, v, "iso3", v_type, sinks=sinks)
    cpu, _, _ = flash_attn("CPU", q, k, v, "iso3", v_type, sinks=sinks)
    plain, _, _ = flash_attn("CPU", q, k, v, "iso3", v_type)
    assert nmse(got, cpu) < 1e-5
    assert nmse(plain, cpu) > 1e-3  # the sinks took a visible share of the probability


@pytest.mark.parametrize("merge", ["slice", "kernel"])  # the last slice merges, or the combine kernel does
@pytest.mark.parametrize("n_kv", [77, 300, 5000])  # one slice; ~10 slices; ~80 slices (always the combine kernel)
@pytest.mark.parametrize("k_type, v_type, d, n", [("iso3", "iso3", 128, 64), ("planar4", "planar3", 256, 64),
                                                   ("iso3", "f16", 128, 128), ("iso4", "q8_0", 64, 64)])
def test_the_output_hadamard_fused_into_decode_attention_agrees_with_the_cpu(monkeypatch, merge, n_kv, k_type, v_type, d, n):
    """With a rotated V, llama.cpp multiplies the attention output by the Hadamard matrix
    again (a MUL_MAT node).  On CUDA the decode kernel (or the combine kernel) applies it
    and writes the MUL_MAT's result (rq-cuda-graph.cu); the attention's own output is never
    written.  The result is the CPU's, which runs both nodes."""
    if merge == "kernel":
        monkeypatch.setenv("RQ_CUDA_MERGE", "kernel")
    n_head, n_head_kv = 16, 4
    rng = np.random.default_rng(n_kv + d + n)
    q = rng.standard_normal((n_head, 1, d)).astype(np.float32)
    k = rows(n_head_kv * n_kv, d, seed=9).reshape(n_head_kv, n_kv, d) * 0.3
    v = rows(n_head_kv * n_kv, d, seed=10).reshape(n_head_kv, n_kv, d)
    kb, vb = encode(k, k_type), encode(v, v_type)

    def build(b, read_attention=False):
        Q = b.tensor("f32", (d, 1, n_head), q)
        K = b.tensor(k_type, (d, n_kv, n_head_kv), kb)
        V = b.tensor(v_type, (d, n_kv, n_head_kv), vb)
        fa = lib.ggml_flash_attn_ext(b.ctx, Q, K, V, ffi.NULL, 1.0 / np.sqrt(d), 0.0, 0.0)
        b.uploads.append((fa, bytes(lib.ggml_nbytes(fa))))  # zeros, unless the attention writes them
        hx = lib.ggml_mul_mat(b.ctx, b.tensor("f32", (n, n), hadamard(n)), lib.ggml_reshape_2d(b.ctx, fa, n, d * n_head // n))
        lib.ggml_mul_mat_set_hint(hx, lib.GGML_HINT_SRC0_IS_HADAMARD)
        return (hx, fa) if read_attention else hx

    got = np.frombuffer(run(CUDA, build), np.float32)
    cpu = np.frombuffer(run("CPU", build), np.float32)
    assert nmse(got, cpu) < (5e-5 if k_type.endswith("3") else 1e-5)
    assert not any(run(CUDA, lambda b: build(b, read_attention=True)))  # fused: the attention wrote the product only


def next_token_logits(llm, tokens, n_prompt):
    """Logits after each of tokens[n_prompt:], fed one at a time (decode steps) after a prompt."""
    llm.reset()
    llm.eval(tokens[:n_prompt])
    out = [np.array(llm.logits(), np.float64)]
    for tok in tokens[n_prompt:]:
        llm.eval([tok])
        out.append(np.array(llm.logits(), np.float64))
    return np.stack(out)


def kl(p_logits, q_logits):
    p = np.exp(p_logits - p_logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    lq = q_logits - q_logits.max(axis=1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(axis=1, keepdims=True))
    lp = np.log(np.maximum(p, 1e-30))
    return float(np.mean(np.sum(p * (lp - lq), axis=1)))


def gpu_and_cpu_logits(model, k_type, v_type):
    """Next-token logits of 48 decode steps after a 160-token prompt, on the GPU and the CPU."""
    from importlib.resources import files

    from rotorquant import Llama

    text = files("rotorquant.kvpolicy").joinpath("data/calibration.txt").read_text()
    kw = dict(n_ctx=512, cache_type_k=k_type, cache_type_v=v_type, flash_attn="on", kv_policy=None)
    with Llama(model, n_gpu_layers=-1, **kw) as gpu, Llama(model, n_gpu_layers=0, **kw) as cpu:
        tokens = gpu.tokenize(text)[:208]
        return next_token_logits(gpu, tokens, 160), next_token_logits(cpu, tokens, 160)


@pytest.fixture(scope="module")
def f16_logits(smollm2_model):
    return gpu_and_cpu_logits(smollm2_model, "f16", "f16")


@pytest.mark.parametrize("k_type, v_type", [("iso3", "iso3"), ("planar4", "q8_0"), ("iso4", "planar3")])
def test_a_real_model_loses_as_little_to_the_rotor_cache_on_cuda_as_on_the_cpu(smollm2_model, f16_logits, k_type, v_type):
    """SmolLM2-135M (head_dim 64, 3 query heads per KV head): prompt on upstream's kernels,
    then 48 decode steps on ours.  What the cache costs (KL from the same backend's f16-cache
    distributions) is about the same on both backends.  GPU and CPU logits are not compared
    directly: their matmuls differ slightly (q8_1 vs q8_0 activations) and a 3-4 bit cache
    amplifies that (H200, 2026-12-02: f16/f16 GPU-vs-CPU KL 0.011, q4_0/q4_0 0.038), while the
    cost of the cache, GPU / CPU, was iso3 0.178 / 0.156, planar4+q8_0 0.067 / 0.055,
    iso4+planar3 0.090 / 0.065, and upstream's q4_0 0.061 / 0.037."""
    from rotorquant import Llama

    gpu16, cpu16 = f16_logits
    on_gpu, on_cpu = gpu_and_cpu_logits(smollm2_model, k_type, v_type)
    gpu_cost, cpu_cost = kl(gpu16, on_gpu), kl(cpu16, on_cpu)
    assert gpu_cost <= 1.5 * cpu_cost + 0.01, f"{k_type}/{v_type}: KL to f16 {gpu_cost:.3e} on CUDA, {cpu_cost:.3e} on the CPU"
    with Llama(smollm2_model, n_gpu_layers=-1, n_ctx=256, cache_type_k=k_type, cache_type_v=v_type,
               flash_attn="on", kv_policy=None) as gpu:
        assert gpu.generate("The capital of France is", max_tokens=8, temperature=0).strip()


def test_auto_offload_fits_a_model_into_free_gpu_memory(smollm2_model):
    from rotorquant import Llama
    with Llama(smollm2_model, n_gpu_layers="auto", n_threads=2) as llm:
        assert llm.fit_status == "fits" and llm.n_gpu_layers != 0
        assert llm.memory_bytes()["model"] > 0
        assert llm.generate("The capital of France is", max_tokens=4, temperature=0)
