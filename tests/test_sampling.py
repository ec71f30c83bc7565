"""Sampling and OpenAI-shaped completions: every setting is checked, the samplers change
what is chosen as they should, and the completion result agrees with plain generate()."""
import math

import pytest

from rotorquant import Llama, Sampling


@pytest.fixture(scope="module")
def llm(tiny_model):
    with Llama(tiny_model, n_ctx=256, n_threads=2) as model:
        yield model


GREEDY = dict(temperature=0)


def test_unknown_sampling_arguments_are_rejected(llm):
    with pytest.raises(TypeError, match="temprature"):
        llm.generate("x", temprature=0)
    with pytest.raises(TypeError, match="top_kk"):
        llm.create_completion("x", top_kk=3)


@pytest.mark.parametrize("bad, field", [
    (dict(top_p=1.5), "top_p"), (dict(mirostat=3), "mirostat"), (dict(repeat_penalty=0), "repeat_penalty"),
    (dict(seed=-1), "seed"), (dict(temperature=float("nan")), "temperature"), (dict(top_k=1.5), "top_k"),
    (dict(logit_bias={-1: 1.0}), "logit_bias"), (dict(logit_bias={5: "x"}), "logit_bias"),
    (dict(dry_sequence_breakers="ab"), "dry_sequence_breakers"), (dict(grammar="  "), "grammar"),
])
def test_bad_settings_raise_value_errors_naming_the_setting(bad, field):
    with pytest.raises(ValueError, match=field):
        Sampling(**bad)


def test_a_logit_bias_outside_the_vocabulary_is_refused(llm):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate("x", logit_bias={llm.n_vocab: 1.0})


def test_logit_bias_bans_a_token_and_forces_another(llm):
    out = llm.create_completion("the capital of", max_tokens=1, logprobs=1, **GREEDY)
    best = out["choices"][0]["logprobs"]["token_ids"][0]
    banned = llm.create_completion("the capital of", max_tokens=1, logprobs=0, logit_bias={best: -math.inf}, **GREEDY)
    assert banned["choices"][0]["logprobs"]["token_ids"][0] != best
    forced = llm.tokenize("zz", add_special=False)[-1]
    text = llm.generate("the capital of", max_tokens=6, logit_bias={forced: 100.0}, **GREEDY)
    assert text == llm.detokenize([forced] * 6)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_grammar_constrains_the_output(llm, seed):
    text = llm.generate("answer:", max_tokens=16, temperature=1.0, seed=seed,
                        grammar='root ::= ("yes" | "no") "."')
    assert text in ("yes.", "no.")


def test_an_unparsable_grammar_is_a_clear_error(llm):
    with pytest.raises(ValueError, match="grammar could not be parsed"):
        llm.generate("x", grammar="root ::= (")


@pytest.mark.parametrize("settings", [
    dict(repeat_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5, penalty_last_n=-1),
    dict(dry_multiplier=0.8, dry_allowed_length=1), dict(xtc_probability=0.5, xtc_threshold=0.05),
    dict(typical_p=0.9, top_n_sigma=1.5, top_k=0, top_p=1.0, min_p=0.0),
    dict(mirostat=1), dict(mirostat=2, mirostat_tau=3.0),
])
def test_every_sampler_runs_and_a_seed_reproduces_it(llm, settings):
    a = llm.generate("the the the the", max_tokens=12, temperature=0.9, seed=11, **settings)
    b = llm.generate("the the the the", max_tokens=12, temperature=0.9, seed=11, **settings)
    assert a == b


def test_penalties_see_the_prompt(llm):
    """A huge presence penalty bans every token the prompt holds."""
    prompt = "the capital of France is"
    seen = set(llm.tokenize(prompt))
    out = llm.create_completion(prompt, max_tokens=8, logprobs=0, presence_penalty=50.0,
                                penalty_last_n=-1, **GREEDY)
    assert not set(out["choices"][0]["logprobs"]["token_ids"]) & seen


def test_a_completion_is_openai_shaped_and_matches_generate(llm):
    out = llm.create_completion("the", max_tokens=7, **GREEDY)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    (choice,) = out["choices"]
    assert choice["text"] == llm.generate("the", max_tokens=7, **GREEDY)
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert out["usage"] == {"prompt_tokens": len(llm.tokenize("the")), "completion_tokens": 7,
                            "total_tokens": len(llm.tokenize("the")) + 7}


def test_a_stop_string_finishes_with_reason_stop(llm):
    whole = llm.generate("the", max_tokens=20, **GREEDY)
    stop = whole[4:7]
    out = llm.create_completion("the", max_tokens=20, stop=stop, logprobs=2, **GREEDY)
    choice = out["choices"][0]
    assert choice["text"] == whole[:whole.find(stop)] and choice["finish_reason"] == "stop"
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]).startswith(choice["text"])
    assert all(off < max(len(choice["text"]), 1) for off in lp["text_offset"])


def test_logprobs_are_the_models_log_probabilities(llm):
    out = llm.create_completion("the capital of France is", max_tokens=6, logprobs=3, **GREEDY)
    lp = out["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    for chosen, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        values = list(top.values())
        assert len(values) <= 3 and values == sorted(values, reverse=True)
        assert value <= 0.0 and math.isclose(value, values[0], abs_tol=1e-5)  # greedy: the best
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-5
        assert chosen in top


def test_a_streamed_completion_has_the_same_text_and_ends_with_the_reason(llm):
    chunks = list(llm.create_completion("a", max_tokens=9, stream=True, **GREEDY))
    assert "".join(c["choices"][0]["text"] for c in chunks) == llm.generate("a", max_tokens=9, **GREEDY)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1


def test_logprobs_are_bounded(llm):
    with pytest.raises(ValueError, match="logprobs"):
        llm.create_completion("a", logprobs=21)
