"""The repository carries our code only: upstream arrives at build time."""
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_MARKERS = ("ggml/src/ggml.c", "src/llama-model.cpp", "convert_hf_to_gguf.py",
                    "include/llama.h", "ggml/include/ggml.h", "gguf-py/gguf/constants.py")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return out.stdout.splitlines()


def test_no_upstream_file_is_tracked():
    files = tracked_files()
    assert not [f for f in files if f.startswith("vendor/llama-cpp-turboquant/llama.cpp/")]
    assert not [f for f in files if f.endswith(UPSTREAM_MARKERS)]


def test_patches_are_an_ordered_series_of_unified_diffs():
    patches = sorted((REPO / "vendor/llama-cpp-turboquant/patches").glob("*.patch"))
    assert patches, "the series has at least the marker patch"
    for i, patch in enumerate(patches, start=1):
        assert patch.name.startswith(f"{i:04d}-"), patch.name
        text = patch.read_text()
        assert text.startswith("--- a/") and "\n+++ b/" in text, patch.name
