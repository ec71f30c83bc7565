"""End to end on a real model: Gemma-3-270M (head_dim 256, iSWA cache)."""
import pytest

from conftest import run
from rotorquant import Llama

PROMPT = "The capital of France is"


@pytest.mark.gemma
def test_python_greedy_output_equals_the_bundled_tool(gemma_model, rq_run):
    """Same prompt, same cache types, greedy: the same 16 tokens as llama-completion."""
    proc = run([rq_run, "completion", "-m", gemma_model, "-p", PROMPT, "-n", "16", "--temp", "0",
                "-no-cnv", "--no-display-prompt", "-ctk", "q8_0", "-ctv", "q8_0", "-c", "512",
                "-t", "2", "--no-warmup"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Llama(gemma_model, n_ctx=512, cache_type_k="q8_0", cache_type_v="q8_0", n_threads=2) as llm:
        ours = llm.generate(PROMPT, max_tokens=16, temperature=0)
    assert ours and proc.stdout.rstrip("\n") == ours


@pytest.mark.gemma
def test_rq_run_cli_single_turn_with_q8_0_cache(gemma_model, rq_run):
    proc = run([rq_run, "cli", "-m", gemma_model, "-st", "-p", PROMPT, "-n", "16",
                "-ctk", "q8_0", "-ctv", "q8_0", "-c", "512", "-t", "2"], stdin=None)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()


@pytest.mark.gemma
def test_demo_reports_speed_and_kv_bytes(gemma_model, rq_run):
    proc = run([rq_run, "demo", "-n", "8"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tok/s" in proc.stdout
    assert "with iso4/iso4 vs" in proc.stdout
