#!/usr/bin/env python3
"""KV-cache quality and CPU decode speed of every cache type, with the bundled tools.

For each model: `llama-perplexity -c 512 --chunks 8` on the first 400 KB of the SOTU
text, f16 logits saved once (--kl-divergence-base), then each K/V configuration scored
against them (--kl-divergence): perplexity, mean KL divergence, and the K and V sizes
that llama.cpp logged (proof that K really is stored quantized).  With our K types the
Hadamard pre-rotation of K is run both ways (RQ_ATTN_ROT_K=1 / =0); the row marked
"default" is what the per-model rule (patch 0004) picks.
Then `llama-bench` decode speed at 4096 tokens of context.

Prints a markdown table and replaces this script's section of docs/BENCHMARKS.md.

    python tools/bench_kv_quality.py [--models gemma qwen] [--threads 2] [--no-speed]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rq_assets  # noqa: E402
from bench_doc import write_section  # noqa: E402

MODELS = {"gemma": ("Gemma-3-270M Q4_K_M (head_dim 256)", rq_assets.gemma),
          "smollm2": ("SmolLM2-135M Q4_1 (head_dim 64)", rq_assets.smollm2),
          "qwen": ("Qwen2.5-Coder-0.5B Q4_K_M (head_dim 64)", rq_assets.qwen25_05b)}
CONFIGS = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("planar3", "planar3"), ("iso3", "iso3"),
           ("planar4", "planar4"), ("iso4", "iso4"), ("planar3", "f16"), ("iso3", "q8_0")]
OURS = ("planar3", "iso3", "planar4", "iso4")


def tool(name: str) -> str:
    from rotorquant._native import BIN_DIR
    return str(BIN_DIR / name)


def perplexity(model: Path, text: Path, base: Path, ctk: str, ctv: str, threads: int, rot: bool, make_base=False):
    cmd = [tool("llama-perplexity"), "-m", str(model), "-f", str(text), "-c", "512", "--chunks", "8",
           "-t", str(threads), "-fa", "on", "-ctk", ctk, "-ctv", ctv, "-lv", "4"]
    cmd += ["--kl-divergence-base", str(base)] + ([] if make_base else ["--kl-divergence"])
    env = dict(os.environ)
    if rot is not None:
        env["RQ_ATTN_ROT_K"] = "1" if rot else "0"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{log[-3000:]}")
    ppl = re.search(r"Final estimate: PPL = ([\d.]+)", log) or re.search(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", log)
    kld = re.search(r"Mean\s+KLD:\s*([\d.]+)", log)
    # llama_kv_cache: size = ... K (type): X MiB, V (type): Y MiB -- one line per cache (iSWA: two)
    sizes = re.findall(r"K \((\w+)\):\s*([\d.]+) MiB, V \((\w+)\):\s*([\d.]+) MiB", log)
    if not sizes or any(k != ctk or v != ctv for k, _, v, _ in sizes):
        raise RuntimeError(f"the KV cache was not allocated as K {ctk} / V {ctv}: {sizes}")
    kv = (sum(float(s[1]) for s in sizes), sum(float(s[3]) for s in sizes))
    rot_k = re.search(r"attn_rot_k = (\d)", log)
    return float(ppl.group(1)), (float(kld.group(1)) if kld else 0.0), kv, bool(rot_k and rot_k.group(1) == "1")


def default_hadamard_k(model: Path) -> bool:
    """Whether the per-model rule keeps the Hadamard on rotor K for this model."""
    import logging
    from rotorquant import Llama

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("rotorquant.llama")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        Llama(model, n_ctx=256, cache_type_k="iso3").close()
    finally:
        log.removeHandler(handler)
    return any("attn_rot_k = 1" in line for line in seen)


def decode_speed(model: Path, ctk: str, ctv: str, threads: int, depth: int = 4096) -> float:
    cmd = [tool("llama-bench"), "-m", str(model), "-p", "0", "-n", "32", "-d", str(depth), "-r", "2",
           "-t", str(threads), "-fa", "1", "-ctk", ctk, "-ctv", ctv, "-o", "csv"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(out.stdout + out.stderr)[-3000:]}")
    header, row = [l for l in out.stdout.splitlines() if l.strip()][-2:]
    cols = dict(zip([c.strip('"') for c in header.split(",")], [c.strip('"') for c in row.split(",")]))
    return float(cols["avg_ts"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["gemma", "qwen"], choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--speed-model", default="qwen", choices=list(MODELS))
    args = ap.parse_args()
    text = rq_assets.sotu_text()
    cmd = "python tools/bench_kv_quality.py " + " ".join(sys.argv[1:])
    lines = []
    for key in ([] if args.no_quality else args.models):
        title, fetch = MODELS[key]
        model = fetch()
        lines += [f"### {title}", "", "| K | V | Hadamard on K | PPL | vs f16 | mean KLD | K MiB | V MiB |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp) / "f16.kld"
            f16_ppl, _, _, _ = perplexity(model, text, base, "f16", "f16", args.threads, None, make_base=True)
            default_rot = None  # per-model default, found on first use
            for ctk, ctv in CONFIGS:
                for rot in ([True, False] if ctk in OURS else [None]):
                    t0 = time.time()
                    ppl, kld, kv, rot_log = perplexity(model, text, base, ctk, ctv, args.threads, rot)
                    if rot is None:
                        rot_s = "—" if ctk == "f16" else "upstream rule"
                    else:
                        if default_rot is None:
                            default_rot = default_hadamard_k(model)
                        rot_s = ("on" if rot else "off") + (" (default)" if rot == default_rot else "")
                    lines.append(f"| {ctk} | {ctv} | {rot_s} | {ppl:.2f} | {ppl / f16_ppl:.3f} | {kld:.4f} "
                                 f"| {kv[0]:.3f} | {kv[1]:.3f} |")
                    print(lines[-1], f"({time.time() - t0:.0f} s)", flush=True)
        lines.append("")
    if lines:
        write_section("bench_kv_quality:quality", [
            "## KV-cache quality", "",
            f"Measured {time.strftime('%Y-%m-%d')} with `{cmd.strip()}`: llama-perplexity -c 512 --chunks 8 "
            "-fa on on the first 400 KB of the SOTU text; KLD against the f16-cache logits; K/V MiB "
            "as llama.cpp logged them for the 512-token context.", ""] + lines)
    if not args.no_speed:
        title, fetch = MODELS[args.speed_model]
        model = fetch()
        speed = [f"CPU decode at 4096 tokens of context, {title}, {args.threads} threads: "
                 f"`llama-bench -p 0 -n 32 -d 4096 -fa 1`, measured {time.strftime('%Y-%m-%d')} with "
                 f"`{cmd.strip()}`.", "", "| K/V | tg32 @ d4096 tok/s | vs f16 |", "|---|---:|---:|"]
        f16 = decode_speed(model, "f16", "f16", args.threads)
        for t in ("f16", "q8_0", "q4_0", "planar3", "iso3", "planar4", "iso4"):
            ts = f16 if t == "f16" else decode_speed(model, t, t, args.threads)
            speed.append(f"| {t}/{t} | {ts:.2f} | {ts / f16:.2f} |")
            print(speed[-1], flush=True)
        write_section("bench_kv_quality:speed", ["## CPU decode speed", ""] + speed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
