"""PNG plots of a run: quality against bits per element, decode speed against depth.

matplotlib (the ``rotorquant[bench]`` extra) is imported here only, with the Agg
backend: plots are files, never windows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'rotorquant[bench]' (or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def quality(table: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Perplexity ratio and mean KL divergence to f16 against bits per element."""
    pts = [r for r in table if r["ppl_ratio"] is not None]
    if not pts:
        return None
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    for r in pts:
        a.scatter(r["bits_per_element"], r["ppl_ratio"])
        a.annotate(r["pair"], (r["bits_per_element"], r["ppl_ratio"]), textcoords="offset points", xytext=(4, 4))
        if r["kld"] and r["kld"] > 0:
            b.scatter(r["bits_per_element"], r["kld"])
            b.annotate(r["pair"], (r["bits_per_element"], r["kld"]), textcoords="offset points", xytext=(4, 4))
    a.set(xlabel="bits per cached element (K and V average)", ylabel="perplexity / f16 perplexity")
    b.set(xlabel="bits per cached element (K and V average)", ylabel="mean KL divergence to f16")
    if any(r["kld"] and r["kld"] > 0 for r in pts):
        b.set_yscale("log")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def decode(table: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Decode (and prefill) tokens per second against the tokens already in the cache."""
    lines = [(r["pair"], sorted((d, c) for d, c in r["speed"].items() if c)) for r in table]
    lines = [(label, pts) for label, pts in lines if pts]
    if not lines:
        return None
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    for label, pts in lines:
        depths = [d for d, _ in pts]
        a.plot(depths, [c["tg"] for _, c in pts], marker="o", label=label)
        b.plot(depths, [c["pp"] for _, c in pts], marker="o", label=label)
    a.set(xlabel="depth (tokens in the cache)", ylabel="decode tokens/s")
    b.set(xlabel="depth (tokens in the cache)", ylabel="prefill tokens/s")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    a.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    import io

    from .._files import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return path
