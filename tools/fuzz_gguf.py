#!/usr/bin/env python3
"""Mutation fuzzing of model loading: every mutant either loads or raises our exception.

Mutants of a valid seed GGUF (fixed seed, so a run is reproducible): truncations, boundary
integers (0, 1, -1, 2^31 +- 1, 2^32 - 1, 2^63 - 1, ...) written as 4 or 8 bytes at aligned
offsets of the header, and bursts of 1-8 flipped bits, mostly in the header (metadata and
tensor table), some in the tensor data.  Each is loaded with ``rotorquant.Llama`` in a
worker process; the outcomes are:

* ``ok``: it loaded (a flip in tensor data, or in a value nobody checks);
* ``refused``: a ``rotorquant`` exception (``GGUFFormatError`` from the validator,
  ``ModelLoadError`` from llama.cpp), or ``FileNotFoundError``/``ValueError`` raised by it;
* ``crash``: the worker died (a signal: an abort in the C loader, a segfault);
* ``hang``: no answer within the time limit;
* ``error``: any other Python exception (a bug of ours: a traceback instead of a message).

Crashes, hangs and errors are failures; their mutants are kept under ``--keep DIR``.

    python tools/fuzz_gguf.py [--count 10000] [--seed 1] [--workers 2] [--keep findings/]
"""
from __future__ import annotations

import argparse
import os
import random
import select
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

INTERESTING = [0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF, 0x100000000, (1 << 62), (1 << 63) - 1, 1 << 63, (1 << 64) - 1, (1 << 64) - 2, 64, 63, 65]

_WORKER = r"""
import sys
import rotorquant
from rotorquant import Llama
import logging
logging.getLogger("rotorquant").setLevel(logging.CRITICAL)
for line in sys.stdin:
    path = line.rstrip("\n")
    try:
        with Llama(path, n_ctx=32, n_threads=1, n_batch=32):
            pass
        out = "ok"
    except (rotorquant.RotorQuantError, ValueError, FileNotFoundError) as exc:
        out = "refused " + type(exc).__name__
    except BaseException as exc:
        out = "error " + type(exc).__name__ + ": " + str(exc).replace("\n", " ")[:300]
    sys.stdout.write("RQFUZZ " + out + "\n")
    sys.stdout.flush()
"""


@dataclass
class Mutant:
    index: int
    how: str
    data: bytes


def mutants(seed_file: bytes, header_end: int, count: int, seed: int):
    """``count`` mutants of ``seed_file``: a third truncations (mostly inside the header), a
    third boundary integers at 4-byte-aligned header offsets, a third bit flips (90% in
    the header)."""
    rng = random.Random(seed)
    for i in range(count):
        kind = i % 3
        data = bytearray(seed_file)
        if kind == 0:
            cut = rng.randrange(header_end + 64) if rng.random() < 0.9 else rng.randrange(len(data))
            yield Mutant(i, f"truncate at {cut}", bytes(data[:cut]))
        elif kind == 1:
            at = rng.randrange(0, header_end - 8, 4)
            value = rng.choice(INTERESTING)
            width = rng.choice((4, 8)) if value < (1 << 32) else 8
            data[at:at + width] = struct.pack("<Q" if width == 8 else "<I", value & ((1 << (8 * width)) - 1))
            yield Mutant(i, f"write {value:#x} as {width} bytes at {at}", bytes(data))
        else:
            flips = []
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(header_end) if rng.random() < 0.9 else rng.randrange(len(data))
                bit = rng.randrange(8)
                data[at] ^= 1 << bit
                flips.append(f"{at}.{bit}")
            yield Mutant(i, "flip bits " + ",".join(flips), bytes(data))


class _Worker:
    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.proc = None

    def start(self):
        # GGML_NO_BACKTRACE: an abort would otherwise attach gdb and print to our pipe
        env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def run(seed_path: Path, count: int, seed: int = 1, workers: int = 2, timeout: float = 20.0,
        keep: Path | None = None, log=print) -> Counter:
    """Load ``count`` mutants of ``seed_path``; return the outcome counts (``ok``,
    ``refused``, ``crash``, ``hang``, ``error``).  Failures are logged (and kept)."""
    from rotorquant.gguf_check import read_header

    seed_file = seed_path.read_bytes()
    header_end = read_header(seed_path).data_offset
    outcomes: Counter = Counter()
    with tempfile.TemporaryDirectory(prefix="rq-fuzz-") as tmp:
        pool = [_Worker(Path(tmp) / f"w{i}.gguf") for i in range(workers)]
        gen = mutants(seed_file, header_end, count, seed)
        # one mutant in flight per worker: a simple round robin keeps both cores busy
        for batch in _batches(gen, workers):
            results = _load_batch(pool, batch, timeout)
            for m, res in zip(batch, results):
                kind = res.split()[0]
                outcomes[kind] += 1
                if kind in ("crash", "hang", "error"):
                    log(f"mutant {m.index} ({m.how}): {res}")
                    if keep is not None:
                        keep.mkdir(parents=True, exist_ok=True)
                        (keep / f"mutant-{seed}-{m.index}.gguf").write_bytes(m.data)
        for w in pool:
            w.close()
    return outcomes


def _batches(gen, n):
    batch = []
    for m in gen:
        batch.append(m)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _load_batch(pool, batch, timeout):
    """Start one mutant per worker, then collect the answers."""
    for w, m in zip(pool, batch):
        if w.proc is None or w.proc.poll() is not None:
            w.start()
        w.scratch.write_bytes(m.data)
        w.proc.stdin.write(f"{w.scratch}\n")
        w.proc.stdin.flush()
    return [_answer(w, timeout) for w in pool[:len(batch)]]


def _answer(w: _Worker, timeout: float) -> str:
    """The worker's verdict on its mutant (lines not marked as ours are C's output)."""
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([w.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            w.proc.kill()
            w.proc.wait()
            w.proc = None
            return "hang"
        line = w.proc.stdout.readline()
        if not line:
            code = w.proc.wait()
            w.proc = None
            return f"crash signal {-code}" if code < 0 else f"crash exit {code}"
        if line.startswith("RQFUZZ "):
            return line[len("RQFUZZ "):].strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed-model", type=Path, help="a valid GGUF to mutate (default: the tests' tiny llama)")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--keep", type=Path, help="folder for the mutants that crashed, hung or raised a bug")
    args = ap.parse_args()
    seed_model = args.seed_model
    if seed_model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny_gguf import write_tiny_llama
        seed_model = write_tiny_llama(Path(tempfile.mkdtemp(prefix="rq-fuzz-seed-")) / "tiny.gguf")
    t0 = time.time()
    outcomes = run(seed_model, args.count, args.seed, args.workers, args.timeout, args.keep)
    bad = sum(outcomes[k] for k in ("crash", "hang", "error"))
    print(f"{args.count} mutants of {seed_model.name} (seed {args.seed}) in {time.time() - t0:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
