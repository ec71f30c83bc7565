#!/usr/bin/env python3
"""Per-kernel GPU time of one decode run from ncu's CSV, side by side for several runs.

    ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \\
        llama-bench ... -ctk T -ctv T -p 0 -n N > T.csv
    python3 tools/device/ncu_kernel_times.py f16.csv iso3.csv [--tokens N]

Prints, per kernel (template arguments dropped), launches and microseconds per generated
token in each run, largest first, and the totals: where a cache type's extra decode time
goes.  ``--tokens`` is the number of tokens the run generated, warm-up included.
"""
from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from pathlib import Path


def kernel_times(path: Path) -> dict[str, list[float]]:
    """Kernel name -> durations in microseconds, from ncu --csv output (other lines skipped)."""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith('"')]
    times: dict[str, list[float]] = defaultdict(list)
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = row["Kernel Name"].replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
        name = re.sub(r"<.*", "", name).split("(")[0].removeprefix("void ").strip()
        value = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "nsecond")
        times[name].append(value / 1000.0 if unit.startswith("n") else value * (1000.0 if unit.startswith("m") else 1.0))
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--tokens", type=int, default=5)
    a = ap.parse_args()
    runs = {p.stem: kernel_times(p) for p in a.runs}
    names = sorted({n for t in runs.values() for n in t},
                   key=lambda n: -max(sum(t.get(n, [])) for t in runs.values()))
    head = "| kernel | " + " | ".join(f"{r} launches/token | {r} µs/token" for r in runs) + " |"
    print(head)
    print("|---" * (1 + 2 * len(runs)) + "|")
    for n in names:
        cells = []
        for t in runs.values():
            d = t.get(n, [])
            cells += [f"{len(d) / a.tokens:.1f}", f"{sum(d) / a.tokens:.1f}"]
        print(f"| {n} | " + " | ".join(cells) + " |")
    totals = []
    for t in runs.values():
        totals += [f"{sum(len(d) for d in t.values()) / a.tokens:.1f}", f"{sum(sum(d) for d in t.values()) / a.tokens:.1f}"]
    print("| **total** | " + " | ".join(totals) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
