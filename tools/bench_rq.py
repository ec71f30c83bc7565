#!/usr/bin/env python3
"""The cache-type table of docs/BENCHMARKS.md, made by rq-bench itself on a real model.

Runs `rq-bench` (CPU, 2 threads by default) on a registry model with the SOTU text,
then puts its Markdown report into this script's section of docs/BENCHMARKS.md and its
plots into docs/img/.  Rerunning resumes: the results folder is kept under the asset
cache.

    python tools/bench_rq.py [--model smollm2|qwen|gemma] [--threads 2] [--depths 0,4096]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rq_assets  # noqa: E402
from bench_doc import DOC, write_section  # noqa: E402

MODELS = {"smollm2": rq_assets.smollm2, "qwen": rq_assets.qwen25_05b, "gemma": rq_assets.gemma}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depths", default="0,4096")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--niah-lengths", default="1024,2048")
    args = ap.parse_args()
    model = MODELS[args.model]()
    out = rq_assets._assets() / f"rq-bench-{args.model}"
    cmd = ["rq-bench", str(model), "--text", str(rq_assets.sotu_text()), "--ctx", str(args.ctx),
           "--depths", args.depths, "-p", "256", "-n", "32", "-r", "2", "--chunks", "8",
           "--niah-lengths", args.niah_lengths, "-t", str(args.threads), "-ngl", "0", "-o", str(out)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode not in (0, 1):
        return proc.returncode
    img = DOC.parent / "img"
    img.mkdir(exist_ok=True)
    lines = proc.stdout.splitlines()
    body = ["## rq-bench: " + model.name, "",
            f"`python tools/bench_rq.py {' '.join(sys.argv[1:])}`".strip() + " (CPU, "
            f"{args.threads} threads; the command line below is what it ran, paths shortened).", ""]
    body += [line.replace(str(model), model.name).replace(str(rq_assets.sotu_text()), "sotu.txt")
                 .replace(str(out), "OUT") for line in lines[1:]]
    for name in ("quality.png", "decode.png"):
        if (out / name).is_file():
            target = img / f"rq-bench-{args.model}-{name}"
            shutil.copyfile(out / name, target)
            body += [f"![{name}](img/{target.name})", ""]
    write_section(f"bench_rq:{args.model}", body)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
