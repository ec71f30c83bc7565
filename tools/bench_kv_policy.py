#!/usr/bin/env python3
"""3-bit and 4-bit KV quality with and without each KV-policy technique (issue 12's table).

For each model, policies are calibrated (`rotorquant.kvpolicy`) on the built-in sample
text that `rq-run calibrate` uses, then scored on different text: `llama-perplexity -c 512
--chunks 8 -fa on` on the first 400 KB of the SOTU text, K really quantized, f16 logits as
the KL-divergence base.  Rows: plain types (`--kv-policy none`: upstream defaults plus
our K-bias Hadamard rule), each technique alone, both, and the full calibrated policy
within a 3.5 / 4.5 bits-per-element budget.

    python tools/bench_kv_policy.py [--models smollm2 qwen gemma] [--threads 2]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rq_assets  # noqa: E402
from bench_doc import write_section  # noqa: E402

MODELS = {"smollm2": ("SmolLM2-135M Q4_1 (head_dim 64)", rq_assets.smollm2),
          "qwen": ("Qwen2.5-Coder-0.5B Q4_K_M (head_dim 64, K bias)", rq_assets.qwen25_05b),
          "gemma": ("Gemma-3-270M Q4_K_M (head_dim 256)", rq_assets.gemma)}
TARGETS = {"smollm2": (1.10, 1.02), "qwen": (1.10, 1.02), "gemma": (1.05, 1.01)}

# (label, base type, calibrate() keyword arguments or None for no policy, budget)
ROWS = [
    ("plain", "iso3", None, None),
    ("Hadamard K", "iso3", dict(centering=False, hadamard_k=True, protect=False), None),
    ("K centering", "iso3", dict(centering=True, hadamard_k=False, protect=False), None),
    ("centering + Hadamard", "iso3", dict(centering=True, hadamard_k=True, protect=False), None),
    ("calibrated policy", "iso3", dict(), 3.5),
    ("plain", "iso4", None, None),
    ("centering + Hadamard", "iso4", dict(centering=True, hadamard_k=True, protect=False), None),
    ("calibrated policy", "iso4", dict(), 4.5),
]


def tool(name: str) -> str:
    from rotorquant._native import BIN_DIR
    return str(BIN_DIR / name)


def perplexity(model: Path, text: Path, base: Path, ctk: str, ctv: str, threads: int,
               policy: "Path | None", make_base: bool = False) -> "tuple[float, float]":
    cmd = [tool("llama-perplexity"), "-m", str(model), "-f", str(text), "-c", "512", "--chunks", "8",
           "-t", str(threads), "-fa", "on", "-ctk", ctk, "-ctv", ctv,
           "--kl-divergence-base", str(base)] + ([] if make_base else ["--kl-divergence"])
    if policy:
        cmd += ["--kv-policy", str(policy)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    log = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{log[-3000:]}")
    ppl = re.search(r"Final estimate: PPL = ([\d.]+)", log) or re.search(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", log)
    kld = re.search(r"Mean\s+KLD:\s*([\d.]+)", log)
    return float(ppl.group(1)), (float(kld.group(1)) if kld else 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from rotorquant import Llama
    from rotorquant.cli.calibrate import default_text
    from rotorquant.kvpolicy.calibrate import calibrate, calibrate_model
    from rotorquant.kvpolicy.capture import capture

    text = rq_assets.sotu_text()
    cmd = "python tools/bench_kv_policy.py " + " ".join(sys.argv[1:])
    lines = []
    for key in args.models:
        title, fetch = MODELS[key]
        model = fetch()
        t35, t45 = TARGETS[key]
        lines += [f"### {title}", "", "| K/V base | technique | bits/elem | PPL | vs f16 | mean KLD | target |",
                  "|---|---|---:|---:|---:|---:|---|"]
        with Llama(model, vocab_only=True) as vocab:
            tokens = vocab.tokenize(default_text())[:2048]
        layers, n_layer = capture(model, tokens[:1024], n_threads=args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp) / "f16.kld"
            f16_ppl, _ = perplexity(model, text, base, "f16", "f16", args.threads, None, make_base=True)
            lines.append(f"| f16 | — | 16 | {f16_ppl:.2f} | 1.000 | 0 | |")
            for label, ct, kw, budget in ROWS:
                t0 = time.time()
                policy, bits = None, None
                if kw is not None and budget:  # what `rq-run calibrate` does
                    cal = calibrate_model(model, tokens, n_threads=args.threads, base_type_k=ct, base_type_v=ct,
                                          budget_bits=budget, **kw)
                elif kw is not None:
                    cal = calibrate(layers, n_layer, base_type_k=ct, base_type_v=ct, **kw)
                if kw is not None:
                    policy = cal.policy.write(Path(tmp) / f"{ct}-{label.replace(' ', '_')}.kvpolicy.gguf")
                    bits = cal.bits_per_element
                if bits is None:
                    from rotorquant import cache_types
                    bits = cache_types.get(ct).bits_per_element
                ppl, kld = perplexity(model, text, base, ct, ct, args.threads, policy)
                target = ""
                if budget:
                    goal = t35 if budget < 4 else t45
                    target = f"≤ {goal:.2f}× at ≤ {budget} bits: " + ("met" if ppl / f16_ppl <= goal else "**missed**")
                lines.append(f"| {ct} | {label} | {bits:.2f} | {ppl:.2f} | {ppl / f16_ppl:.3f} | {kld:.4f} | {target} |")
                print(lines[-1], f"({time.time() - t0:.0f} s)", flush=True)
        lines.append("")
    write_section("bench_kv_policy", [
        "## KV policy: K centering, Hadamard choice, sensitive-layer protection (issue 12)", "",
        f"Measured {time.strftime('%Y-%m-%d')} on 2 CPU cores with `{cmd.strip()}`. Policies are calibrated "
        "on the built-in sample text of `rq-run calibrate` (never on SOTU), then scored with `llama-perplexity "
        "-c 512 --chunks 8 -fa on --kv-policy FILE` on the first 400 KB of the SOTU text (K really "
        "quantized; KLD vs the f16-cache logits).  The calibrated rows are what `rq-run calibrate` "
        "writes: layer errors on the first 1,024 tokens of the sample, candidates compared end to end on "
        "the next 1,024.  Technique rows keep every layer at the base type "
        "(the \"calibrated policy\" rows also choose each technique and spend the budget on sensitive "
        "layers).  Differences under ~2% are within the noise of 8 chunks.", ""] + lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
