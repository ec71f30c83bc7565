"""rq-convert: HF checkpoint -> verified GGUF, atomic, with clear errors on bad input."""
import json
import os
import struct

import numpy as np
import pytest

from conftest import run

torch = pytest.importorskip("torch", reason="conversion needs torch (pip install 'rotorquant[convert]')")
transformers = pytest.importorskip("transformers")

from hf_checkpoints import smollm2_tokenizer, tiny_llama  # noqa: E402
from rotorquant import Llama  # noqa: E402

TEXT = "The capital of France is Paris. It is known for the Eiffel Tower and fine food."


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, smollm2_model):
    return smollm2_tokenizer(tmp_path_factory.mktemp("tok"), smollm2_model)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    return tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny-llama", tokenizer_dir)


def rq_convert(*args):
    return run(["rq-convert", *map(str, args)], timeout=900)


def test_converts_verifies_and_matches_transformers_logits(checkpoint, tmp_path):
    out = tmp_path / "tiny-f16.gguf"
    proc = rq_convert(checkpoint, "-o", out, "--outtype", "f16")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "verified" in proc.stdout and out.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rq-convert")]
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with Llama(out, n_ctx=256) as llm:
        ids = llm.tokenize(TEXT, add_special=False)
        llm.eval(ids)
        ours = np.array(llm.logits(), dtype=np.float64)
        meta = llm.metadata
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1].double().numpy()
    assert np.abs(ours - ref).max() < 0.05
    p, q = np.exp(ref - ref.max()), np.exp(ours - ours.max())
    p, q = p / p.sum(), q / q.sum()
    assert float(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30)))) < 1e-4
    assert meta["rotorquant.upstream_commit"] == "0c1e57098"
    assert meta["rotorquant.source"] == str(checkpoint)


def test_sharded_checkpoint_converts_the_same(tokenizer_dir, tmp_path):
    sharded = tiny_llama(tmp_path / "sharded", tokenizer_dir, shards=3)
    assert len(list(sharded.glob("*.safetensors"))) == 3
    proc = rq_convert(sharded, "-o", tmp_path / "s.gguf", "--outtype", "f32")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_quantize_in_one_command_and_keep_nothing_else(checkpoint, tmp_path):
    proc = rq_convert(checkpoint, "-o", tmp_path / "q.gguf", "--quant", "Q8_0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.gguf"]
    with Llama(tmp_path / "q.gguf", n_ctx=64) as llm:
        assert llm.generate("Hello", max_tokens=4, temperature=0) is not None


def test_dry_run_prints_the_plan_and_writes_nothing(checkpoint, tmp_path):
    proc = rq_convert(checkpoint, "-o", tmp_path / "x.gguf", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "LlamaForCausalLM" in proc.stdout and "peak RAM" in proc.stdout
    assert not list(tmp_path.iterdir())


def test_existing_output_needs_force(checkpoint, tmp_path):
    out = tmp_path / "exists.gguf"
    out.write_bytes(b"keep me")
    proc = rq_convert(checkpoint, "-o", out)
    assert proc.returncode == 1 and "--force" in proc.stderr
    assert out.read_bytes() == b"keep me"


# --- bad checkpoints: a clear error, nothing written --------------------------------------

def broken(checkpoint, tmp_path, mutate):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in checkpoint.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    mutate(bad)
    return bad


@pytest.mark.parametrize("mutate, message", [
    (lambda d: (d / "config.json").unlink(), "no config.json"),
    (lambda d: (d / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]})),
     "NoSuchModelForCausalLM is not supported"),
    (lambda d: [p.unlink() for p in d.glob("*.safetensors")] and (d / "pytorch_model.bin").write_bytes(b"x"),
     "never unpickles"),
    (lambda d: [p.write_bytes(p.read_bytes()[:-1000]) for p in d.glob("*.safetensors")], "truncated or corrupt"),
    (lambda d: [lie_about_offsets(p) for p in d.glob("*.safetensors")], "do not fit"),
])
def test_bad_checkpoints_fail_clearly_and_write_nothing(checkpoint, tmp_path, mutate, message):
    bad = broken(checkpoint, tmp_path, mutate)
    out = tmp_path / "out"
    proc = rq_convert(bad, "-o", out / "m.gguf")
    assert proc.returncode == 1
    assert message in proc.stderr
    assert not out.exists() or not list(out.iterdir())


def lie_about_offsets(path):
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    end = header[name]["data_offsets"][1]
    header[name]["data_offsets"][1] = end - 1 if end % 10 else end + 1  # same number of digits
    new = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    if len(new) != n:
        pytest.skip("header grew")
    data[8:8 + n] = new
    path.write_bytes(bytes(data))


def test_duplicate_tensor_names_across_shards(tokenizer_dir, tmp_path):
    ckpt = tiny_llama(tmp_path / "dup", tokenizer_dir, shards=2)
    a, b = sorted(ckpt.glob("*.safetensors"))
    from safetensors.numpy import load_file, save_file
    first = load_file(a)
    second = load_file(b)
    second.update({next(iter(first)): next(iter(first.values()))})
    save_file(second, b)
    proc = rq_convert(ckpt, "-o", tmp_path / "o.gguf")
    assert proc.returncode == 1 and "appears in both" in proc.stderr


def test_not_enough_disk_is_refused_before_writing(checkpoint, tmp_path, monkeypatch):
    from rotorquant.convert import pipeline
    plan = pipeline.make_plan(checkpoint, tmp_path / "d.gguf", "f16", None, None)
    plan.free_bytes = 1000
    with pytest.raises(pipeline.ConvertError, match="missing"):
        pipeline.convert(plan, source_id="x")
    assert not list(tmp_path.iterdir())


# --- the mission's architecture: a Qwen3.5-MoE-shaped checkpoint (hybrid attention, MoE, vision) --

@pytest.fixture(scope="module")
def qwen35_dir():
    import rq_assets
    return rq_assets.qwen35_tokenizer()


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory, qwen35_dir):
    from hf_checkpoints import tiny_qwen35
    return tiny_qwen35(tmp_path_factory.mktemp("q35") / "tiny-qwen35-moe", qwen35_dir)


def logits_vs_transformers(checkpoint, gguf_path, n_tokens=265, **llama_kw):
    import rq_assets
    from tokenizers import Tokenizer
    from transformers import AutoModelForImageTextToText

    text = rq_assets.sotu_text().read_text()[:2000]
    ids = Tokenizer.from_file(str(checkpoint / "tokenizer.json")).encode(text, add_special_tokens=False).ids[:n_tokens]
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0, -1].double().numpy()
    with Llama(gguf_path, n_ctx=512, **llama_kw) as llm:
        assert llm.tokenize(text, add_special=False)[:n_tokens] == ids  # same tokenizer
        llm.eval(ids)
        ours = np.array(llm.logits(), dtype=np.float64)
    p, q = np.exp(ref - ref.max()), np.exp(ours - ours.max())
    p, q = p / p.sum(), q / q.sum()
    return np.abs(ours - ref).max(), float(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30)))), ours, ref


def test_qwen35_moe_converts_with_its_vision_projector_and_matches_transformers(qwen35, tmp_path):
    out = tmp_path / "q35.gguf"
    proc = rq_convert(qwen35, "-o", out, "--outtype", "f16")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mmproj-q35.gguf", "q35.gguf"]
    max_diff, kl, _, _ = logits_vs_transformers(qwen35, out)
    assert max_diff < 0.05 and kl < 1e-4
    # and the converted model runs with a rotor cache on its full-attention layers
    _, _, ours, ref = logits_vs_transformers(qwen35, out, cache_type_k="iso4", cache_type_v="iso4")
    assert ours.argmax() == ref.argmax()


def test_sharded_qwen35_converts_to_the_same_tensors(qwen35_dir, tmp_path):
    from hf_checkpoints import tiny_qwen35
    sharded = tiny_qwen35(tmp_path / "sharded", qwen35_dir, shards=3)
    assert len(list(sharded.glob("*.safetensors"))) == 3
    proc = rq_convert(sharded, "-o", tmp_path / "out" / "s.gguf", "--outtype", "f32", "--no-mmproj")
    assert proc.returncode == 0, proc.stderr[-3000:]
    max_diff, kl, _, _ = logits_vs_transformers(sharded, tmp_path / "out" / "s.gguf")
    assert max_diff < 0.05 and kl < 1e-4


def test_dense_qwen35_control_converts_and_matches(qwen35_dir, tmp_path):
    from hf_checkpoints import tiny_qwen35
    dense = tiny_qwen35(tmp_path / "dense", qwen35_dir, moe=False)
    proc = rq_convert(dense, "-o", tmp_path / "out" / "d.gguf", "--outtype", "f16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "mmproj-d.gguf").is_file()
    max_diff, kl, _, _ = logits_vs_transformers(dense, tmp_path / "out" / "d.gguf")
    assert max_diff < 0.05 and kl < 1e-4


def test_a_real_trained_checkpoint_converts_back_to_the_same_perplexity(smollm2_model, tmp_path):
    """SmolLM2-135M: registry GGUF (Q4_1) -> HF checkpoint (f32) -> rq-convert -> perplexity."""
    import re

    import rq_assets
    ckpt = rq_assets.hf_checkpoint(smollm2_model)
    out = tmp_path / "smollm2-f16.gguf"
    proc = rq_convert(ckpt, "-o", out, "--outtype", "f16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = rq_assets.sotu_text()

    def ppl(model):
        p = run(["rq-run", "perplexity", "-m", model, "-f", text, "-c", "512", "--chunks", "4", "-t", "2"])
        assert p.returncode == 0, p.stderr[-2000:]
        return float(re.search(r"Final estimate: PPL = ([\d.]+)", p.stdout + p.stderr).group(1))

    assert ppl(out) == pytest.approx(ppl(smollm2_model), rel=0.02)


def test_qwen35_with_an_mtp_layer_converts_and_keeps_it(qwen35_dir, tmp_path):
    """Upstream maps mtp.* to an extra nextn block; the text path still matches transformers."""
    from hf_checkpoints import tiny_qwen35
    ckpt = tiny_qwen35(tmp_path / "mtp", qwen35_dir, mtp=True)
    out = tmp_path / "out" / "m.gguf"
    proc = rq_convert(ckpt, "-o", out, "--outtype", "f16", "--no-mmproj")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Llama(out, vocab_only=True) as v:
        meta = v.metadata
    arch = meta["general.architecture"]
    assert meta[f"{arch}.block_count"] == "5" and meta.get(f"{arch}.nextn_predict_layers") == "1"
    max_diff, kl, _, _ = logits_vs_transformers(ckpt, out)
    assert max_diff < 0.05 and kl < 1e-4


def test_verification_compares_logits_with_transformers(checkpoint, tmp_path):
    proc = rq_convert(checkpoint, "-o", tmp_path / "v.gguf", "--outtype", "f16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "next-token logits match transformers" in proc.stdout


def test_hub_ids_are_fetched_with_safe_patterns(monkeypatch, tmp_path):
    """No hub here: check what rq-convert asks huggingface_hub for."""
    import huggingface_hub
    from rotorquant.cli import convert as cli

    calls = {}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert cli.resolve_source("Qwen/Qwen3.5-397B-A17B", "main") == tmp_path
    assert calls["repo_id"] == "Qwen/Qwen3.5-397B-A17B" and calls["revision"] == "main"
    assert "*.safetensors" in calls["allow_patterns"]
    assert not any(p.endswith((".bin", ".pt", ".pth")) for p in calls["allow_patterns"])
    with pytest.raises(FileNotFoundError):
        cli.resolve_source("./no/such/folder", None)


def test_split_output_keeps_llama_cpp_split_names_and_loads(qwen35, tmp_path):
    out = tmp_path / "split.gguf"
    proc = rq_convert(qwen35, "-o", out, "--outtype", "f16", "--no-mmproj", "--split-max-size", "30M")
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = sorted(p.name for p in tmp_path.iterdir())
    assert len(parts) >= 2 and parts[0] == "split-00001-of-%05d.gguf" % len(parts)
    with Llama(tmp_path / parts[0], n_ctx=64) as llm:
        llm.eval([1, 2, 3])
        assert len(llm.logits()) == llm.n_vocab


@pytest.mark.parametrize("entry, message", [
    ({"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}, "unknown dtype"),
    ({"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]}, "not \\[begin, end\\]"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16, 32]}, "not \\[begin, end\\]"),
    ({"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}, "not a list of whole numbers"),
    ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, "not a list of whole numbers"),
    ({"dtype": "F32", "shape": [True], "data_offsets": [0, 16]}, "not a list of whole numbers"),
    ({"dtype": "F32", "shape": [2**62], "data_offsets": [0, 16]}, "do not fit"),
    (["F32"], "not an object"),
])
def test_a_lying_safetensors_entry_is_refused_by_name(tmp_path, entry, message):
    import json
    import struct

    from rotorquant.convert.checkpoint import CheckpointError, read_safetensors_header
    raw = json.dumps({"w": entry}).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)
    with pytest.raises(CheckpointError, match=message):
        read_safetensors_header(path)


@pytest.mark.parametrize("text, message", [
    ('{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 16]}}', "NaN is not JSON"),
    ('{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "w": {}}', "'w' appears twice"),
    ('{"deep": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
    ('{"__metadata__": {"a": 1}}', "__metadata__ must map names to strings"),
])
def test_a_safetensors_header_that_is_not_strict_json_is_refused(tmp_path, text, message):
    import struct

    from rotorquant.convert.checkpoint import CheckpointError, read_safetensors_header
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text.encode() + b"\0" * 16)
    with pytest.raises(CheckpointError, match=message):
        read_safetensors_header(path)
