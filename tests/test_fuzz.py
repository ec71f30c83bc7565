"""Seeded mutation corpora of what users feed us, run in worker processes: every mutant is
accepted or refused with a message; none crashes, hangs or ends in a traceback.
`tools/fuzz.py` runs larger corpora (GGUF: 40,000 mutants, seeds 1-4, 0 failures)."""

import pytest

import fuzz


def test_2100_gguf_mutants_load_or_are_refused_and_none_kills_the_process(tiny_model, tmp_path):
    failures = []
    outcomes = fuzz.run_gguf(tiny_model, 2100, seed=7, workers=2, keep=tmp_path / "findings", log=failures.append)
    assert not failures, failures[:10]
    assert outcomes["refused"] > 1500 and outcomes["ok"] > 100  # the corpus exercises both ways


def test_600_safetensors_mutants_are_planned_or_refused_by_rq_convert(tmp_path):
    pytest.importorskip("transformers")
    ckpt = fuzz.tiny_checkpoint(tmp_path / "tiny-llama")
    failures = []
    outcomes = fuzz.run_safetensors(ckpt, 600, seed=7, workers=2, keep=tmp_path / "findings", log=failures.append)
    assert not failures, failures[:10]
    assert outcomes["refused"] > 400 and outcomes["ok"] > 5
