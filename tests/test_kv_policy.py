"""KV policies (issue 12): K centering, Hadamard choice, per-layer cache types, calibration.

A policy file is written by `rq-run calibrate`, read by libllama, and found automatically
by `rq-run` and `Llama(kv_policy="auto")`.
"""

import numpy as np
import pytest

from conftest import run
from rotorquant import ContextError, KVPolicyError, Llama
from rotorquant.kvpolicy import locate
from rotorquant.kvpolicy.calibrate import calibrate, ladder
from rotorquant.kvpolicy.capture import capture
from rotorquant.kvpolicy.fakequant import hadamard, roundtrip
from rotorquant.kvpolicy.policy import KVPolicy, describe
from rotorquant.rotor import reference

N_LAYER, N_EMBD_K = 2, 64  # the tiny test llama: 2 layers, 1 KV head of 64


def centering_policy(scale=1.0, seed=0, **kw) -> KVPolicy:
    rng = np.random.default_rng(seed)
    return KVPolicy(n_layer=N_LAYER, k_center=[scale * rng.standard_normal(N_EMBD_K).astype(np.float32)
                                               for _ in range(N_LAYER)], **kw)


def last_logits(model, text, **kw) -> np.ndarray:
    with Llama(model, n_ctx=512, **kw) as llm:
        llm.eval(llm.tokenize(text))
        return np.array(llm.logits())


# --- the file --------------------------------------------------------------------------

def test_policy_file_round_trips_through_libllamas_reader(tmp_path):
    p = centering_policy(base_type_k="iso3", base_type_v="iso3", type_k=["q8_0", None], type_v=[None, "iso4"],
                         attn_rot_k=False, attn_rot_v=True)
    d = describe(p.write(tmp_path / "p.kvpolicy.gguf"))
    assert d == {"base_type_k": "iso3", "base_type_v": "iso3", "attn_rot_k": 0, "attn_rot_v": 1,
                 "type_k": ["q8_0", None], "type_v": [None, "iso4"], "k_center_sizes": [N_EMBD_K, N_EMBD_K]}


def test_files_that_are_not_policies_are_refused_with_the_reason(tmp_path, tiny_model):
    with pytest.raises(KVPolicyError, match="not a rotorquant KV policy"):
        describe(tiny_model)
    with pytest.raises(KVPolicyError, match="not found"):
        describe(tmp_path / "missing.gguf")
    good = centering_policy().write(tmp_path / "p.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(good[: len(good) // 2])
    with pytest.raises(KVPolicyError, match="not a readable GGUF"):
        describe(tmp_path / "cut.gguf")
    with pytest.raises(ValueError, match="unknown KV cache type"):
        KVPolicy(n_layer=1, type_k=["q3_k_xl"])


def test_writing_never_leaves_a_partial_file(tmp_path):
    bad = KVPolicy(n_layer=1, k_center=[np.array([np.nan] * 64, dtype=np.float32)])
    with pytest.raises(KVPolicyError, match="non-finite"):
        bad.write(tmp_path / "p.gguf")  # libllama's reader refuses it after writing ...
    # ... and what it refused stays on disk for inspection only under the name asked for
    assert [f.name for f in tmp_path.iterdir()] in ([], ["p.gguf"])
    assert not list(tmp_path.glob("*.part"))


def test_a_policy_for_another_model_is_a_clear_context_error(tmp_path, tiny_model):
    path = KVPolicy(n_layer=3).write(tmp_path / "p.gguf")
    with pytest.raises(ContextError, match="made for 3 layers, the model has 2"):
        Llama(tiny_model, n_ctx=64, cache_type_k="iso3", kv_policy=path)
    wrong = KVPolicy(n_layer=2, k_center=[np.zeros(96, np.float32), None]).write(tmp_path / "w.gguf")
    with pytest.raises(ContextError, match="k_center.0 has 96 values"):
        Llama(tiny_model, n_ctx=64, cache_type_k="iso3", kv_policy=wrong)


# --- what the engine does with it ---------------------------------------------------------

@pytest.mark.parametrize("rot", [False, True])
@pytest.mark.parametrize("cache, fa, tol", [("f32", "off", 1e-4), ("f16", "off", 1e-2), ("f16", "on", 1e-2)])
def test_k_centering_is_exact_for_attention(tmp_path, tiny_model, rot, cache, fa, tol):
    """Subtracting one vector from every key of a head changes no attention weight: the
    logits agree to the rounding of the cache type (and of flash attention's f16 sums)."""
    path = centering_policy(scale=2.0, attn_rot_k=rot).write(tmp_path / "p.gguf")
    kw = dict(cache_type_k=cache, cache_type_v=cache, flash_attn=fa)
    plain = last_logits(tiny_model, "the capital of France is Paris", kv_policy=None, **kw)
    centered = last_logits(tiny_model, "the capital of France is Paris", kv_policy=path, **kw)
    assert np.abs(centered - plain).max() <= tol * np.abs(plain).max()


def test_per_layer_types_apply_when_the_context_uses_the_base_types(tmp_path, tiny_model):
    path = KVPolicy(n_layer=2, base_type_k="iso3", base_type_v="iso3", type_k=["q8_0", None]).write(tmp_path / "p.gguf")

    def ratio(t):
        with Llama(tiny_model, n_ctx=256, cache_type_k=t, cache_type_v=t, kv_policy=path) as q, \
             Llama(tiny_model, n_ctx=256) as f16:
            return q.memory_bytes()["context"] / f16.memory_bytes()["context"]

    # layer 0's K in q8_0 (8.5 bits), the rest iso3 (3.25)
    assert ratio("iso3") == pytest.approx(((8.5 + 3.25) / 2 + 3.25) / 32, rel=0.02)
    assert ratio("iso4") == pytest.approx(4.25 / 16, rel=0.02)  # other base types: untouched


def test_a_saved_state_only_loads_under_the_same_policy(tmp_path, tiny_model):
    path = centering_policy(attn_rot_k=True).write(tmp_path / "p.gguf")
    kw = dict(n_ctx=128, cache_type_k="iso3", cache_type_v="iso3")
    with Llama(tiny_model, kv_policy=path, **kw) as a, Llama(tiny_model, kv_policy=path, **kw) as b, \
         Llama(tiny_model, kv_policy=None, **kw) as plain:
        a.eval(a.tokenize("the capital of France is"))
        state = a.save_state()
        a.eval([30])
        b.load_state(state)
        b.eval([30])
        assert b.logits() == a.logits()
        with pytest.raises(ValueError, match="different KV layout"):
            plain.load_state(state)


def test_context_shift_with_a_centered_rotor_cache(rq_run, tiny_model, tmp_path):
    path = centering_policy(attn_rot_k=False).write(tmp_path / "p.gguf")
    proc = run([rq_run, "completion", "-m", tiny_model, "-p", "hello", "-n", "100", "-c", "64", "--kv-policy", path,
                "--context-shift", "-no-cnv", "-ctk", "iso3", "-ctv", "iso3", "-t", "2", "--temp", "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]


# --- calibration ------------------------------------------------------------------------------

def test_calibration_measures_the_real_codecs():
    x = np.random.default_rng(1).standard_normal((4, 128)).astype(np.float32)
    ref = np.stack([reference.dequantize(reference.quantize(row, "iso3"), "iso3") for row in x])
    assert np.allclose(roundtrip(x, "iso3"), ref, rtol=0, atol=1e-6)  # same bytes; decoders may differ by an ulp
    assert np.abs(roundtrip(x, "q8_0") - x).max() < 0.02 * np.abs(x).max()
    h = hadamard(64)
    assert np.allclose(h @ h, np.eye(64), atol=1e-6)


def test_the_upgrade_ladder_goes_from_the_base_type_up_to_f16():
    assert ladder("iso3") == ["iso3", "iso4", "q5_0", "q8_0", "f16"]
    assert ladder("planar4") == ["planar4", "q5_0", "q8_0", "f16"]
    assert ladder("q8_0") == ["q8_0", "f16"]


def test_captured_keys_are_the_post_rope_keys_the_cache_stores(tiny_model):
    """Layer 0's key of a token depends on its position only through RoPE: same norm, new direction."""
    with Llama(tiny_model, vocab_only=True) as v:
        a, b = v.tokenize("ab", add_special=False)[:2]
    layers, n_layer = capture(tiny_model, [a, b, b, a, b, a])
    assert n_layer == 2 and [l.layer for l in layers] == [0, 1]
    k = layers[0].k  # [tokens, kv heads, head_dim]
    assert k.shape == (6, 1, 64) and layers[0].q.shape[0] == 6
    assert np.allclose(np.linalg.norm(k[0]), np.linalg.norm(k[3]), rtol=1e-4)
    assert not np.allclose(k[0], k[3], atol=1e-3)


def test_end_to_end_measure_of_a_configuration_against_itself_is_zero(tiny_model):
    from rotorquant.kvpolicy import measure
    with Llama(tiny_model, vocab_only=True) as v:
        tokens = v.tokenize("the quick brown fox jumps over the lazy dog " * 3)
    ref = measure.scored_logprobs(tiny_model, tokens, kv_policy=None)
    assert ref.shape[0] == len(tokens) - len(tokens) // 2  # the second half is scored
    assert np.allclose(np.exp(ref).sum(axis=1), 1)
    same = measure.compare(ref, ref, tokens)
    assert same.kl == pytest.approx(0, abs=1e-12) and same.ppl_ratio == pytest.approx(1)
    q = measure.compare(ref, measure.scored_logprobs(tiny_model, tokens, cache_type_k="iso3",
                                                     cache_type_v="iso3", kv_policy=None), tokens)
    assert q.kl > 0


def test_calibration_spends_no_more_than_the_budget(tiny_model):
    with Llama(tiny_model, vocab_only=True) as v:
        tokens = v.tokenize("the quick brown fox jumps over the lazy dog " * 12)
    layers, n_layer = capture(tiny_model, tokens)
    cal = calibrate(layers, n_layer, budget_bits=4.0)
    assert 3.25 <= cal.bits_per_element <= 4.0 and cal.error <= cal.error_base
    flat = calibrate(layers, n_layer, protect=False, centering=False, hadamard_k=False)
    assert flat.bits_per_element == 3.25 and not any(flat.policy.type_k) and not any(flat.policy.type_v)
    assert all(m is None for m in flat.policy.k_center) and flat.policy.attn_rot_k is False
    with pytest.raises(ValueError, match="below the base types"):
        calibrate(layers, n_layer, base_type_k="iso4", base_type_v="iso4", budget_bits=3.5)
    with pytest.raises(ValueError, match="quantized cache types"):
        calibrate(layers, n_layer, base_type_k="f16")


def test_calibrate_writes_a_policy_rq_run_and_llama_pick_up(rq_run, smollm2_model, tmp_path):
    model = tmp_path / "smol.gguf"
    model.symlink_to(smollm2_model)
    proc = run([rq_run, "calibrate", model, "-t", "2", "--tokens", "256"])  # 256 measured, 1,024 held out
    assert proc.returncode == 0, proc.stderr[-3000:]
    side = locate.sidecar_path(model)
    assert side.is_file() and f"wrote {side}" in proc.stdout and "bits per element : 3.5" in proc.stdout
    pol = describe(side)
    assert pol["base_type_k"] == "iso3" and pol["k_center_sizes"][0] > 0

    cmd = run([rq_run, "--print-command", "cli", "-m", model, "-ctk", "iso3", "-ctv", "iso3"]).stdout
    assert f"--kv-policy {side}" in cmd
    assert "--kv-policy" not in run([rq_run, "--print-command", "cli", "-m", model]).stdout  # f16: nothing to do
    assert "--kv-policy" not in run([rq_run, "--print-command", "cli", "-m", model, "-ctk", "iso3",
                                     "--kv-policy", "none"]).stdout
    with Llama(model, n_ctx=64, cache_type_k="iso3", cache_type_v="iso3") as llm:
        assert llm.kv_policy == side
    with Llama(model, n_ctx=64, cache_type_k="iso3", cache_type_v="iso3", kv_policy=None) as llm:
        assert llm.kv_policy is None

    # the point of it: iso3 with the policy is much closer to f16 than plain iso3
    from rotorquant.kvpolicy import measure
    text = ("The history of the printing press begins in the fifteenth century, when a goldsmith in Mainz "
            "combined movable metal type, an oil-based ink and a screw press adapted from wine making. Within "
            "fifty years presses were working in more than two hundred cities, and the price of books fell so "
            "far that a scholar could own dozens instead of a handful. Printers standardised spelling, page "
            "numbers and title pages; governments learned to license them, and reformers learned to use them. "
            "Historians still argue about how much the new machines caused, and how much they merely sped up "
            "changes that were already under way in trade, religion and learning across the continent.")
    with Llama(model, vocab_only=True) as v:
        tokens = v.tokenize(text)
    ref = measure.scored_logprobs(model, tokens, kv_policy=None)
    plain = measure.compare(ref, measure.scored_logprobs(model, tokens, cache_type_k="iso3", cache_type_v="iso3",
                                                         kv_policy=None), tokens)
    tuned = measure.compare(ref, measure.scored_logprobs(model, tokens, cache_type_k="iso3", cache_type_v="iso3",
                                                         kv_policy="auto"), tokens)
    assert tuned.kl < 0.7 * plain.kl


def test_calibrate_reports_bad_input_clearly(rq_run, tiny_model, tmp_path):
    proc = run([rq_run, "calibrate", tmp_path / "nope.gguf"])
    assert proc.returncode == 2 and "nope.gguf" in proc.stderr
    proc = run([rq_run, "calibrate", tiny_model, "-ctk", "iso4", "-ctv", "iso4", "--budget-bits", "3.5",
                "-o", tmp_path / "p.gguf"])
    assert proc.returncode == 2 and "below the base types" in proc.stderr
    assert not (tmp_path / "p.gguf").exists()
    proc = run([rq_run, "calibrate", tiny_model, "--text", tmp_path / "missing.txt"])
    assert proc.returncode == 2 and "missing.txt" in proc.stderr
    proc = run([rq_run, "cli", "-m", tiny_model, "--kv-policy", tmp_path / "missing.gguf"])
    assert proc.returncode == 2 and "KV policy file not found" in proc.stderr
