#!/usr/bin/env python3
"""KV memory of Qwen3.5-397B-A17B's real shape at long context, per cache type: `rq-run
plan` (llama.cpp's own dry run of the load) over a shape-only GGUF of that structure (60
layers, 15 of them full attention with 2 KV heads of 256, 45 gated-delta-net layers, 512
experts, Q4_K weights), written as a sparse file in seconds by tools/device/gen_synth_gguf.py.

    python tools/bench_kv_plan.py [--ctx 32768,131072,262144] [--types f16,q8_0,q4_0,iso4,iso3]

The table goes to docs/BENCHMARKS.md (section kv-plan-qwen35-397b).
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_doc import write_section  # noqa: E402

GIB = 2**30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--ctx", default="32768,131072,262144")
    ap.add_argument("--types", default="f16,q8_0,q4_0,iso4,iso3")
    ap.add_argument("--parallel", type=int, default=1)
    a = ap.parse_args()
    from rotorquant.plan import plan

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "qwen35-397b-shape.gguf"
        subprocess.run([sys.executable, str(HERE / "device/gen_synth_gguf.py"), "qwen35-397b", str(model),
                        "--shape-only", "--type", "q4_k"], check=True)
        rows = {}
        for n_ctx in map(int, a.ctx.split(",")):
            for t in a.types.split(","):
                p = plan(model, n_ctx=n_ctx, cache_type_k=t, cache_type_v=t, n_parallel=a.parallel, kv_policy=None)
                rows[(n_ctx, t)] = p.devices[-1] if len(p.devices) == 1 else p.devices
        weights = next(iter(rows.values())).model
    types = a.types.split(",")
    lines = ["## KV memory plan: Qwen3.5-397B-A17B shape", "",
             f"{datetime.date.today().isoformat()}, `rq-run plan` (llama.cpp's dry run of the load: what it "
             f"would allocate) on a shape-only GGUF of the real structure, Q4_K weights ({weights / GIB:.1f} GiB), "
             f"{a.parallel} sequence(s), all layers on the CPU. KV cache (GiB; only the 15 full-attention "
             "layers have one) and, in brackets, the whole load incl. recurrent state and compute buffers.",
             f"Reproduce: `python tools/bench_kv_plan.py --ctx {a.ctx} --types {a.types}`.", "",
             "| context | " + " | ".join(f"{t}/{t}" for t in types) + " |",
             "|---|" + "---:|" * len(types)]
    for n_ctx in map(int, a.ctx.split(",")):
        cells = [f"{rows[(n_ctx, t)].kv / GIB:.2f} ({rows[(n_ctx, t)].needed / GIB:.1f})" for t in types]
        lines.append(f"| {n_ctx // 1024}K | " + " | ".join(cells) + " |")
    some = rows[(int(a.ctx.split(",")[-1]), types[0])]
    lines += ["", f"Recurrent state (45 gated-delta-net layers, per sequence, any context): "
              f"{some.recurrent / 2**20:.0f} MiB; compute buffers {some.compute / 2**20:.0f} MiB."]
    write_section("kv-plan-qwen35-397b", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
