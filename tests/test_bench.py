"""rq-bench: every K/V pair measured for memory, speed, quality and retrieval; files a
user can keep; a rerun that only measures what is missing."""
import json
import sys

import pytest

from conftest import run
from rotorquant.bench import Settings, parse_pairs
from rotorquant.bench import runner

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = ["--ctx", "512", "--depths", "0,256", "-p", "32", "-n", "8", "-r", "1", "--ppl-ctx", "128",
         "--chunks", "2", "--niah-lengths", "256", "--niah-trials", "2", "-t", "2"]


def small_settings(model, out, **kw):
    args = dict(model=model, pairs=parse_pairs("f16,iso3,planar4/q8_0"), ctx=512, depths=(0, 256), n_prompt=32,
                n_gen=8, reps=1, ppl_ctx=128, chunks=2, niah_lengths=(256,), niah_trials=2, threads=2, out=out)
    args.update(kw)
    return Settings(**args)


def test_a_name_is_the_same_type_for_k_and_v_and_k_slash_v_names_both():
    pairs = parse_pairs("f16, iso3,iso3/q8_0,iso3")
    assert [(p.k.name, p.v.name) for p in pairs] == [("f16", "f16"), ("iso3", "iso3"), ("iso3", "q8_0")]
    assert [p.label for p in pairs] == ["f16", "iso3", "iso3/q8_0"]
    assert pairs[2].bits_per_element == (pairs[1].k.bits_per_element + 8.5) / 2
    with pytest.raises(ValueError, match="valid types"):
        parse_pairs("iso3,iso5")
    with pytest.raises(ValueError, match="K/V"):
        parse_pairs("iso3/q8_0/f16")


@pytest.fixture(scope="module")
def bench_run(tiny_model, tmp_path_factory, rq_run):
    out = tmp_path_factory.mktemp("bench") / "out"
    exe = rq_run.replace("rq-run", "rq-bench")
    proc = run([exe, tiny_model, "--cache-types", "iso3,planar4/q8_0", "-o", out, *SMALL])
    return proc, out


def test_rq_bench_measures_every_pair_and_writes_table_json_and_plots(bench_run):
    proc, out = bench_run
    assert proc.returncode == 0, proc.stderr
    assert "| iso3 |" in proc.stdout and "| planar4/q8_0 |" in proc.stdout
    assert (out / "results.md").read_text() == proc.stdout
    doc = json.loads((out / "results.json").read_text())
    rows = {r["pair"]: r for r in doc["rows"]}
    assert list(rows) == ["f16", "iso3", "planar4/q8_0"]  # f16 is added: quality is measured against it
    f16, iso3, mixed = rows["f16"], rows["iso3"], rows["planar4/q8_0"]
    # KV bytes follow the bits per element (same context, same layers)
    assert iso3["kv_bytes"] / f16["kv_bytes"] == pytest.approx(iso3["bits_per_element"] / 16, rel=0.02)
    assert mixed["kv_bytes"] / f16["kv_bytes"] == pytest.approx(mixed["bits_per_element"] / 16, rel=0.02)
    assert f16["kld"] == 0 and f16["ppl_ratio"] == 1 and f16["same_top_p"] == 100
    for r in rows.values():
        assert r["ppl"] > 1 and r["kld"] >= 0 and 0 <= r["same_top_p"] <= 100
        assert set(r["speed"]) == {"0", "256"}
        assert all(c["pp"] > 0 and c["tg"] > 0 for c in r["speed"].values())
        assert r["niah"]["256"]["trials"] == 2 and 0 <= r["niah"]["256"]["hits"] <= 2
    for name in ("quality.png", "decode.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR"
        import matplotlib.image
        assert matplotlib.image.imread(out / name).shape[2] in (3, 4)  # a picture, decodable


def test_a_rerun_keeps_every_finished_cell(bench_run, tiny_model):
    _, out = bench_run
    before = json.loads((out / "results.json").read_text())["cells"]
    outcome = runner.run(small_settings(tiny_model, out), progress_stream=sys.stderr)
    assert outcome.measured == 0 and outcome.kept == len(before) and not outcome.failures


def test_a_changed_setting_measures_only_the_cells_it_affects(bench_run, tiny_model, tmp_path):
    _, out = bench_run
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    outcome = runner.run(small_settings(tiny_model, copy, depths=(0, 256, 128)), progress_stream=sys.stderr)
    assert outcome.measured == 3  # one speed cell per pair, at the new depth
    assert all(r["speed"][128] for r in outcome.rows)


def test_a_failed_cell_is_reported_kept_out_of_the_results_and_measured_by_the_rerun(tiny_model, tmp_path, monkeypatch):
    real = runner.binaries.speed

    def failing(s, pair, depth, policy):
        if pair.label == "iso3" and depth == 256:
            raise runner.binaries.ToolFailed("llama-bench exited with status 1:\nout of memory")
        return real(s, pair, depth, policy)

    monkeypatch.setattr(runner.binaries, "speed", failing)
    s = small_settings(tiny_model, tmp_path, measures=("speed",), plots=False)
    outcome = runner.run(s, progress_stream=sys.stderr)
    assert outcome.failures == [("speed iso3 @ depth 256", "llama-bench exited with status 1:\nout of memory")]
    row = next(r for r in outcome.rows if r["pair"] == "iso3")
    assert row["speed"][256] is None and row["speed"][0]["tg"] > 0
    monkeypatch.setattr(runner.binaries, "speed", real)
    again = runner.run(s, progress_stream=sys.stderr)
    assert again.measured == 1 and not again.failures


def test_an_interrupted_run_keeps_what_it_finished_in_a_whole_file(tiny_model, tmp_path, monkeypatch):
    calls = []

    def interrupted(*args, **kw):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"pp": 1.0, "pp_sd": 0.0, "tg": 1.0, "tg_sd": 0.0}

    monkeypatch.setattr(runner.binaries, "speed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run(small_settings(tiny_model, tmp_path, measures=("speed",)), progress_stream=sys.stderr)
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert len(cells) == 1
    assert not list(tmp_path.glob(".*.part"))
    assert not (tmp_path / "builtin-sample.txt").exists()  # speed alone reads no text


def test_results_of_another_model_under_the_same_folder_are_not_reused(bench_run, tiny_model, tmp_path):
    _, out = bench_run
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    other = tmp_path / "other.gguf"
    other.write_bytes(tiny_model.read_bytes())
    outcome = runner.run(small_settings(other, copy, measures=("kv",), plots=False), progress_stream=sys.stderr)
    assert outcome.measured == 3 and outcome.kept == 0


@pytest.mark.parametrize("args, message", [
    (["--cache-types", "iso3,iso5"], "unknown KV cache type 'iso5'"),
    (["--ppl-ctx", "32768"], "needs at least 65536"),
    (["--only", "speed,colour"], "choose from kv,speed,quality,niah"),
    (["--kv-policy", "/nonexistent.kvpolicy.gguf"], "KV policy file not found"),
    (["--ctx", "100"], "ctx must be an integer from 256"),
    (["--ctx", str(2**40)], "ctx must be an integer from 256 to 2147483647"),
    (["--ngl", str(-2**40)], "n_gpu_layers must be an integer from -1"),
    (["--depths", ","], "give at least one depth"),
    (["--niah-lengths", ","], "give at least one haystack length"),
    (["--cache-types", "f16,q8_0", "--kv-policy", __file__], "applies to pairs with a rotor type"),
])
def test_bad_arguments_are_named_and_nothing_runs(tiny_model, tmp_path, rq_run, args, message):
    exe = rq_run.replace("rq-run", "rq-bench")
    proc = run([exe, tiny_model, "-o", tmp_path / "out", "--no-plots", *args])
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_missing_model_is_an_error_not_a_traceback(tmp_path, rq_run):
    proc = run([rq_run.replace("rq-run", "rq-bench"), tmp_path / "absent.gguf"])
    assert proc.returncode == 2 and "model file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_an_output_path_that_is_a_file_is_an_error_not_a_traceback(tiny_model, tmp_path, rq_run):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    proc = run([rq_run.replace("rq-run", "rq-bench"), tiny_model, "-o", taken, "--no-plots"])
    assert proc.returncode == 2 and f"output folder {taken} is a file" in proc.stderr, proc.stderr
    assert taken.read_text() == "mine"


def test_needle_prompts_of_a_length_do_not_depend_on_the_other_lengths(tiny_model, tmp_path):
    text = " ".join(f"word{i} is here." for i in range(400))
    count = lambda t: t.split()  # one token per word is enough to place the needle
    alone = runner.niah.trials(small_settings(tiny_model, tmp_path, niah_lengths=(512,)), text, count)
    among = runner.niah.trials(small_settings(tiny_model, tmp_path, niah_lengths=(256, 512)), text, count)
    assert alone == [t for t in among if t.length == 512]
    assert len({t.passphrase for t in among}) > 1


def test_scores_against_a_failed_f16_reference_are_skipped_not_measured(tiny_model, tmp_path, monkeypatch):
    real, ran = runner.binaries.perplexity, []

    def f16_fails(s, pair, *args):
        ran.append(pair.label)
        if pair.is_f16:
            raise runner.binaries.ToolFailed("llama-perplexity exited with status 1")
        return real(s, pair, *args)

    monkeypatch.setattr(runner.binaries, "perplexity", f16_fails)
    outcome = runner.run(small_settings(tiny_model, tmp_path, measures=("quality",), plots=False),
                         progress_stream=sys.stderr)
    assert ran == ["f16"]
    assert [label for label, _ in outcome.failures] == ["perplexity f16", "perplexity iso3", "perplexity planar4/q8_0"]
    assert "f16 reference" in outcome.failures[1][1]
    assert not list(tmp_path.glob("*.kld")) and not list(tmp_path.glob(".*.part"))


def test_the_summary_survives_the_saves_of_a_later_run(bench_run, tiny_model, tmp_path, monkeypatch):
    _, out = bench_run
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    seen = []

    def speed(*args):
        seen.append(json.loads((copy / "results.json").read_text()))
        return {"pp": 1.0, "pp_sd": 0.0, "tg": 1.0, "tg_sd": 0.0}

    monkeypatch.setattr(runner.binaries, "speed", speed)
    runner.run(small_settings(tiny_model, copy, depths=(0, 256, 128), plots=False), progress_stream=sys.stderr)
    assert len(seen) == 3 and all("rows" in doc for doc in seen)


def test_under_a_policy_each_layer_is_checked_to_hold_the_types_the_policy_names(tiny_model, tmp_path):
    from rotorquant.kvpolicy import KVPolicy

    policy = KVPolicy(n_layer=2, base_type_k="iso3", base_type_v="iso3", type_k=[None, "q8_0"]).write(
        tmp_path / "p.kvpolicy.gguf")
    s = small_settings(tiny_model, tmp_path / "out", pairs=parse_pairs("iso3"), measures=("quality",),
                       kv_policy=str(policy), plots=False)
    outcome = runner.run(s, progress_stream=sys.stderr)
    assert not outcome.failures, outcome.failures
    iso3 = parse_pairs("iso3")[0]
    good = "llama_kv_cache: layer   1: K q8_0, V iso3 (KV policy)\n"
    runner.binaries._check_policy_layers(good, policy, iso3)
    with pytest.raises(runner.binaries.ToolFailed, match="layer 1 was allocated as K iso4"):
        runner.binaries._check_policy_layers(good.replace("q8_0", "iso4"), policy, iso3)
    with pytest.raises(runner.binaries.ToolFailed, match="logged no layer"):
        runner.binaries._check_policy_layers("", policy, iso3)
    # another base type: the policy does not apply, and no layer may say it did
    runner.binaries._check_policy_layers("", policy, parse_pairs("planar3")[0])
