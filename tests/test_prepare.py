"""prepare.py: fetch, verify, unpack, patch, stamp — exercised on a fake sdist."""
import hashlib
import importlib.util
import io
import json
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def prepare(tmp_path, monkeypatch):
    """prepare.py loaded as a module, pointed at a fake pin and patch folder."""
    spec = importlib.util.spec_from_file_location(
        "rq_prepare", REPO / "vendor/llama-cpp-turboquant/prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    patches = tmp_path / "patches"
    patches.mkdir()
    monkeypatch.setattr(mod, "PATCH_DIR", patches)
    monkeypatch.setenv("RQ_CACHE_DIR", str(tmp_path / "cache"))
    return mod


def make_sdist(path: Path, files: dict) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def use_pin(mod, monkeypatch, tmp_path, sdist: Path, sha: str):
    pin = tmp_path / "UPSTREAM.toml"
    pin.write_text(f'[sdist]\npackage = "p"\nversion = "1"\nfilename = "{sdist.name}"\n'
                   f'sha256 = "{sha}"\nsubdir = "p-1/vendor/llama.cpp"\nexclude = ["docs"]\n'
                   '[llama_cpp]\ncommit = "abc1234"\n')
    monkeypatch.setattr(mod, "PIN_FILE", pin)
    monkeypatch.setenv("RQ_UPSTREAM_SDIST", str(sdist))


FILES = {
    "p-1/vendor/llama.cpp/src/a.c": b"int a = 1;\n",
    "p-1/vendor/llama.cpp/docs/big.md": b"docs\n",
    "p-1/vendor/llama.cpp/.git": b"gitdir: ../../.git/modules/x\n",
    "p-1/setup.py": b"outside the subdir\n",
}
GOOD_PATCH = "--- a/src/a.c\n+++ b/src/a.c\n@@ -1 +1 @@\n-int a = 1;\n+int a = 2;\n"


def test_unpacks_only_the_subdir_applies_patches_and_stamps(prepare, monkeypatch, tmp_path):
    sdist = tmp_path / "p-1.tar.gz"
    use_pin(prepare, monkeypatch, tmp_path, sdist, make_sdist(sdist, FILES))
    (prepare.PATCH_DIR / "0001-two.patch").write_text(GOOD_PATCH)
    tree = prepare.materialise(tmp_path / "tree")
    assert (tree / "src/a.c").read_text() == "int a = 2;\n"
    assert not (tree / "docs").exists() and not (tree / ".git").exists()
    assert not (tree / "setup.py").exists()
    stamp = json.loads((tree / ".rotorquant-stamp.json").read_text())
    assert stamp["upstream_commit"] == "abc1234"
    assert [p["name"] for p in stamp["patches"]] == ["0001-two.patch"]


def test_a_tree_with_a_matching_stamp_is_reused_without_the_sdist(prepare, monkeypatch, tmp_path):
    sdist = tmp_path / "p-1.tar.gz"
    use_pin(prepare, monkeypatch, tmp_path, sdist, make_sdist(sdist, FILES))
    tree = prepare.materialise(tmp_path / "tree")
    sdist.unlink()
    assert prepare.materialise(tree) == tree  # no download, no error


def test_a_changed_patch_redoes_the_tree(prepare, monkeypatch, tmp_path):
    sdist = tmp_path / "p-1.tar.gz"
    use_pin(prepare, monkeypatch, tmp_path, sdist, make_sdist(sdist, FILES))
    tree = prepare.materialise(tmp_path / "tree")
    (prepare.PATCH_DIR / "0001-two.patch").write_text(GOOD_PATCH)
    prepare.materialise(tree)
    assert (tree / "src/a.c").read_text() == "int a = 2;\n"


def test_wrong_hash_names_both_hashes(prepare, monkeypatch, tmp_path):
    sdist = tmp_path / "p-1.tar.gz"
    make_sdist(sdist, FILES)
    use_pin(prepare, monkeypatch, tmp_path, sdist, "0" * 64)
    with pytest.raises(prepare.PrepareError, match="pins 0000"):
        prepare.materialise(tmp_path / "tree")
    assert not (tmp_path / "tree").exists()


def test_a_failing_patch_names_the_patch_and_file_and_leaves_no_tree(prepare, monkeypatch, tmp_path):
    sdist = tmp_path / "p-1.tar.gz"
    use_pin(prepare, monkeypatch, tmp_path, sdist, make_sdist(sdist, FILES))
    (prepare.PATCH_DIR / "0001-bad.patch").write_text(GOOD_PATCH.replace("int a = 1", "int b = 9"))
    with pytest.raises(prepare.PrepareError, match=r"0001-bad\.patch does not apply to src/a\.c"):
        prepare.materialise(tmp_path / "tree")
    assert not (tmp_path / "tree").exists()
    assert not list(tmp_path.glob(".tree.tmp-*"))


def test_paths_escaping_the_tree_are_refused(prepare, monkeypatch, tmp_path):
    sdist = tmp_path / "p-1.tar.gz"
    evil = dict(FILES)
    evil["p-1/vendor/llama.cpp/../../../escape.txt"] = b"x"
    use_pin(prepare, monkeypatch, tmp_path, sdist, make_sdist(sdist, evil))
    with pytest.raises(prepare.PrepareError, match="unsafe path"):
        prepare.materialise(tmp_path / "tree")


def test_a_missing_supplied_sdist_is_a_clear_error(prepare, monkeypatch, tmp_path):
    use_pin(prepare, monkeypatch, tmp_path, tmp_path / "nope.tar.gz", "0" * 64)
    with pytest.raises(prepare.PrepareError, match="RQ_UPSTREAM_SDIST=.*is not a file"):
        prepare.materialise(tmp_path / "tree")


def test_redoing_the_tree_keeps_timestamps_of_unchanged_files(prepare, monkeypatch, tmp_path):
    """So the build recompiles only what a changed patch really changed."""
    import os
    files = dict(FILES, **{"p-1/vendor/llama.cpp/src/b.c": b"int b = 1;\n"})
    sdist = tmp_path / "p-1.tar.gz"
    use_pin(prepare, monkeypatch, tmp_path, sdist, make_sdist(sdist, files))
    (prepare.PATCH_DIR / "0001-two.patch").write_text(GOOD_PATCH)
    tree = prepare.materialise(tmp_path / "tree")
    os.utime(tree / "src/b.c", ns=(1, 1_000_000_000))
    os.utime(tree / "src/a.c", ns=(1, 1_000_000_000))
    (prepare.PATCH_DIR / "0002-b.patch").write_text(GOOD_PATCH.replace("a.c", "b.c").replace("a =", "b ="))
    prepare.materialise(tree)
    assert (tree / "src/b.c").read_text() == "int b = 2;\n"
    assert (tree / "src/b.c").stat().st_mtime_ns != 1_000_000_000  # changed: new time
    assert (tree / "src/a.c").stat().st_mtime_ns == 1_000_000_000  # same bytes: old time
