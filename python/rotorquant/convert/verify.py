"""Checks on converted files before they get their final names.

1. Inventory: every file opens, has tensors, none empty; the mmproj is not a stub; the
   text model's parameter count is close to the checkpoint's (minus what goes to the
   mmproj).
2. A vocab-only load through our bindings.
3. Tokenizer round trip on sample strings against the source ``tokenizer.json`` (with the
   ``tokenizers`` library, when it is installed).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SAMPLES = ["Hello, world!", "The capital of France is Paris.", "  leading spaces and\ttabs\n",
           "naïve café — 東京 🚀", "def f(x):\n    return x**2  # code", "12345 + 678 = 13023"]
MIN_MMPROJ_BYTES = 1 << 20


class VerifyError(RuntimeError):
    """A converted file failed a check; it is not put in place."""


def inspect_gguf(files: list[Path]) -> list[dict]:
    from .pipeline import UPSTREAM_DIR, _env

    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("_inspect_gguf.py")), *map(str, files)],
                          capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        raise VerifyError(f"could not read {files[0].name} as GGUF: {proc.stderr.strip().splitlines()[-1:]}")
    _ = UPSTREAM_DIR
    return json.loads(proc.stdout)


def verify_outputs(plan, produced: dict[str, list[Path]], log=print) -> dict:
    summary = {}
    for role, files in produced.items():
        if not files:
            raise VerifyError(f"the converter wrote no {role} file")
        info = inspect_gguf(files)
        for f in info:
            if f["n_tensors"] == 0:
                raise VerifyError(f"{role} file {Path(f['path']).name} has no tensors")
            if f["empty"]:
                raise VerifyError(f"{role} file has empty tensors: {', '.join(f['empty'][:5])}")
        if role == "mmproj" and sum(p.stat().st_size for p in files) < MIN_MMPROJ_BYTES:
            raise VerifyError(f"the mmproj file is only {files[0].stat().st_size} bytes: a stub, not a projector")
        summary[role] = sum(f["n_elements"] for f in info)
    src = plan.checkpoint.n_params
    got = sum(summary.values())
    if not 0.9 * src <= got <= 1.1 * src:
        raise VerifyError(f"the outputs hold {got} parameters, the checkpoint {src}: tensors are missing or duplicated")
    log(f"verified: {got} of {src} parameters in {sum(len(v) for v in produced.values())} file(s)")
    check_vocab(produced["model"][0], plan.checkpoint.path, log)
    return summary


def check_vocab(model: Path, source: Path, log=print) -> None:
    from ..llama import Llama

    with Llama(model, vocab_only=True) as vocab:
        tok_json = source / "tokenizer.json"
        try:
            from tokenizers import Tokenizer
        except ImportError:
            log("tokenizer round trip skipped: the `tokenizers` package is not installed")
            return
        if not tok_json.is_file():
            log("tokenizer round trip skipped: the source has no tokenizer.json")
            return
        ref = Tokenizer.from_file(str(tok_json))
        for text in SAMPLES:
            want = ref.encode(text, add_special_tokens=False).ids
            got = vocab.tokenize(text, add_special=False, parse_special=False)
            if got != want:
                raise VerifyError(f"tokenizer mismatch on {text!r}: GGUF gives {got[:12]}, source {want[:12]}")
    log(f"verified: vocabulary loads, {len(SAMPLES)} sample strings tokenize as the source does")
