"""The Python Llama API on a tiny random model: load, tokenize, generate, fail cleanly."""
import logging

import pytest

from rotorquant import ContextError, Llama, ModelLoadError
from tiny_gguf import write_tiny_llama


@pytest.fixture(scope="module")
def llm(tiny_model):
    with Llama(tiny_model, n_ctx=256, seed=1, n_threads=2) as model:
        yield model


def test_tokenize_detokenize_round_trip(llm):
    ids = llm.tokenize("hello world, ünïcode ✓")
    assert ids[0] == 1  # BOS, as the model asks
    assert llm.detokenize(ids) == "hello world, ünïcode ✓"
    assert llm.tokenize("hello", add_special=False)[0] != 1


def test_greedy_generation_is_deterministic(llm):
    a = llm.generate("the capital of France is", max_tokens=12, temperature=0)
    b = llm.generate("the capital of France is", max_tokens=12, temperature=0)
    assert a == b and len(a) > 0


def test_seeded_sampling_is_reproducible(llm):
    a = llm.generate("hello", max_tokens=10, temperature=1.0, seed=7)
    b = llm.generate("hello", max_tokens=10, temperature=1.0, seed=7)
    assert a == b


def test_streaming_yields_the_same_text_as_a_single_call(llm):
    whole = llm.generate("a", max_tokens=10, temperature=0)
    assert "".join(llm.generate("a", max_tokens=10, temperature=0, stream=True)) == whole


def test_stop_strings_end_generation_before_the_stop(llm):
    whole = llm.generate("the", max_tokens=20, temperature=0)
    stop = whole[3:6]
    assert stop and llm.generate("the", max_tokens=20, temperature=0, stop=stop) == whole[:whole.find(stop)]


def test_max_tokens_zero_generates_nothing(llm):
    assert llm.generate("the", max_tokens=0) == ""


def test_a_new_generation_ends_an_unfinished_stream(llm):
    stream = llm.generate("the", max_tokens=50, temperature=0, stream=True)
    next(stream)
    llm.generate("a", max_tokens=2)
    assert list(stream) == []


def test_metadata_and_context_size(llm):
    assert llm.metadata["general.name"] == "rotorquant-tiny-test"
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.n_ctx == 256


@pytest.mark.parametrize("ctk, ctv", [("q8_0", "q8_0"), ("q4_0", "f16"), ("f16", "q4_0")])
def test_quantized_caches_generate_and_shrink_the_kv_memory(tiny_model, ctk, ctv):
    with Llama(tiny_model, n_ctx=256) as f16:
        f16_bytes = f16.memory_bytes()["context"]
    with Llama(tiny_model, n_ctx=256, cache_type_k=ctk, cache_type_v=ctv) as q:
        assert q.generate("hello", max_tokens=4, temperature=0)
        assert 0 < q.memory_bytes()["context"] < f16_bytes


def test_close_is_idempotent_and_later_calls_raise(tiny_model):
    llm = Llama(tiny_model, n_ctx=64)
    llm.close()
    llm.close()
    with pytest.raises(ValueError, match="closed"):
        llm.generate("x")


def test_c_logs_reach_python_logging(tiny_model, caplog):
    with caplog.at_level(logging.INFO, logger="rotorquant.llama"):
        Llama(tiny_model, n_ctx=64).close()
    assert any("llama" in r.getMessage() for r in caplog.records)


# --- bad input: a clear Python exception, never a crash --------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        Llama(tmp_path / "nope.gguf")


def test_not_a_gguf_names_the_file(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ValueError, match=r"model\.bin is not a GGUF file"):
        Llama(bad)


def test_a_directory_is_not_a_model(tmp_path):
    with pytest.raises(IsADirectoryError):
        Llama(tmp_path)


def test_a_truncated_gguf_is_refused_before_c_naming_the_field(tiny_model, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="metadata 'tokenizer.ggml.scores'.*truncated"):
        Llama(cut)


def test_what_llama_cpp_refuses_raises_model_load_error_with_the_c_reason(tiny_model, tmp_path):
    """A well-formed file of an architecture this build does not know."""
    other = tmp_path / "other.gguf"
    data = tiny_model.read_bytes()
    other.write_bytes(data.replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00llamz", 1))
    with pytest.raises(ModelLoadError) as info:
        Llama(other)
    assert "llamz" in info.value.reason  # what llama.cpp logged, not just "failed"


def test_unknown_cache_type_lists_the_valid_names(tiny_model):
    with pytest.raises(ValueError, match="valid types: f32, f16, bf16, q8_0"):
        Llama(tiny_model, cache_type_k="q3_0")


def test_unknown_keyword_is_a_type_error(tiny_model):
    with pytest.raises(TypeError, match="n_gpu"):
        Llama(tiny_model, n_gpu=1)


@pytest.mark.parametrize("v", ["q4_0", "iso3", "planar4"])
def test_quantized_v_without_flash_attention_is_refused_up_front(tiny_model, v):
    with pytest.raises(ValueError, match="flash attention"):
        Llama(tiny_model, cache_type_v=v, flash_attn="off")


@pytest.mark.parametrize("kwargs", [{"n_batch": 0}, {"n_ctx": -1}, {"flash_attn": "maybe"},
                                    {"seed": -1}, {"n_threads": 0}])
def test_bad_numbers_are_value_errors(tiny_model, kwargs):
    with pytest.raises(ValueError):
        Llama(tiny_model, **kwargs)


def test_prompt_longer_than_the_context_is_a_value_error(tiny_model):
    with Llama(tiny_model, n_ctx=32) as llm, pytest.raises(ValueError, match="does not fit"):
        llm.generate("the " * 100)


def test_invalid_token_ids_are_value_errors(llm):
    with pytest.raises(ValueError, match="invalid token id"):
        llm.detokenize([1, 10**9])


def test_context_errors_carry_the_c_reason(tmp_path):
    # head_dim 16 cannot hold q8_0's 32-element blocks: llama.cpp refuses the context
    odd = write_tiny_llama(tmp_path / "hd16.gguf", n_embd=64, n_head=4, n_head_kv=2)
    with pytest.raises(ContextError, match="does not divide n_embd_head_k=16") as info:
        Llama(odd, n_ctx=64, cache_type_k="q8_0")
    assert "block size 32" in info.value.reason
