#!/usr/bin/env python3
"""What the Python API's lifetime machinery costs and buys (issue 6), on a real model:

    python tools/bench_python_api.py [MODEL.gguf] [--threads 2]     (default: SmolLM2-135M)

- Ctrl-C latency: SIGINT 0.5 s into a 4000-token prompt, time until KeyboardInterrupt.
- Decode speed with decodes on the object's worker thread (how Llama runs them, so Ctrl-C
  works) vs called directly from the calling thread; each in a fresh process.
The table goes to docs/BENCHMARKS.md (section ``python-api-lifetime``).
"""
from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_doc import write_section  # noqa: E402


def interrupt_latencies(model: str, threads: int, runs: int = 3) -> list[float]:
    from rotorquant import Llama
    out = []
    with Llama(model, n_ctx=4096, n_batch=4096, n_threads=threads) as llm:
        tokens = llm.tokenize("The history of the river valley. " * 400)[:4000]
        for _ in range(runs):
            fired = {}

            def fire():
                fired["t"] = time.perf_counter()
                os.kill(os.getpid(), signal.SIGINT)

            timer = threading.Timer(0.5, fire)
            timer.start()
            try:
                llm.eval(tokens)
            except KeyboardInterrupt:
                out.append(time.perf_counter() - fired["t"])
            timer.join()
            llm.reset()
    return out


def decode_speed(model: str, threads: int, mode: str) -> float:
    """tok/s of 128 greedy tokens, best of 3, in this process."""
    from rotorquant import Llama
    with Llama(model, n_ctx=1024, n_threads=threads) as llm:
        if mode == "direct":
            llm._call_interruptibly = lambda fn: fn()
        llm.generate("Once upon a time", max_tokens=8, temperature=0)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            llm.generate("Once upon a time", max_tokens=128, temperature=0, logit_bias={llm.n_vocab - 1: -100.0})
            best = min(best, time.perf_counter() - t0)
        return 128 / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed-only", choices=["worker", "direct"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.model is None:
        import rq_assets
        a.model = str(rq_assets.smollm2())
    if a.speed_only:
        print(decode_speed(a.model, a.threads, a.speed_only))
        return 0
    lat = interrupt_latencies(a.model, a.threads)
    speed = {}
    for mode in ("worker", "direct", "worker", "direct"):
        proc = subprocess.run([sys.executable, __file__, a.model, "--threads", str(a.threads), "--speed-only", mode],
                              capture_output=True, text=True, check=True)
        speed.setdefault(mode, []).append(float(proc.stdout.strip().splitlines()[-1]))
    lines = [
        "## Python API: Ctrl-C and the decode worker thread",
        "",
        f"{Path(a.model).name}, CPU, {a.threads} threads, {datetime.date.today().isoformat()}. "
        f"Reproduce: `python tools/bench_python_api.py MODEL --threads {a.threads}`.",
        "",
        "| measure | value |",
        "|---|---|",
        "| SIGINT -> KeyboardInterrupt during a 4000-token prompt (3 runs) | "
        + ", ".join(f"{x * 1000:.0f} ms" for x in lat) + " |",
        "| decode, worker thread (as Llama runs it), 2 processes | "
        + " / ".join(f"{x:.1f}" for x in speed["worker"]) + " tok/s |",
        "| decode, called directly, 2 processes | " + " / ".join(f"{x:.1f}" for x in speed["direct"]) + " tok/s |",
    ]
    print("\n".join(lines))
    write_section("python-api-lifetime", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
