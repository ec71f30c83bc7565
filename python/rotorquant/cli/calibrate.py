"""``rq-run calibrate``: measure a model's KV-cache sensitivity and write its KV policy.

Runs a short sample through the model, measures each layer's K/V quantization
error in attention-output terms with the real codecs, and writes a policy file
(K centering, Hadamard choice, per-layer cache types within a bit budget) that
``rq-run`` and ``Llama(kv_policy="auto")`` then use for this model.
"""
from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rq-run calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a GGUF file")
    ap.add_argument("--text", help="sample text file (default: a built-in mix of prose, code and numbers)")
    ap.add_argument("--tokens", type=int, default=1024,
                    help="tokens measured layer by layer (default 1024); up to 1024 more score the "
                         "candidate policies end to end")
    ap.add_argument("--no-measure", action="store_true",
                    help="skip the end-to-end comparison of candidates (faster on big models)")
    ap.add_argument("-ctk", "--cache-type-k", default="iso3", help="base K type (default iso3)")
    ap.add_argument("-ctv", "--cache-type-v", default="iso3", help="base V type (default iso3)")
    ap.add_argument("--budget-bits", type=float, default=None,
                    help="average bits per cached element to spend (default: base types + 0.25)")
    ap.add_argument("--centering", choices=("auto", "on", "off"), default="auto", help="K centering")
    ap.add_argument("--hadamard-k", choices=("auto", "on", "off"), default="auto",
                    help="upstream's whole-head Hadamard rotation of K")
    ap.add_argument("--hadamard-v", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--no-protect", action="store_true", help="keep every layer at the base types")
    ap.add_argument("-o", "--output", help="policy file (default: MODEL.kvpolicy.gguf next to the model, "
                    "or the user cache if that folder is read-only)")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    ap.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")
    return ap


_TRI = {"auto": None, "on": True, "off": False}


def default_text() -> str:
    return resources.files("rotorquant.kvpolicy").joinpath("data/calibration.txt").read_text("utf-8")


def main(argv: "list[str] | None" = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("rotorquant.llama").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("rq-run calibrate: error: needs numpy (pip install 'rotorquant[calibrate]')", file=sys.stderr)
        return 2
    from .. import Llama, RotorQuantError, cache_types
    from ..kvpolicy import locate
    from ..kvpolicy.calibrate import calibrate_model

    def fail(msg: str) -> int:
        print(f"rq-run calibrate: error: {msg}", file=sys.stderr)
        return 2

    try:
        ctk, ctv = cache_types.get(args.cache_type_k), cache_types.get(args.cache_type_v)
        if args.tokens < 64:
            return fail(f"--tokens {args.tokens}: use at least 64 tokens")
        text = Path(args.text).read_text("utf-8", errors="replace") if args.text else default_text()
        with Llama(args.model, vocab_only=True) as vocab:
            tokens = vocab.tokenize(text)[:args.tokens + 1024]
        if len(tokens) < 64:
            return fail(f"the sample has only {len(tokens)} tokens; give a longer --text")
        base_bits = (ctk.bits_per_element + ctv.bits_per_element) / 2
        budget = args.budget_bits if args.budget_bits is not None else base_bits + 0.25
        out = Path(args.output) if args.output else locate.default_output(args.model)
        print(f"calibrating {args.model} on {len(tokens)} tokens ...", flush=True)
        cal = calibrate_model(args.model, tokens, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                              window=min(args.tokens, len(tokens) // 2), measure=not args.no_measure,
                              base_type_k=ctk.name, base_type_v=ctv.name, budget_bits=budget,
                              centering=_TRI[args.centering], hadamard_k=_TRI[args.hadamard_k],
                              hadamard_v=_TRI[args.hadamard_v], protect=not args.no_protect)
        n_layer = cal.policy.n_layer
        cal.policy.notes = f"rq-run calibrate: {len(tokens)} tokens, budget {budget} bits"
        cal.policy.write(out)
    except (OSError, ValueError, RotorQuantError) as exc:
        return fail(str(exc))

    p = cal.policy
    onoff = lambda b: "on" if b else "off"  # noqa: E731
    print(f"  attention layers : {len(cal.layer_errors)} of {n_layer}")
    print(f"  K centering      : {onoff(any(m is not None for m in p.k_center))}")
    print(f"  Hadamard K / V   : {onoff(p.attn_rot_k)} / {onoff(p.attn_rot_v)}")
    for kind, types in (("K", p.type_k), ("V", p.type_v)):
        raised = [f"{il}:{t}" for il, t in enumerate(types) if t]
        print(f"  {kind} raised layers : {', '.join(raised) if raised else 'none'}")
    print(f"  bits per element : {cal.bits_per_element:.3f} (budget {budget:g}; f16 = 16)")
    print(f"  predicted error  : {cal.error:.4f} attention-output MSE, summed over layers "
          f"(plain {ctk.name}/{ctv.name}: {cal.error_base:.4f}; f16: 0)")
    if cal.measured:
        print(f"  on held-out text : perplexity x{cal.measured.ppl_ratio:.3f} of f16, KL {cal.measured.kl:.4f} "
              f"(plain {ctk.name}/{ctv.name}: x{cal.measured_plain.ppl_ratio:.3f}, KL {cal.measured_plain.kl:.4f})")
    print(f"wrote {out}")
    print(f"used automatically by `rq-run` and `Llama(...)` with -ctk {ctk.name} -ctv {ctv.name}"
          if out in (locate.sidecar_path(args.model), locate.cache_path(args.model))
          else f"use it with --kv-policy {out} (rq-run) or Llama(..., kv_policy={str(out)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
