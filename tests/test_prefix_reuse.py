"""Prompt-prefix reuse: a prompt that extends the previous one evaluates only its new tokens,
and the output is what a fresh context gives."""
import pytest

from rotorquant import Llama

GREEDY = dict(temperature=0)


def reused(llm) -> int:
    return llm.perf()["prompt_reused_tokens"]


@pytest.mark.parametrize("ctk, ctv", [("f16", "f16"), ("iso3", "iso3")])
def test_a_longer_prompt_evaluates_only_its_new_tokens(tiny_model, ctk, ctv):
    kw = dict(n_ctx=256, cache_type_k=ctk, cache_type_v=ctv, kv_policy=None, n_threads=2)
    first = "the capital of France is"
    with Llama(tiny_model, **kw) as llm:
        reply = llm.generate(first, max_tokens=6, **GREEDY)
        second = first + reply + " and the capital of"
        n_second = len(llm.tokenize(second))
        shared = len(llm.tokenize(first))
        got = llm.generate(second, max_tokens=6, **GREEDY)
        assert reused(llm) >= shared  # the first prompt (and some of the reply) at least
        assert llm.perf()["prompt_tokens"] < n_second - shared + 2  # llama.cpp's count, ±1
    with Llama(tiny_model, **kw) as fresh:
        assert got == fresh.generate(second, max_tokens=6, **GREEDY)


def test_a_different_prompt_starts_over(tiny_model):
    with Llama(tiny_model, n_ctx=256, n_threads=2) as llm:
        llm.generate("hello world", max_tokens=4, **GREEDY)
        text = llm.generate("a b c d", max_tokens=4, **GREEDY)
        assert reused(llm) == 1  # only BOS is shared
    with Llama(tiny_model, n_ctx=256, n_threads=2) as fresh:
        assert text == fresh.generate("a b c d", max_tokens=4, **GREEDY)


def test_the_same_prompt_twice_re_evaluates_one_token(tiny_model):
    with Llama(tiny_model, n_ctx=256, n_threads=2) as llm:
        a = llm.generate("the capital of", max_tokens=5, **GREEDY)
        b = llm.generate("the capital of", max_tokens=5, **GREEDY)
        assert a == b and reused(llm) == len(llm.tokenize("the capital of")) - 1


def test_after_load_state_or_reset_the_whole_prompt_is_evaluated(tiny_model):
    with Llama(tiny_model, n_ctx=256, n_threads=2) as llm:
        llm.generate("the capital of", max_tokens=2, **GREEDY)
        llm.load_state(llm.save_state())
        llm.generate("the capital of", max_tokens=2, **GREEDY)
        assert reused(llm) == 0
