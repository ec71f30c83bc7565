"""Embeddings: pooled as the model or the caller says, consistent with per-token vectors."""
import math

import pytest

from rotorquant import Llama

TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply on Monday.", "hello"]


def close(a, b, tol=1e-4):
    return all(abs(x - y) <= tol * max(1.0, abs(y)) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.fixture(scope="module")
def per_token(smollm2_model):
    with Llama(smollm2_model, n_ctx=512, embeddings=True, pooling="none", n_threads=2) as llm:
        yield llm


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooled_vectors_are_the_pool_of_the_per_token_vectors(smollm2_model, per_token, pooling):
    with Llama(smollm2_model, n_ctx=512, embeddings=True, pooling=pooling, n_threads=2) as llm:
        for text in TEXTS:
            rows = per_token.embed(text, normalize=False)
            want = [sum(c) / len(rows) for c in zip(*rows)] if pooling == "mean" else rows[-1]
            assert close(llm.embed(text, normalize=False), want)


def test_normalized_vectors_have_unit_length_and_a_batch_equals_single_calls(smollm2_model):
    with Llama(smollm2_model, n_ctx=512, embeddings=True, pooling="mean", n_threads=2) as llm:
        batch = llm.embed(TEXTS)
        assert [close(v, llm.embed(t)) for v, t in zip(batch, TEXTS)] == [True] * 3
        assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-6) for v in batch)
        assert len(batch[0]) == 576  # SmolLM2-135M's n_embd
        raw = llm.embed(TEXTS[0], normalize=False)
        assert not math.isclose(math.sqrt(sum(x * x for x in raw)), 1.0, rel_tol=1e-3)


def test_bad_embedding_requests_are_clear_errors(tiny_model):
    with Llama(tiny_model, n_ctx=64) as llm:
        with pytest.raises(ValueError, match="embeddings=True"):
            llm.embed("x")
    with pytest.raises(ValueError, match="pooling must be one of"):
        Llama(tiny_model, embeddings=True, pooling="max")
    with pytest.raises(ValueError, match="embeddings=True"):
        Llama(tiny_model, pooling="mean")
    with Llama(tiny_model, n_ctx=64, n_batch=32, embeddings=True, pooling="mean") as llm:
        with pytest.raises(ValueError, match="at most 32"):
            llm.embed("hello " * 100)
        with pytest.raises(TypeError):
            llm.embed([1, 2])
