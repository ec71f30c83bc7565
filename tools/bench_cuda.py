#!/usr/bin/env python3
"""CUDA speed of the KV-cache types with the bundled llama-bench: the table of issue 5.

Every cache type runs in one session on one model (all layers offloaded, flash attention
on), and each figure is also given as a ratio to f16/f16 of the same run:

    python tools/bench_cuda.py MODEL.gguf [--types f16,q4_0,iso3,planar3,iso4] [--reps 2]
                               [--label "Llama-3.1-8B shape, Q4_K_M"] [--no-long]

A type may name a kernel variant after a colon, run with the environment that selects it:
``iso3:scalar``, ``iso3:k-mma``, ``iso3:v-mma`` (RQ_CUDA_DECODE_MMA: the decode kernel with
no phase, only the key scores, only V on tensor cores; default both), ``iso3:no-fusion``
(GGML_CUDA_DISABLE_FUSION=1: upstream's fusions and ours off), ``iso3:no-out-fusion``
(RQ_CUDA_FUSE_OUTPUT=0: the output Hadamard as its own node), ``iso3:combine-kernel``
(RQ_CUDA_MERGE=kernel: slices always merged by the combine kernel, not by the last slice).

Tests: pp512, tg128, pp512 and tg128 at depth 16384, tg64 at depth 65536 (``--no-long``
drops the last).  The table goes to docs/BENCHMARKS.md (section ``cuda-speed-<slug>``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_doc import write_section  # noqa: E402

TARGETS = {  # issue 5: iso3/iso3 (and planar3) over f16/f16, same run; upstream q4_0 for reference
    "pp512": 0.9, "tg128": 0.95, "pp512 @ d16384": 0.9, "tg128 @ d16384": 1.0, "tg64 @ d65536": 1.3,
}


VARIANTS = {
    "scalar": {"RQ_CUDA_DECODE_MMA": "none"}, "k-mma": {"RQ_CUDA_DECODE_MMA": "k"},
    "v-mma": {"RQ_CUDA_DECODE_MMA": "v"}, "no-fusion": {"GGML_CUDA_DISABLE_FUSION": "1"},
    "combine-kernel": {"RQ_CUDA_MERGE": "kernel"}, "no-out-fusion": {"RQ_CUDA_FUSE_OUTPUT": "0"},
}


def llama_bench() -> Path:
    from rotorquant._native import BIN_DIR
    return Path(BIN_DIR) / "llama-bench"


def run_bench(model: Path, cache: str, args: list[str], reps: int) -> dict[str, float]:
    """cache: a cache type, optionally with a variant (``iso3:scalar``, VARIANTS)."""
    cache, _, variant = cache.partition(":")
    env = os.environ | VARIANTS[variant] if variant else None
    cmd = [str(llama_bench()), "-m", str(model), "-ngl", "99", "-fa", "1", "-ctk", cache, "-ctv", cache,
           "-r", str(reps), "-o", "jsonl", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"llama-bench failed for {cache}{':' + variant if variant else ''}:\n{proc.stderr[-2000:]}")
    out = {}
    for line in proc.stdout.splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        name = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        if r.get("n_depth"):
            name += f" @ d{r['n_depth']}"
        out[name] = r["avg_ts"]
    return out


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "unknown GPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--types", default="f16,q4_0,iso3,planar3,iso4")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--label", default=None, help="model description for the table")
    ap.add_argument("--no-long", action="store_true", help="skip tg64 at depth 65536")
    a = ap.parse_args()
    types = a.types.split(",")
    unknown = sorted({t.partition(":")[2] for t in types} - set(VARIANTS) - {""})
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if types[0] != "f16":
        types.insert(0, "f16")
    results: dict[str, dict[str, float]] = {}
    for t in types:
        r = run_bench(a.model, t, ["-p", "512", "-n", "128", "-d", "0,16384"], a.reps)
        if not a.no_long:
            r |= run_bench(a.model, t, ["-p", "0", "-n", "64", "-d", "65536"], a.reps)
        results[t] = r
        print(t, {k: round(v, 1) for k, v in r.items()}, flush=True)

    tests = [k for k in TARGETS if k in results["f16"]]
    label = a.label or a.model.name
    def column(t: str) -> str:
        cache, _, variant = t.partition(":")
        return f"{cache}/{cache}" + (f" ({variant})" if variant else "")

    head = "| test | " + " | ".join(column(t) for t in types) + " | target (iso3/planar3) |"
    lines = [
        f"## CUDA speed: {label}",
        "",
        f"{gpu_name()}, {datetime.date.today().isoformat()}, bundled `llama-bench -ngl 99 -fa 1`, "
        f"`-r {a.reps}`, tokens/s and ratio to f16/f16 of the same run.",
        f"Reproduce: `python tools/bench_cuda.py MODEL --types {','.join(types)} --reps {a.reps}"
        + (" --no-long" if a.no_long else "") + "`.",
        "",
        head,
        "|" + "---|" * (len(types) + 2),
    ]
    for test in tests:
        base = results["f16"][test]
        cells = []
        for t in types:
            v = results[t].get(test)
            cells.append("—" if v is None else (f"{v:.1f}" if t == "f16" else f"{v:.1f} ({v / base:.2f}×)"))
        lines.append(f"| {test} | " + " | ".join(cells) + f" | ≥ {TARGETS[test]}× |")
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    write_section(f"cuda-speed-{slug}", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
