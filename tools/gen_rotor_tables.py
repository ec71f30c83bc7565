#!/usr/bin/env python3
"""Generate the RotorQuant rotation tables and codebooks: the single source of truth.

Writes
  csrc/rotorquant/rq-tables.h            included by every backend (CPU, CUDA)
  python/rotorquant/rotor/_tables.py     the same numbers for the Python reference

Everything is derived here, deterministically, with the standard library only:

* Block: QK = 64 elements (see docs/ROTORQUANT.md for why 64).
* planar: 32 Givens angles theta_p = 2*pi*U_p, U_p from splitmix64(SEED).
* iso: 16 unit quaternions, each 4 Box-Muller normals from the same stream,
  normalised in double and rounded to float32; |norm - 1| < 1e-6 is asserted.
* Codebooks: Lloyd-Max levels for N(0, 1/QK) -- the distribution of one coordinate
  of a random unit vector in QK dimensions -- 8 levels (3-bit) and 16 (4-bit),
  plus the decision thresholds (midpoints).  A 4-level (2-bit) codebook goes to the
  Python module only: it serves the transformers cache (rotorquant.hf_cache), which has a
  2-bit setting that the C cache types do not.

Run `python tools/gen_rotor_tables.py` after changing anything here; `--check`
fails if the committed files differ (the tests run it).
"""
from __future__ import annotations

import argparse
import math
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "csrc/rotorquant/rq-tables.h"
PYMOD = ROOT / "python/rotorquant/rotor/_tables.py"

QK = 64
SEED = 0x524F544F52  # "ROTOR"


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


class SplitMix64:
    def __init__(self, seed: int):
        self.state = seed & 0xFFFFFFFFFFFFFFFF

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)

    def uniform(self) -> float:
        """Uniform in (0, 1): 53 random bits, never exactly 0."""
        return ((self.next() >> 11) + 0.5) / 2.0**53


def planar_table(rng: SplitMix64) -> tuple[list[float], list[float]]:
    angles = [2.0 * math.pi * rng.uniform() for _ in range(QK // 2)]
    return [f32(math.cos(a)) for a in angles], [f32(math.sin(a)) for a in angles]


def iso_table(rng: SplitMix64) -> list[tuple[float, ...]]:
    quats = []
    for _ in range(QK // 4):
        normals = []
        while len(normals) < 4:
            u1, u2 = rng.uniform(), rng.uniform()
            r = math.sqrt(-2.0 * math.log(u1))
            normals += [r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)]
        n = math.sqrt(sum(x * x for x in normals))
        q = tuple(f32(x / n) for x in normals)
        err = abs(math.sqrt(sum(f32(x * x) for x in q)) - 1.0)
        assert err < 1e-6, f"quaternion not unit: {err}"
        quats.append(q)
    return quats


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def lloyd_max(levels: int, sigma: float, iters: int = 20000) -> list[float]:
    """Optimal scalar quantiser levels for N(0, sigma^2) (Lloyd's algorithm)."""
    c = [sigma * (2.0 * (i + 0.5) / levels - 1.0) * 2.5 for i in range(levels)]
    for _ in range(iters):
        t = [-math.inf] + [(c[i] + c[i + 1]) / 2 for i in range(levels - 1)] + [math.inf]
        new = []
        for i in range(levels):
            a, b = t[i] / sigma, t[i + 1] / sigma
            mass = _Phi(b) - _Phi(a)
            new.append(sigma * (_phi(a) - _phi(b)) / mass)
        if max(abs(x - y) for x, y in zip(c, new)) < 1e-15:
            c = new
            break
        c = new
    c = [(x - y) / 2 for x, y in zip(c, reversed(c))]  # exact symmetry
    return [f32(x) for x in c]


def gaussian_mse(levels: list[float], sigma: float, n: int = 20001) -> float:
    """E[(X - Q(X))^2] / sigma^2 for X ~ N(0, sigma^2), by quadrature."""
    lo, hi = -8 * sigma, 8 * sigma
    h = (hi - lo) / (n - 1)
    total = 0.0
    for i in range(n):
        x = lo + i * h
        q = min(levels, key=lambda c: abs(x - c))
        w = 0.5 if i in (0, n - 1) else 1.0
        total += w * (x - q) ** 2 * _phi(x / sigma) / sigma
    return total * h / sigma**2


# The public fork's 4-bit table, for N(0, 1/128); scaled by sqrt(2) for our QK = 64.
FORK4 = [0.006938, 0.020989, 0.035597, 0.051262, 0.068756, 0.089527, 0.117195, 0.173926]


def midpoints(c: list[float]) -> list[float]:
    return [f32((c[i] + c[i + 1]) / 2) for i in range(len(c) - 1)]


def build() -> dict:
    rng = SplitMix64(SEED)
    cos, sin = planar_table(rng)
    quats = iso_table(rng)
    sigma = 1.0 / math.sqrt(QK)
    c3 = lloyd_max(8, sigma)
    c4 = lloyd_max(16, sigma)
    c2 = lloyd_max(4, sigma)
    fork4 = [f32(-x * math.sqrt(2)) for x in reversed(FORK4)] + [f32(x * math.sqrt(2)) for x in FORK4]
    mse = {"lloyd_max_2": gaussian_mse(c2, sigma), "lloyd_max_3": gaussian_mse(c3, sigma), "lloyd_max_4": gaussian_mse(c4, sigma),
           "fork_4": gaussian_mse(fork4, sigma)}
    assert mse["lloyd_max_4"] < mse["fork_4"], "ship the better 4-bit table"
    return dict(cos=cos, sin=sin, quats=quats, c2=c2, m2=midpoints(c2), c3=c3, m3=midpoints(c3), c4=c4, m4=midpoints(c4),
                mse=mse)


def _c_float(x: float) -> str:
    text = f"{x:.9g}"
    return text + ("f" if any(ch in text for ch in ".en") else ".0f")


def _floats(xs) -> str:
    return ", ".join(_c_float(x) for x in xs)


def render_header(t: dict) -> str:
    quat_rows = ",\n    ".join("{" + _floats(q) + "}" for q in t["quats"])
    return f"""// Generated by tools/gen_rotor_tables.py -- do not edit.
// RotorQuant rotation tables and codebooks, shared by every backend.
// Relative MSE on N(0, 1/{QK}) coordinates: 3-bit Lloyd-Max {t['mse']['lloyd_max_3']:.5f};
// 4-bit Lloyd-Max {t['mse']['lloyd_max_4']:.5f} (shipped) vs the public fork's 4-bit table
// {t['mse']['fork_4']:.5f} (scaled to QK = {QK}).
#pragma once

#define RQ_QK {QK}
#define RQ_TABLE_SEED 0x{SEED:X}ULL

// Storage of the tables: host code keeps them static const; a CUDA translation unit
// defines RQ_TABLE as `static __constant__` before including this header, so every
// backend reads the very same numbers.
#ifndef RQ_TABLE
#define RQ_TABLE static const
#endif

// planar: pair p of a block is rotated by angle theta_p (cos, sin).
RQ_TABLE float rq_planar_cos[RQ_QK / 2] = {{ {_floats(t['cos'])} }};
RQ_TABLE float rq_planar_sin[RQ_QK / 2] = {{ {_floats(t['sin'])} }};

// iso: quartet g of a block is left-multiplied by the unit quaternion (w, x, y, z).
RQ_TABLE float rq_iso_quat[RQ_QK / 4][4] = {{
    {quat_rows}
}};

// Codebooks (sorted) and decision thresholds: index = number of thresholds < y.
RQ_TABLE float rq_levels3[8]  = {{ {_floats(t['c3'])} }};
RQ_TABLE float rq_bounds3[7]  = {{ {_floats(t['m3'])} }};
RQ_TABLE float rq_levels4[16] = {{ {_floats(t['c4'])} }};
RQ_TABLE float rq_bounds4[15] = {{ {_floats(t['m4'])} }};
"""


def render_python(t: dict) -> str:
    return f'''"""Generated by tools/gen_rotor_tables.py -- do not edit.  Same numbers as rq-tables.h."""
QK = {QK}
SEED = 0x{SEED:X}
PLANAR_COS = {[float(x) for x in t["cos"]]!r}
PLANAR_SIN = {[float(x) for x in t["sin"]]!r}
ISO_QUAT = {[list(map(float, q)) for q in t["quats"]]!r}
LEVELS2 = {list(map(float, t["c2"]))!r}  # Python only: the 2-bit setting of the transformers cache
BOUNDS2 = {list(map(float, t["m2"]))!r}
LEVELS3 = {list(map(float, t["c3"]))!r}
BOUNDS3 = {list(map(float, t["m3"]))!r}
LEVELS4 = {list(map(float, t["c4"]))!r}
BOUNDS4 = {list(map(float, t["m4"]))!r}
RELATIVE_MSE_GAUSSIAN = {t["mse"]!r}
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed files are stale")
    args = ap.parse_args()
    t = build()
    outputs = {HEADER: render_header(t), PYMOD: render_python(t)}
    stale = [p for p, text in outputs.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)} (run tools/gen_rotor_tables.py)", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(outputs[p])
        print(f"wrote {p.relative_to(ROOT)}")
    print(f"relative MSE: {t['mse']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
