"""RotorQuant cache types end to end: any model, every llama.cpp path that touches the cache."""
import re
import struct

import numpy as np
import pytest

from conftest import run
from rotorquant import Llama, ModelLoadError, cache_types
from tiny_gguf import write_tiny_llama

ROTOR = ["planar3", "iso3", "planar4", "iso4"]


def kv_ratio(model, ctk, ctv, n_ctx=512):
    with Llama(model, n_ctx=n_ctx, cache_type_k=ctk, cache_type_v=ctv) as q, Llama(model, n_ctx=n_ctx) as f16:
        return q.memory_bytes()["context"] / f16.memory_bytes()["context"]


@pytest.mark.parametrize("t", ROTOR)
def test_generation_works_and_kv_memory_is_bits_over_16(tiny_model, t):
    with Llama(tiny_model, n_ctx=256, cache_type_k=t, cache_type_v=t) as llm:
        assert llm.generate("hello world", max_tokens=8, temperature=0)
    bits = cache_types.get(t).bits_per_element
    assert kv_ratio(tiny_model, t, t) == pytest.approx(bits / 16, rel=0.02)


def test_k_is_quantized_from_the_first_token_with_no_f16_shadow(tiny_model):
    """K alone in iso3: the cache is (3.25 + 16) / 32 of f16's, not more (no deferred f16 K)."""
    assert kv_ratio(tiny_model, "iso3", "f16") == pytest.approx((3.25 + 16) / 32, rel=0.02)


def test_rotor_k_without_flash_attention_uses_the_matrix_path(tiny_model):
    with Llama(tiny_model, n_ctx=128, cache_type_k="iso3", cache_type_v="f16", flash_attn="off") as a, \
         Llama(tiny_model, n_ctx=128, cache_type_k="iso3", cache_type_v="f16", flash_attn="on") as b:
        prompt = a.tokenize("the capital of France is")
        a.eval(prompt)
        b.eval(prompt)
        la, lb = np.array(a.logits()), np.array(b.logits())
    # the flash path accumulates f16 V in f16, hence not bit-identical
    assert np.abs(la - lb).max() < 1e-2 * np.abs(lb).max()


@pytest.mark.parametrize("t", ["iso3", "planar4"])
def test_state_save_and_load_reproduce_logits_exactly(tiny_model, t):
    kw = dict(n_ctx=128, cache_type_k=t, cache_type_v=t)
    with Llama(tiny_model, **kw) as llm, Llama(tiny_model, **kw) as other:
        llm.eval(llm.tokenize("the capital of France is"))
        state = llm.save_state()
        llm.eval([20, 21, 22])
        llm.load_state(state)  # the cache goes back: the next token sees only the prompt
        llm.eval([30])
        other.load_state(state)
        other.eval([30])
        assert other.logits() == llm.logits()


def test_several_sequences_in_one_batch(rq_run, tiny_model, tmp_path):
    """llama-perplexity with -c 64 -b 256 evaluates 4 sequences per batch."""
    text = tmp_path / "text.txt"
    text.write_text("the capital of France is Paris and the world is a hello " * 60)
    proc = run([rq_run, "perplexity", "-m", tiny_model, "-f", text, "-c", "64", "-b", "256",
                "-ctk", "iso3", "-ctv", "iso3", "-t", "2", "--chunks", "4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every chunk's running estimate is printed; llama.cpp's log thread can lose the last
    # line ("Final estimate") at exit, so the fourth chunk's value is the proof
    assert re.search(r"\[4\]\d+\.\d+", proc.stdout + proc.stderr)


def test_context_shift_rotates_quantized_keys(rq_run, tiny_model):
    """Past the context, llama-completion drops old tokens and RoPE-shifts the rotor K cache."""
    proc = run([rq_run, "completion", "-m", tiny_model, "-p", "hello", "-n", "150", "-c", "64",
                "--context-shift", "-no-cnv", "-ctk", "iso3", "-ctv", "iso3", "-t", "2", "--temp", "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 150 tokens through a 64-token context: 149 decode runs.  llama.cpp's log is written by
    # a background thread that can lose its last lines at exit, so check it when present.
    runs = re.search(r"\beval time = .*?/\s+(\d+) runs", proc.stderr)
    if runs:
        assert int(runs.group(1)) == 149


@pytest.mark.parametrize("t", ["q8_0", "iso3"])
def test_bench_accepts_rotor_types(rq_run, tiny_model, t):
    proc = run([rq_run, "bench", "-m", tiny_model, "-ctk", t, "-ctv", t, "-p", "32", "-n", "4", "-r", "1", "-t", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert t in proc.stdout


# --- upstream's Hadamard pre-rotation of K: kept, except for models with a K bias ----------

def attn_rot_lines(model, caplog, **kw):
    import logging
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rotorquant.llama"):
        Llama(model, n_ctx=64, **kw).close()
    return [r.getMessage() for r in caplog.records if "attn_rot_k" in r.getMessage()]


def test_hadamard_stays_on_for_rotor_k_by_default(tiny_model, caplog):
    assert any("attn_rot_k = 1" in m for m in attn_rot_lines(tiny_model, caplog, cache_type_k="iso3"))


def test_hadamard_is_off_for_rotor_k_when_the_model_has_a_k_bias(tmp_path, caplog, monkeypatch):
    biased = write_tiny_llama(tmp_path / "kbias.gguf", k_bias=2.0)
    lines = attn_rot_lines(biased, caplog, cache_type_k="iso3")
    assert any("attn_rot_k off for iso3 K: the model has a K bias" in m for m in lines)
    # upstream's own types keep upstream's rule
    assert any("attn_rot_k = 1" in m for m in attn_rot_lines(biased, caplog, cache_type_k="q4_0"))
    monkeypatch.setenv("RQ_ATTN_ROT_K", "1")
    assert any("attn_rot_k = 1" in m for m in attn_rot_lines(biased, caplog, cache_type_k="iso3"))


# --- rotor types never hold weights -----------------------------------------------------

def gguf_with_tensor_type(src, dst, tensor: str, ggml_type: int):
    """Copy of a GGUF whose tensor-info entry for `tensor` claims another type."""
    data = bytearray(src.read_bytes())
    name = tensor.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, ggml_type)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("t", ROTOR)
def test_model_loader_rejects_rotor_weight_types(tiny_model, tmp_path, t):
    bad = gguf_with_tensor_type(tiny_model, tmp_path / "bad.gguf", "blk.0.attn_k.weight",
                                cache_types.get(t).ggml_type)
    with pytest.raises(ModelLoadError, match="KV-cache-only"):
        Llama(bad)


def test_quantize_refuses_rotor_tensor_types(rq_run, tiny_model, tmp_path):
    proc = run([rq_run, "quantize", "--tensor-type", "attn_k=iso3", tiny_model, tmp_path / "out.gguf", "Q8_0"])
    assert proc.returncode != 0
    assert "KV-cache-only" in proc.stderr + proc.stdout
    assert not (tmp_path / "out.gguf").exists()


def test_head_dim_that_blocks_do_not_divide_is_a_clear_error(tmp_path):
    odd = write_tiny_llama(tmp_path / "hd32.gguf", n_embd=64, n_head=2, n_head_kv=1)  # head_dim 32
    with pytest.raises(Exception, match="block size 64 does not divide n_embd_head_k=32"):
        Llama(odd, cache_type_k="iso3")


@pytest.mark.parametrize("t", ["iso3", "planar4"])
def test_decode_kernel_agrees_with_the_prompt_kernel(tiny_model, t):
    """The last token's logits: evaluated inside the prompt batch (multi-query path) or alone
    as a decode step over a >= 512-cell cache (grouped split-KV decode kernel)."""
    kw = dict(n_ctx=1024, cache_type_k=t, cache_type_v=t, n_threads=2)
    with Llama(tiny_model, **kw) as llm:
        prompt = llm.tokenize("the capital of France is Paris and the world is " * 8)
        llm.eval(prompt)
        whole = np.array(llm.logits())
        llm.reset()
        llm.eval(prompt[:-1])
        llm.eval(prompt[-1:])
        step = np.array(llm.logits())
    assert np.abs(whole - step).max() < 1e-3 * np.abs(whole).max()
