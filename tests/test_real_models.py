"""Rotor caches on real models: Gemma-3-270M (head_dim 256, iSWA) and SmolLM2-135M (head_dim 64)."""
import pytest

from rotorquant import Llama, cache_types

PROMPT = "The capital of France is"


@pytest.fixture(params=["gemma", "smollm2"])
def real_model(request):
    return request.getfixturevalue(f"{request.param}_model")


@pytest.mark.parametrize("t", ["iso3", "planar4"])
def test_generation_is_text(real_model, t):
    with Llama(real_model, n_ctx=512, cache_type_k=t, cache_type_v=t, n_threads=2) as llm:
        out = llm.generate(PROMPT, max_tokens=24, temperature=0)
    assert len(out.split()) >= 4 and len(set(out)) > 5


def test_state_round_trip_reproduces_logits(real_model):
    kw = dict(n_ctx=256, cache_type_k="iso3", cache_type_v="iso3", n_threads=2)
    with Llama(real_model, **kw) as llm, Llama(real_model, **kw) as other:
        llm.eval(llm.tokenize(PROMPT))
        state = llm.save_state()
        llm.eval(llm.tokenize(" Paris", add_special=False))
        other.load_state(state)
        other.eval(other.tokenize(" Paris", add_special=False))
        assert other.logits() == llm.logits()


@pytest.mark.parametrize("t", ["iso3", "iso4"])
def test_kv_memory_is_bits_over_16_of_f16(real_model, t):
    with Llama(real_model, n_ctx=1024, cache_type_k=t, cache_type_v=t) as q, Llama(real_model, n_ctx=1024) as f16:
        ratio = q.memory_bytes()["context"] / f16.memory_bytes()["context"]
    assert ratio == pytest.approx(cache_types.get(t).bits_per_element / 16, rel=0.02)
