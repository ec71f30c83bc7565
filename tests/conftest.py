import shutil
import sys
import subprocess
from pathlib import Path

import pytest

from tiny_gguf import write_tiny_llama

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import rq_assets  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random llama GGUF with a byte-fallback SentencePiece vocabulary."""
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def gemma_model() -> Path:
    """The real Gemma-3-270M (Q4_K_M) from the registry package in rotorquant[test]."""
    from rotorquant.demo_model import gemma_path

    try:
        return gemma_path()
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    """SmolLM2-135M-Instruct (Q4_1, head_dim 64), fetched by package name and cached."""
    try:
        return rq_assets.smollm2()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"SmolLM2 could not be fetched: {exc}")


@pytest.fixture(scope="session")
def rq_run() -> str:
    exe = shutil.which("rq-run")
    if exe is None:
        pytest.fail("rq-run is not on PATH: is rotorquant installed?")
    return exe


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 600)
    kw.setdefault("errors", "replace")  # random-weight models print arbitrary bytes
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
