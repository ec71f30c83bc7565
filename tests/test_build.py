"""The installed package is our fork of the pinned llama.cpp, complete and self-contained."""
import os
import shutil
import sys
from pathlib import Path

import pytest

import rotorquant
from conftest import run
from rotorquant._native import BIN_DIR, LIB_DIR, build_config

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


def test_the_engine_loads_into_a_process_that_already_holds_the_system_cxx_runtime():
    """numpy (or torch) imported first brings the system libstdc++; with libraries that each
    carried a private copy of the C++ runtime (a toolchain linking it statically, as the
    H200 host's /opt/gcc does) loading us then segfaulted in libllama-common's first
    std::regex.  CMakeLists.txt keeps the runtime's symbols local to each library."""
    pytest.importorskip("numpy")
    code = "import ctypes; ctypes.CDLL('libstdc++.so.6'); import numpy; import rotorquant._native"
    proc = run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def dynamic_symbols(path: Path) -> set[str]:
    proc = run(["nm", "-D", "--defined-only", path])
    assert proc.returncode == 0, proc.stderr
    return {line.split()[-1].split("@")[0] for line in proc.stdout.splitlines() if line.strip()}


LINKER_SYMBOLS = {"_init", "_fini", "_edata", "_end", "__bss_start"}  # some linkers export these


@pytest.mark.skipif(not shutil.which("nm"), reason="needs binutils' nm")
def test_no_bundled_library_exports_a_cxx_runtime_of_its_own():
    runtime = {"__cxa_throw", "__dynamic_cast", "_ZNSt6localeC1Ev", "_ZNSt8ios_base4InitC1Ev"}
    libs = sorted(LIB_DIR.glob("*.so*"))
    assert any(so.name.startswith("libllama") for so in libs), LIB_DIR
    for so in libs:
        assert not runtime & dynamic_symbols(so), so.name


@pytest.mark.skipif(not shutil.which("nm"), reason="needs binutils' nm")
def test_the_cffi_module_exports_its_init_function_alone():
    """Anything else it exported (the shim's std:: template instantiations) would come
    first in symbol lookup for libllama and replace libllama's own copies."""
    from rotorquant import _ffi
    assert dynamic_symbols(Path(_ffi.__file__)) - LINKER_SYMBOLS == {"PyInit__ffi"}
