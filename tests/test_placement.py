"""Placement settings reach llama.cpp's loader; wrong ones are refused before any C call."""
import logging

import pytest

from rotorquant import Llama
from rotorquant.placement import Placement, device_names, moe_patterns

GREEDY = dict(temperature=0)


@pytest.fixture(scope="module")
def reference(tiny_model):
    with Llama(tiny_model, n_ctx=128) as llm:
        return llm.generate("the capital of", max_tokens=10, **GREEDY)


@pytest.mark.parametrize("kw", [
    dict(override_tensor={r"ffn_.*": "CPU", r"attn_q": "CPU"}), dict(n_cpu_moe=4), dict(use_mmap=False),
    dict(use_mmap=True), dict(split_mode="none", main_gpu=0), dict(tensor_split=[1.0]),
])
def test_placement_settings_load_the_same_model(tiny_model, reference, kw):
    with Llama(tiny_model, n_ctx=128, **kw) as llm:
        assert llm.generate("the capital of", max_tokens=10, **GREEDY) == reference


@pytest.mark.parametrize("kw, match", [
    (dict(split_mode="rows"), "split_mode"), (dict(main_gpu=-1), "main_gpu"), (dict(n_cpu_moe=-2), "n_cpu_moe"),
    (dict(tensor_split=[0, 0]), "tensor_split"), (dict(tensor_split=[-1.0]), "tensor_split"),
    (dict(override_tensor={"exps": "GPU7"}), "no device 'GPU7'"),
    (dict(override_tensor={"(": "CPU"}), "not a regular expression"), (dict(use_mmap="yes"), "use_mmap"),
    (dict(n_gpu_layers="all"), "n_gpu_layers"), (dict(fit=1), "fit"), (dict(fit_target_mib=-1), "fit_target_mib"),
])
def test_bad_placement_is_refused_with_the_setting_named(tiny_model, kw, match):
    with pytest.raises(ValueError, match=match):
        Llama(tiny_model, **kw)


def test_n_cpu_moe_names_the_expert_tensors_of_the_first_layers():
    pats = moe_patterns(2)
    assert list(pats) == [r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps", r"blk\.1\.ffn_(up|down|gate|gate_up)_(ch|)exps"]
    assert set(pats.values()) == {"CPU"}
    assert "CPU" in device_names()
    Placement(n_cpu_moe=3, override_tensor={"output": "CPU"})  # combined: no error


def test_override_tensor_moves_the_matching_tensors(tiny_model, caplog):
    with caplog.at_level(logging.DEBUG, logger="rotorquant.llama"):
        with Llama(tiny_model, n_ctx=64, override_tensor={r"blk\.1\.ffn_up": "CPU"}):
            pass
    moved = [r.getMessage() for r in caplog.records if "buffer type overridden" in r.getMessage()]
    assert moved and all("blk.1.ffn_up" in m for m in moved)


@pytest.mark.parametrize("kw", [dict(n_gpu_layers="auto"), dict(fit=True, n_cpu_moe=1), dict(fit=True, n_ctx=0)])
def test_fitting_to_device_memory_runs_upstreams_fit_and_changes_nothing_on_a_cpu(tiny_model, reference, kw):
    """Without a GPU everything already fits: the fit reports so, the model is the same."""
    with Llama(tiny_model, **dict(dict(n_ctx=128), **kw)) as llm:
        assert llm.fit_status == "fits"
        assert llm.generate("the capital of", max_tokens=10, **GREEDY) == reference
    with Llama(tiny_model, n_ctx=128) as plain:
        assert plain.fit_status is None and plain.n_gpu_layers == 0
