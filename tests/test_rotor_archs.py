"""Rotor caches on architectures we have no small real checkpoint of, as random-weight
models written by the bundled llama-test-archs: hybrid Qwen3.5 (only its full-attention
layers hold a KV cache; the linear-attention layers keep a recurrent state) and its MoE."""
import logging
import re

import numpy as np
import pytest

from conftest import run
from rotorquant import Llama
from rotorquant._native import BIN_DIR


@pytest.fixture(scope="module")
def arch_models(tmp_path_factory):
    out = tmp_path_factory.mktemp("archs")
    proc = run([BIN_DIR / "llama-test-archs", "-a", "^qwen35", "-o", out], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = {p.stem: p for p in out.glob("*.gguf")}
    assert {"qwen35-dense", "qwen35moe-moe"} <= set(models), models
    return models


def kv_log(model, caplog, **kw):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rotorquant.llama"):
        llm = Llama(model, n_ctx=256, **kw)
    lines = [r.getMessage() for r in caplog.records]
    return llm, lines


@pytest.mark.parametrize("name", ["qwen35-dense", "qwen35moe-moe"])
@pytest.mark.parametrize("t", ["iso3", "planar4"])
def test_hybrid_qwen35_stores_only_attention_layers_in_rotor_types(arch_models, caplog, name, t):
    llm, lines = kv_log(arch_models[name], caplog, cache_type_k=t, cache_type_v=t)
    with llm:
        sizes = [m for m in lines if re.search(r"llama_kv_cache: size = .*K \(" + t + r"\)", m)]
        assert sizes, "the attention layers' cache is not in the rotor type"
        n_attn_layers = int(re.search(r"(\d+) layers", sizes[0]).group(1))
        assert 0 < n_attn_layers < int(llm.metadata[f"{llm.metadata['general.architecture']}.block_count"])
        llm.eval([1, 2, 3, 4, 5, 6, 7, 8])
        logits = np.array(llm.logits())
        assert np.isfinite(logits).all()
        state = llm.save_state()
        llm.eval([9])
        after = np.array(llm.logits())
        llm.load_state(state)
        llm.eval([9])
        assert np.array_equal(np.array(llm.logits()), after)


PROMPT = "the quick brown fox jumps over the lazy dog " * 3


def hybrid(arch_models, **kw):
    return Llama(arch_models["qwen35-dense"], **dict(dict(n_ctx=256, cache_type_k="iso3", cache_type_v="iso3",
                                                          kv_policy=None, n_batch=16), **kw))


def last_logits(llm, prompt):
    llm.generate(prompt, max_tokens=0)
    return np.array(llm.logits())


def test_a_hybrid_model_goes_back_to_the_checkpoint_at_the_end_of_its_last_prompt(arch_models):
    """The cache holds the prompt and a reply that the next prompt does not repeat (as when
    a template drops a turn's reasoning): the recurrent state cannot drop that tail, so it
    is restored from the checkpoint taken before the prompt's last token, and the logits
    are exactly a fresh context's."""
    new = PROMPT + "and then it ran into the forest"
    with hybrid(arch_models) as llm:
        llm.generate(PROMPT, max_tokens=5, temperature=0)
        got = last_logits(llm, new)
        assert llm.perf()["prompt_reused_tokens"] == len(llm.tokenize(PROMPT)) - 1
    with hybrid(arch_models) as fresh:
        assert np.array_equal(got, last_logits(fresh, new))


def test_the_same_prompt_again_evaluates_one_token_on_a_hybrid_model(arch_models):
    with hybrid(arch_models) as llm:
        a = llm.generate(PROMPT, max_tokens=4, temperature=0)
        b = llm.generate(PROMPT, max_tokens=4, temperature=0)
        assert a == b and llm.perf()["prompt_reused_tokens"] == len(llm.tokenize(PROMPT)) - 1


def test_older_checkpoints_serve_an_earlier_divergence_and_newer_ones_are_dropped(arch_models):
    short, longer = PROMPT, PROMPT + "and a cat watches it from the tree"
    with hybrid(arch_models, ctx_checkpoints=2) as llm:
        llm.generate(short, max_tokens=2, temperature=0)
        llm.generate(longer, max_tokens=2, temperature=0)
        n_short, n_longer = len(llm.tokenize(short)), len(llm.tokenize(longer))
        assert llm._checkpoints.token_counts() == [n_short - 1, n_longer - 1]
        diverged = short + "but then"            # leaves `longer` inside: back to `short`'s checkpoint
        got = last_logits(llm, diverged)
        assert llm.perf()["prompt_reused_tokens"] == n_short - 1
        assert max(llm._checkpoints.token_counts()) < len(llm.tokenize(diverged))  # `longer`'s is gone
    with hybrid(arch_models) as fresh:
        assert np.array_equal(got, last_logits(fresh, diverged))


def test_without_checkpoints_a_hybrid_model_starts_over_and_stays_correct(arch_models):
    with hybrid(arch_models, ctx_checkpoints=0) as llm:
        llm.generate(PROMPT, max_tokens=4, temperature=0)
        got = llm.generate(PROMPT + "and more", max_tokens=4, temperature=0)
        assert llm.perf()["prompt_reused_tokens"] == 0
    with hybrid(arch_models) as fresh:
        assert got == fresh.generate(PROMPT + "and more", max_tokens=4, temperature=0)


def test_attention_only_models_need_no_checkpoints(tiny_model):
    with Llama(tiny_model, n_ctx=128) as llm:
        assert llm._checkpoints is None
    with pytest.raises(ValueError, match="ctx_checkpoints"):
        Llama(tiny_model, ctx_checkpoints=-1)


def test_a_multi_turn_chat_on_a_hybrid_model_evaluates_only_the_new_turn(arch_models):
    """A thinking template opens <think> in the generation prompt but renders earlier
    replies without it: the next turn departs from the cache where the last message
    ended, and the checkpoint taken there saves the whole history from re-evaluation."""
    from test_chat import THINKING_TEMPLATE

    history = [{"role": "user", "content": "Tell me about foxes. " * 4}]
    with hybrid(arch_models, chat_template=THINKING_TEMPLATE) as llm:
        reply = llm.create_chat_completion(history, max_tokens=6, temperature=0)
        first = llm.tokenize(llm.apply_chat_template(history), parse_special=True)
        history += [{"role": "assistant", "content": reply["choices"][0]["message"]["content"] or "ok"},
                    {"role": "user", "content": "And wolves?"}]
        second = llm.apply_chat_template(history)
        llm.create_chat_completion(history, max_tokens=0)
        head = llm.tokenize(llm.apply_chat_template(history[:1], add_generation_prompt=False), parse_special=True)
        shared = next(i for i, (a, b) in enumerate(zip(first, head + [-1])) if a != b)
        assert 0 < llm.perf()["prompt_reused_tokens"] == shared < len(first) - 1
        got = np.array(llm.logits())
    with hybrid(arch_models, chat_template=THINKING_TEMPLATE) as fresh:
        assert fresh.apply_chat_template(history) == second
        fresh.create_chat_completion(history, max_tokens=0)
        assert np.array_equal(got, np.array(fresh.logits()))
