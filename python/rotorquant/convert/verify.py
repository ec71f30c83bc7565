"""Checks on converted files before they get their final names.

1. Inventory: every file opens, has tensors, none empty; the mmproj holds (at least 90 %
   of) the checkpoint's vision tower, not a stub; text model + mmproj hold the checkpoint's
   parameter count (within 10 %: the converter fuses, splits and drops a few tensors).
2. A vocab-only load through our bindings.
3. Tokenizer round trip on sample strings against the source ``tokenizer.json`` (with the
   ``tokenizers`` library, when it is installed).
4. For checkpoints up to ``LOGITS_CHECK_MAX_BYTES`` converted to a float type, next-token
   logits on a sample text against transformers (when torch and transformers are
   installed): KL divergence below ``LOGITS_MAX_KL``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SAMPLES = ["Hello, world!", "The capital of France is Paris.", "  leading spaces and\ttabs\n",
           "naïve café — 東京 🚀", "def f(x):\n    return x**2  # code", "12345 + 678 = 13023"]
VISION_MARKERS = ("visual.", "vision_tower", "vision_model", "vision_encoder")
LOGITS_CHECK_MAX_BYTES = 2 << 30
LOGITS_MAX_KL = 1e-2  # f16/bf16 conversions land near 1e-5 on the test models
LOGITS_TEXT = ("The history of science is the study of the development of science and scientific "
               "knowledge, including both the natural and social sciences.")


class VerifyError(RuntimeError):
    """A converted file failed a check; it is not put in place."""


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def inspect_gguf(files: list[Path]) -> list[dict]:
    from .pipeline import _env

    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("_inspect_gguf.py")), *map(str, files)],
                          capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        raise VerifyError(f"could not read {files[0].name} as GGUF: {proc.stderr.strip().splitlines()[-1:]}")
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
        summary[role] = sum(f["n_elements"] for f in info)
    if "mmproj" in summary:
        vision = sum(_numel(t.shape) for t in plan.checkpoint.tensors.values()
                     if any(m in t.name for m in VISION_MARKERS))
        if summary["mmproj"] < 0.9 * vision:
            raise VerifyError(f"the mmproj holds {summary['mmproj']} parameters but the checkpoint's vision "
                              f"tower has {vision}: a stub, not the projector")
    src = plan.checkpoint.n_params
    got = sum(summary.values())
    if not 0.9 * src <= got <= 1.1 * src:
        raise VerifyError(f"the outputs hold {got} parameters, the checkpoint {src}: tensors are missing or duplicated")
    log(f"verified: {got} of {src} parameters in {sum(len(v) for v in produced.values())} file(s)")
    check_vocab(produced["model"][0], plan.checkpoint.path, log)
    if plan.quant is None and plan.outtype in ("auto", "f32", "f16", "bf16") \
            and plan.checkpoint.nbytes <= LOGITS_CHECK_MAX_BYTES and len(produced["model"]) == 1:
        check_logits(produced["model"][0], plan.checkpoint.path, log)
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


def check_logits(model: Path, source: Path, log=print) -> None:
    try:
        import numpy as np
        import torch
        import transformers
    except ImportError:
        log("logits check skipped: torch/transformers are not installed")
        return
    from ..llama import Llama

    with Llama(model, n_ctx=256) as llm:
        ids = llm.tokenize(LOGITS_TEXT)
        llm.eval(ids)
        ours = np.array(llm.logits(), dtype=np.float64)
    ref_model = None
    for auto in ("AutoModelForCausalLM", "AutoModelForImageTextToText"):
        try:
            ref_model = getattr(transformers, auto).from_pretrained(source, dtype=torch.float32).eval()
            break
        except (ValueError, KeyError, OSError):
            continue
    if ref_model is None:
        log("logits check skipped: transformers cannot load this checkpoint")
        return
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor([ids])).logits[0, -1].double().numpy()
    n = min(len(ref), len(ours))  # padded vocabularies differ in length
    p, q = np.exp(ref[:n] - ref[:n].max()), np.exp(ours[:n] - ours[:n].max())
    p, q = p / p.sum(), q / q.sum()
    kl = float(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30))))
    if not kl < LOGITS_MAX_KL:
        raise VerifyError(f"next-token logits differ from transformers: KL {kl:.3g} >= {LOGITS_MAX_KL}")
    log(f"verified: next-token logits match transformers (KL {kl:.2e}, max |diff| {np.abs(ours[:n] - ref[:n]).max():.3g})")
