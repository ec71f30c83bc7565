"""Saved states restore exactly: whole context or one sequence, in memory or in a file,
with rotor cache types too; a bad file is a clear error and a failed write leaves none."""
import pytest

from rotorquant import Llama

PROMPT = "The history of the river valley begins with"
MORE = " the first farmers who"


@pytest.fixture(scope="module", params=[("f16", "f16"), ("iso3", "iso3"), ("planar4", "iso4")])
def llm(smollm2_model, request):
    k, v = request.param
    with Llama(smollm2_model, n_ctx=256, cache_type_k=k, cache_type_v=v, kv_policy=None,
               flash_attn="on", n_threads=2) as model:
        yield model


def logits_after(llm, tokens):
    llm.eval(tokens)
    return list(llm.logits())


@pytest.mark.parametrize("where", ["bytes", "file"])
@pytest.mark.parametrize("seq_id", [None, 0])
def test_a_restored_state_gives_the_same_logits(llm, tmp_path, where, seq_id):
    prompt, more = llm.tokenize(PROMPT), llm.tokenize(MORE, add_special=False)
    llm.reset()
    llm.eval(prompt)
    path = tmp_path / "state.bin"
    saved = llm.save_state(path, seq_id=seq_id) if where == "file" else llm.save_state(seq_id=seq_id)
    want = logits_after(llm, more)
    llm.reset()
    llm.load_state(path if where == "file" else saved, seq_id=seq_id)
    assert logits_after(llm, more) == want


def test_a_file_that_is_not_a_state_is_refused(llm, tmp_path):
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"GGUF not a state")
    with pytest.raises(ValueError, match="not a rotorquant state file"):
        llm.load_state(bad)
    with pytest.raises(ValueError, match="seq_id"):
        llm.save_state(seq_id=5)
    with pytest.raises(TypeError):
        llm.load_state(12)


def test_a_failed_write_leaves_no_file(llm, tmp_path):
    target = tmp_path / "missing-dir" / "state.bin"
    with pytest.raises(OSError):
        llm.save_state(target)
    assert not target.exists() and not list(tmp_path.rglob("*.tmp"))
