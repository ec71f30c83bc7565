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


@pytest.mark.parametrize("name", ["qwen35-dense"])
def test_prompt_reuse_on_a_hybrid_model_starts_over_and_stays_correct(arch_models, name):
    """The recurrent state cannot drop a tail, so a longer prompt is evaluated whole, and
    the output equals a fresh context's."""
    kw = dict(n_ctx=256, cache_type_k="iso3", cache_type_v="iso3", kv_policy=None)
    with Llama(arch_models[name], **kw) as llm:
        llm.generate("hello world", max_tokens=4, temperature=0)
        got = llm.generate("hello world and more", max_tokens=4, temperature=0)
        assert llm.perf()["prompt_reused_tokens"] == 0
    with Llama(arch_models[name], **kw) as fresh:
        assert got == fresh.generate("hello world and more", max_tokens=4, temperature=0)
