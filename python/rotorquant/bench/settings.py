"""What an ``rq-bench`` run measures: the K/V pairs and the knobs of each measurement."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import cache_types
from ..cache_types import CacheType

MEASURES = ("kv", "speed", "quality", "niah")
_DEFAULT_TYPES = "f16,q8_0,q4_0,planar3,iso3,planar4,iso4"


@dataclass(frozen=True)
class Pair:
    """The K and V cache types of one configuration."""

    k: CacheType
    v: CacheType

    @property
    def label(self) -> str:
        return self.k.name if self.k == self.v else f"{self.k.name}/{self.v.name}"

    @property
    def bits_per_element(self) -> float:
        """Average of K's and V's: both caches hold the same number of elements."""
        return (self.k.bits_per_element + self.v.bits_per_element) / 2

    @property
    def rotorquant(self) -> bool:
        return self.k.rotorquant or self.v.rotorquant

    @property
    def is_f16(self) -> bool:
        return self.k.name == "f16" and self.v.name == "f16"


F16 = Pair(cache_types.get("f16"), cache_types.get("f16"))


def parse_pairs(spec: str) -> list[Pair]:
    """``"f16,iso3,iso3/q8_0"`` -> pairs: a name alone is the same type for K and V,
    ``K/V`` names both.  Unknown names raise ``ValueError`` listing the valid ones."""
    pairs: list[Pair] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split("/")
        if len(parts) > 2:
            raise ValueError(f"cache pair {item!r}: write K/V, e.g. iso3/q8_0")
        k = cache_types.get(parts[0])
        v = cache_types.get(parts[-1])
        if Pair(k, v) not in pairs:
            pairs.append(Pair(k, v))
    if not pairs:
        raise ValueError("no cache types given")
    return pairs


_INT_MAX = 2**31 - 1  # the tools read their counts into C ints


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= _INT_MAX:
        raise ValueError(f"{name} must be an integer from {minimum} to {_INT_MAX}, not {value!r}")
    return value


@dataclass
class Settings:
    """One benchmark run.  Every field is part of the identity of the cells it affects, so
    a rerun with a changed field measures those cells again and keeps the rest."""

    model: str | os.PathLike[str]
    pairs: list[Pair] = field(default_factory=lambda: parse_pairs(_DEFAULT_TYPES))
    ctx: int = 4096                      # context of the KV-bytes figure; longest NIAH haystack
    depths: tuple[int, ...] = (0, 16384, 65536)
    text: str | os.PathLike[str] | None = None  # perplexity text and haystack; None: built-in sample
    n_gpu_layers: int = 99
    threads: int | None = None
    n_prompt: int = 512                  # llama-bench -p
    n_gen: int = 128                     # llama-bench -n
    reps: int = 2                        # llama-bench -r
    ppl_ctx: int = 512                   # llama-perplexity -c
    chunks: int = 8                      # llama-perplexity --chunks (fewer if the text is short)
    niah_lengths: tuple[int, ...] | None = None  # None: ctx/4, ctx/2, ctx
    niah_trials: int = 3                 # needle depths per length
    kv_policy: str = "auto"              # for pairs with a rotor type: auto | none | FILE
    measures: tuple[str, ...] = MEASURES
    out: str | os.PathLike[str] | None = None  # None: rq-bench-<model name>/
    plots: bool = True

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        if not self.model.is_file():
            raise FileNotFoundError(f"model file not found: {self.model}")
        if not self.pairs:
            raise ValueError("no cache types given")
        _positive("ctx", self.ctx, 256)
        self.depths = tuple(sorted({_positive("depth", d, 0) for d in self.depths}))
        if "speed" in self.measures and not self.depths:
            raise ValueError("depths: give at least one depth for the speed tests (0: an empty cache)")
        for name in ("n_prompt", "n_gen", "reps", "chunks", "niah_trials"):
            _positive(name, getattr(self, name))
        _positive("ppl_ctx", self.ppl_ctx, 16)
        if self.threads is not None:
            _positive("threads", self.threads)
        _positive("n_gpu_layers", self.n_gpu_layers, -1)
        if self.niah_lengths is None:
            self.niah_lengths = tuple(sorted({max(256, self.ctx // 4), max(256, self.ctx // 2), self.ctx}))
        self.niah_lengths = tuple(sorted({_positive("NIAH length", n, 128) for n in self.niah_lengths}))
        if "niah" in self.measures and not self.niah_lengths:
            raise ValueError("niah_lengths: give at least one haystack length")
        unknown = set(self.measures) - set(MEASURES)
        if unknown:
            raise ValueError(f"unknown measure(s) {sorted(unknown)}; choose from {', '.join(MEASURES)}")
        if self.text is not None:
            self.text = Path(self.text)
            if not self.text.is_file():
                raise FileNotFoundError(f"text file not found: {self.text}")
        self.out = Path(self.out) if self.out is not None else Path(f"rq-bench-{self.model.stem}")
        if self.kv_policy.lower() not in ("auto", "none") and not any(p.rotorquant for p in self.pairs):
            raise ValueError(f"kv_policy {self.kv_policy}: a KV policy applies to pairs with a rotor type, "
                             f"and none of {','.join(p.label for p in self.pairs)} has one")
        if "quality" in self.measures and F16 not in self.pairs:
            self.pairs = [F16, *self.pairs]  # KL divergence is measured against it
