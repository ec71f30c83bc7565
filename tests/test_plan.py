"""`rq-run plan` / rotorquant.plan: the memory a load needs per device, from llama.cpp's own
dry run of it (nothing allocated), split into weights, KV cache, recurrent state and
compute buffers.  A plan must be what the real load then allocates (issue 7: within 5 %)."""
import json
import sys
from pathlib import Path

import pytest

from conftest import run
from rotorquant import Llama
from rotorquant._native import BIN_DIR
from rotorquant.plan import plan

PARTS = ("model", "kv", "recurrent", "compute")


@pytest.fixture(scope="module")
def archs(tmp_path_factory):
    """Random-weight hybrid Qwen3.5 (KV cache in its full-attention layers, recurrent state
    in the others) and Gemma 3 (sliding-window layers), from the bundled llama-test-archs."""
    out = tmp_path_factory.mktemp("archs")
    proc = run([BIN_DIR / "llama-test-archs", "-a", "^(qwen35|gemma3)", "-o", out], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {p.stem: p for p in out.glob("*.gguf")}


@pytest.mark.parametrize("which, n_ctx, k, v", [
    ("smollm2", 2048, "iso3", "iso3"), ("smollm2", 4096, "q8_0", "f16"),
    ("qwen35-dense", 1024, "iso3", "iso3"), ("gemma3-dense", 1024, "planar4", "planar4")])
def test_a_plan_is_what_the_load_then_allocates(smollm2_model, archs, which, n_ctx, k, v):
    model = smollm2_model if which == "smollm2" else archs[which]
    settings = dict(n_ctx=n_ctx, cache_type_k=k, cache_type_v=v, n_batch=512, kv_policy=None)
    planned = plan(model, **settings)
    with Llama(model, n_threads=2, **settings) as llm:
        real = llm.memory_bytes(by_device=True)
    assert {d.name for d in planned.devices} == set(real)
    for d in planned.devices:
        for part in PARTS:
            assert abs(getattr(d, part) - real[d.name][part]) <= 0.05 * real[d.name][part], (d.name, part)
    cpu = planned.devices[-1]
    assert cpu.kv > 0 and (cpu.recurrent > 0) == (which == "qwen35-dense")
    assert planned.fits and cpu.needed < cpu.free


def test_a_3_bit_rotor_cache_plans_a_fifth_of_the_f16_cache(smollm2_model):
    f16, iso3 = (plan(smollm2_model, n_ctx=8192, cache_type_k=t, cache_type_v=t).devices[-1] for t in ("f16", "iso3"))
    assert iso3.kv / f16.kv == pytest.approx(3.25 / 16, rel=0.01)
    assert iso3.model == f16.model


def test_rq_run_plan_prints_a_table_per_cache_type_and_says_whether_it_fits(rq_run, smollm2_model):
    proc = run([rq_run, "plan", smollm2_model, "-c", "4096", "-ctk", "f16,iso3"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("| device |") == 2 and "K iso3, V iso3" in proc.stdout
    proc = run([rq_run, "plan", smollm2_model, "-c", "4096", "-ctk", "iso3", "--json"])
    (p,) = json.loads(proc.stdout)
    assert p["fits"] and p["devices"][-1]["name"] == "CPU" and p["devices"][-1]["kv"] > 0
    too_big = run([rq_run, "plan", smollm2_model, "-c", "100000000", "-ctk", "f16"])
    assert too_big.returncode == 1 and "**no**" in too_big.stdout


@pytest.mark.parametrize("args, match", [
    (["/nonexistent.gguf"], "nonexistent"), (["MODEL", "-ctk", "iso5"], "iso5"),
    (["MODEL", "-ctk", "f16,iso3", "-ctv", "f16"], "different numbers"), (["MODEL", "-c", "0"], "n_ctx")])
def test_bad_plan_requests_are_named(rq_run, smollm2_model, args, match):
    proc = run([rq_run, "plan", *[smollm2_model if a == "MODEL" else a for a in args]])
    assert proc.returncode == 2 and match in proc.stderr, proc.stderr


def test_a_shape_only_model_plans_as_its_shape_says(tmp_path):
    """tools/device/gen_synth_gguf.py --shape-only writes the header of a model and leaves its
    data a hole (llama.cpp's dry run reads nothing else): Qwen3.5-397B's structure cut to 8
    layers and 8 experts has KV cache in its 2 full-attention layers, recurrent state in the
    6 others, and weights the size of the file's data."""
    out = tmp_path / "qwen35-397b-cut.gguf"
    tool = Path(__file__).resolve().parent.parent / "tools/device/gen_synth_gguf.py"
    proc = run([sys.executable, tool, "qwen35-397b", out, "--shape-only", "--type", "q4_k",
                "--n-layer", "8", "--n-expert", "8"])
    assert proc.returncode == 0, proc.stderr
    cpu = plan(out, n_ctx=4096, cache_type_k="f16", cache_type_v="f16", kv_policy=None).devices[-1]
    assert cpu.kv == 2 * 4096 * (2 * 256 + 2 * 256) * 2  # layers x positions x (K + V of 2 heads of 256) x f16
    assert cpu.recurrent > 0
    assert 0.95 * out.stat().st_size < cpu.model <= out.stat().st_size
