#!/usr/bin/env python3
"""Mutation fuzzing of what users feed us: GGUF models and safetensors checkpoints.

Mutants of a valid seed file (fixed seed, so a run is reproducible) are handed one at a
time to worker processes, which give each to the code a user would run on it:

* ``gguf``: ``rotorquant.Llama(path)``.  Mutants: truncations, boundary integers (0, 1,
  -1, 2^31 +- 1, 2^32 - 1, 2^63 - 1, ...) as 4 or 8 bytes at aligned header offsets, bursts
  of 1-8 flipped bits (90% in the header: metadata and tensor table).
* ``safetensors``: ``rq-convert CHECKPOINT --dry-run`` (every header is read and checked,
  the converter is asked about the architecture; nothing is written).  Mutants:
  truncations, boundary header lengths, bit flips in the JSON header, and JSON edits
  (numbers replaced by -1, 2^64, 1e308, NaN; dtypes, shapes and offsets of the wrong type;
  a duplicated key; deep nesting).

Outcomes: ``ok`` (accepted), ``refused`` (our exception, or an error exit with a message),
``crash`` (the worker died of a signal), ``hang`` (no answer within the time limit),
``error`` (another Python exception: a traceback instead of a message).  The last three
are failures; their mutants are kept under ``--keep DIR``.

    python tools/fuzz.py gguf [--count 10000] [--seed 1] [--workers 2] [--keep findings/]
    python tools/fuzz.py safetensors [--count 2000] ...
"""
from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
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

_GGUF_WORKER = r"""
import logging, sys
import rotorquant
from rotorquant import Llama
logging.getLogger("rotorquant").setLevel(logging.CRITICAL)
for line in sys.stdin:
    try:
        with Llama(line.rstrip("\n"), n_ctx=32, n_threads=1, n_batch=32):
            pass
        out = "ok"
    except (rotorquant.RotorQuantError, ValueError, FileNotFoundError) as exc:
        out = "refused " + type(exc).__name__
    except BaseException as exc:
        out = "error " + type(exc).__name__ + ": " + str(exc).replace("\n", " ")[:300]
    sys.stdout.write("RQFUZZ " + out + "\n")
    sys.stdout.flush()
"""

_SAFETENSORS_WORKER = r"""
import contextlib, io, sys, traceback
from rotorquant.cli import convert
for line in sys.stdin:
    folder = line.rstrip("\n")
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = convert.main([folder, "--dry-run", "-o", folder + "/out.gguf"])
        out = "ok" if code == 0 else ("refused exit %d" % code if "rq-convert: error:" in err.getvalue()
                                      else "error exit %d without a message" % code)
    except SystemExit as exc:
        out = "refused exit %s" % exc.code
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


def gguf_mutants(seed_file: bytes, header_end: int, count: int, seed: int):
    """A third truncations (mostly inside the header), a third boundary integers at
    4-byte-aligned header offsets, a third bit flips (90% in the header)."""
    rng = random.Random(seed)
    for i in range(count):
        data = bytearray(seed_file)
        if i % 3 == 0:
            cut = rng.randrange(header_end + 64) if rng.random() < 0.9 else rng.randrange(len(data))
            yield Mutant(i, f"truncate at {cut}", bytes(data[:cut]))
        elif i % 3 == 1:
            at = rng.randrange(0, header_end - 8, 4)
            value = rng.choice(INTERESTING)
            width = rng.choice((4, 8)) if value < (1 << 32) else 8
            data[at:at + width] = struct.pack("<Q" if width == 8 else "<I", value & ((1 << (8 * width)) - 1))
            yield Mutant(i, f"write {value:#x} as {width} bytes at {at}", bytes(data))
        else:
            yield Mutant(i, _flip(rng, data, header_end), bytes(data))


def _flip(rng: random.Random, data: bytearray, header_end: int) -> str:
    flips = []
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(header_end) if rng.random() < 0.9 else rng.randrange(len(data))
        bit = rng.randrange(8)
        data[at] ^= 1 << bit
        flips.append(f"{at}.{bit}")
    return "flip bits " + ",".join(flips)


_JSON_VALUES = [-1, 0, 2**64, 2**63, 1e308, float("nan"), float("inf"), "x", None, True, [], {}, [1, 2, 3], [-5, 2],
                ["a", "b"]]


def safetensors_mutants(seed_file: bytes, count: int, seed: int):
    """A quarter each: truncations, boundary header lengths, bit flips in the JSON header,
    structured JSON edits (re-serialized with a correct length prefix)."""
    rng = random.Random(seed)
    (n,) = struct.unpack("<Q", seed_file[:8])
    header = json.loads(seed_file[8:8 + n])
    body = seed_file[8 + n:]
    names = [k for k in header if k != "__metadata__"]
    for i in range(count):
        kind = i % 4
        if kind == 0:
            cut = rng.randrange(8 + n + 64) if rng.random() < 0.8 else rng.randrange(len(seed_file))
            yield Mutant(i, f"truncate at {cut}", seed_file[:cut])
        elif kind == 1:
            value = rng.choice(INTERESTING + [n - 1, n + 1, n + len(body)])
            yield Mutant(i, f"header length {value:#x}", struct.pack("<Q", value & (2**64 - 1)) + seed_file[8:])
        elif kind == 2:
            data = bytearray(seed_file)
            yield Mutant(i, _flip(rng, data, 8 + n), bytes(data))
        else:
            h = json.loads(json.dumps(header))
            name = rng.choice(names)
            what = rng.choice(("dtype", "shape", "data_offsets", "entry", "duplicate", "nest", "dim", "offset"))
            value = rng.choice(_JSON_VALUES)
            if what in ("dtype", "shape", "data_offsets"):
                h[name][what] = value
                text = json.dumps(h)
            elif what == "entry":
                h[name] = value
                text = json.dumps(h)
            elif what == "dim" and h[name]["shape"]:
                h[name]["shape"][rng.randrange(len(h[name]["shape"]))] = value
                text = json.dumps(h)
            elif what == "offset":
                h[name]["data_offsets"][rng.randrange(2)] = value
                text = json.dumps(h)
            elif what == "duplicate":
                text = json.dumps(h)[:-1] + ", " + json.dumps(name) + ": " + json.dumps(h[name]) + "}"
            else:
                text = json.dumps(h)[:-1] + ', "deep": ' + "[" * 100000 + "]" * 100000 + "}"
            raw = text.encode()
            yield Mutant(i, f"json {what} of {name!r} = {value!r}"[:120], struct.pack("<Q", len(raw)) + raw + body)


class _Worker:
    def __init__(self, script: str):
        self.script, self.proc = script, None

    def start(self):
        # GGML_NO_BACKTRACE: an abort would otherwise attach gdb and print into our pipe
        env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", self.script], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env)

    def send(self, target: str):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(f"{target}\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float) -> str:
        """The worker's verdict (lines not marked as ours are C's output)."""
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.proc.kill()
                self.proc.wait()
                self.proc = None
                return "hang"
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                self.proc = None
                return f"crash signal {-code}" if code < 0 else f"crash exit {code}"
            if line.startswith("RQFUZZ "):
                return line[len("RQFUZZ "):].strip()

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _run(mutants, script: str, place, workers: int, timeout: float, keep: Path | None, suffix: str,
         seed: int, log) -> Counter:
    """Feed mutants to the workers, one in flight per worker; ``place(worker_index, data)``
    writes a mutant where worker ``i`` reads it and returns what to send."""
    outcomes: Counter = Counter()
    pool = [_Worker(script) for _ in range(workers)]
    try:
        batch = []
        for m in list(mutants) + [None]:
            if m is not None:
                batch.append(m)
                if len(batch) < workers:
                    continue
            for i, b in enumerate(batch):
                pool[i].send(place(i, b.data))
            for i, b in enumerate(batch):
                res = pool[i].answer(timeout)
                kind = res.split()[0]
                outcomes[kind] += 1
                if kind in ("crash", "hang", "error"):
                    log(f"mutant {b.index} ({b.how}): {res}")
                    if keep is not None:
                        keep.mkdir(parents=True, exist_ok=True)
                        (keep / f"mutant-{seed}-{b.index}{suffix}").write_bytes(b.data)
            batch = []
    finally:
        for w in pool:
            w.close()
    return outcomes


def run_gguf(seed_path: Path, count: int, seed: int = 1, workers: int = 2, timeout: float = 20.0,
             keep: Path | None = None, log=print) -> Counter:
    """Load ``count`` mutants of the GGUF ``seed_path`` with ``Llama``; outcome counts."""
    from rotorquant.gguf_check import read_header

    with tempfile.TemporaryDirectory(prefix="rq-fuzz-") as tmp:
        def place(i, data):
            path = Path(tmp) / f"w{i}.gguf"
            path.write_bytes(data)
            return str(path)

        return _run(gguf_mutants(seed_path.read_bytes(), read_header(seed_path).data_offset, count, seed),
                    _GGUF_WORKER, place, workers, timeout, keep, ".gguf", seed, log)


def run_safetensors(checkpoint: Path, count: int, seed: int = 1, workers: int = 2, timeout: float = 60.0,
                    keep: Path | None = None, log=print) -> Counter:
    """``rq-convert --dry-run`` on ``count`` copies of ``checkpoint`` whose (single)
    safetensors file is mutated; outcome counts."""
    (weights,) = sorted(checkpoint.glob("*.safetensors"))
    with tempfile.TemporaryDirectory(prefix="rq-fuzz-") as tmp:
        folders = []
        for i in range(workers):
            folder = Path(tmp) / f"w{i}"
            shutil.copytree(checkpoint, folder, ignore=shutil.ignore_patterns("*.safetensors"))
            folders.append(folder)

        def place(i, data):
            (folders[i] / weights.name).write_bytes(data)
            return str(folders[i])

        return _run(safetensors_mutants(weights.read_bytes(), count, seed), _SAFETENSORS_WORKER, place, workers,
                    timeout, keep, ".safetensors", seed, log)


def tiny_checkpoint(out: Path) -> Path:
    """A 2-layer random LlamaForCausalLM (tiny vocabulary) in one safetensors file."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", choices=("gguf", "safetensors"))
    ap.add_argument("--seed-file", type=Path, help="a valid GGUF, or a checkpoint folder with one safetensors "
                    "file (default: a tiny random llama)")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--keep", type=Path, help="folder for the mutants that crashed, hung or raised a bug")
    args = ap.parse_args()
    seed_file = args.seed_file
    made = Path(tempfile.mkdtemp(prefix="rq-fuzz-seed-"))
    if seed_file is None and args.target == "gguf":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny_gguf import write_tiny_llama
        seed_file = write_tiny_llama(made / "tiny.gguf")
    elif seed_file is None:
        seed_file = tiny_checkpoint(made / "tiny-llama")
    t0 = time.time()
    run = run_gguf if args.target == "gguf" else run_safetensors
    outcomes = run(seed_file, args.count, args.seed, args.workers, keep=args.keep)
    shutil.rmtree(made, ignore_errors=True)
    bad = sum(outcomes[k] for k in ("crash", "hang", "error"))
    print(f"{args.count} {args.target} mutants of {seed_file.name} (seed {args.seed}) in {time.time() - t0:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
