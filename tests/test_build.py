"""The installed package is our fork of the pinned llama.cpp, complete and self-contained."""
import os
from pathlib import Path

import pytest

import rotorquant
from conftest import run
from rotorquant._native import BIN_DIR, build_config

PATCH_DIR = Path(__file__).resolve().parent.parent / "vendor/llama-cpp-turboquant/patches"
PATCHES = sorted(p.name for p in PATCH_DIR.glob("*.patch"))


def test_build_info_names_the_pinned_upstream_and_our_patches():
    info = rotorquant.build_info()
    assert info["upstream_commit"] == "0c1e57098"
    assert info["version"] == rotorquant.__version__
    assert info["patches"] == PATCHES
    assert "CPU" in info["backends"]
    assert set(info["backends"]) <= set(info["backends_built"])
    assert info["cache_types"] == rotorquant.cache_types.names()


def test_the_marker_patch_is_compiled_in():
    assert "ROTORQUANT = 1" in rotorquant.build_info()["system_info"]


def test_ggml_amx_kernels_are_left_out_of_the_default_build():
    """They crash at the first matmul on Sapphire Rapids virtual machines (CMakeLists.txt,
    RQ_CPU_AMX); a native build on such a CPU would otherwise compile them in."""
    assert "AMX_INT8 = 1" not in rotorquant.build_info()["system_info"]


# These have no --version; `-h` still proves they start.
NO_VERSION_FLAG = {"ggml-rpc-server", "llama-quantize", "llama-test-archs"}


@pytest.mark.parametrize("tool", build_config.TOOLS)
def test_every_bundled_tool_runs_without_library_path(tool):
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    if tool in NO_VERSION_FLAG:
        proc = run([BIN_DIR / tool, "-h"], env=env, timeout=60)
        # the exit code is the proof: a missing library exits 127 before main() runs
        assert proc.returncode in (0, 1), proc.stderr[-2000:]
        assert "error while loading shared libraries" not in proc.stderr
    else:
        proc = run([BIN_DIR / tool, "--version"], env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "commit 0c1e57098+rotorquant" in proc.stdout + proc.stderr
