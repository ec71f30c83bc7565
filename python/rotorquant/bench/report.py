"""The finished cells as rows per pair, a Markdown report and a JSON summary."""
from __future__ import annotations

import time
from typing import Any

from .settings import Settings

_MIB = 2**20


def rows(s: Settings, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per pair; a measurement that is missing (skipped or failed) is None."""
    f16 = results.get(("quality", "f16"))
    out = []
    for pair in s.pairs:
        q = results.get(("quality", pair.label))
        kv = results.get(("kv", pair.label))
        out.append({
            "pair": pair.label, "type_k": pair.k.name, "type_v": pair.v.name,
            "bits_per_element": round(pair.bits_per_element, 4),
            "kv_bytes": kv["kv_bytes"] if kv else None,
            "ppl": q["ppl"] if q else None,
            "ppl_ratio": q["ppl"] / f16["ppl"] if q and f16 else None,
            "kld": q["kld"] if q else None,
            "same_top_p": q["same_top_p"] if q else None,
            "speed": {d: results.get(("speed", pair.label, d)) for d in s.depths},
            "niah": {n: results.get(("niah", pair.label, n)) for n in s.niah_lengths},
        })
    return out


def _f(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown(s: Settings, table: list[dict[str, Any]], command: str) -> str:
    f16 = next((r for r in table if r["pair"] == "f16"), None)
    lines = [f"# rq-bench: {s.model.name}", "",
             f"Measured {time.strftime('%Y-%m-%d')} with `{command}`.", ""]
    if "kv" in s.measures or "quality" in s.measures:
        lines += [f"KV cache at {s.ctx} tokens of context; perplexity with `llama-perplexity -c {s.ppl_ctx}` "
                  "(K and V stored in the named types), KL divergence and top-token agreement against the "
                  "f16 cache.", "",
                  "| K/V | bits/element | KV MiB | vs f16 | PPL | PPL vs f16 | mean KLD | same top token |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in table:
            kv = r["kv_bytes"]
            rel = kv / f16["kv_bytes"] if kv and f16 and f16["kv_bytes"] else None
            lines.append(f"| {r['pair']} | {r['bits_per_element']:.2f} | {_f(kv and kv / _MIB, '.1f')} | "
                         f"{_f(rel, '.3f')} | {_f(r['ppl'], '.3f')} | {_f(r['ppl_ratio'], '.3f')} | "
                         f"{_f(r['kld'], '.5f')} | {_f(r['same_top_p'], '.1f')}{'' if r['same_top_p'] is None else ' %'} |")
        lines.append("")
    if "speed" in s.measures:
        cols = [f"{kind}{s.n_prompt if kind == 'pp' else s.n_gen} @ d{d}" for d in s.depths for kind in ("pp", "tg")]
        lines += [f"Speed, tokens per second (`llama-bench -fa 1 -r {s.reps} -ngl {s.n_gpu_layers}`; "
                  "in brackets: ratio to f16).", "",
                  "| K/V | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for r in table:
            cells = []
            for d in s.depths:
                for kind in ("pp", "tg"):
                    v = r["speed"][d][kind] if r["speed"][d] else None
                    ref = f16["speed"][d][kind] if f16 and f16["speed"][d] else None
                    cells.append(_f(v, ".1f") + (f" ({v / ref:.2f}×)" if v and ref and r is not f16 else ""))
            lines.append(f"| {r['pair']} | " + " | ".join(cells) + " |")
        lines.append("")
    if "niah" in s.measures:
        lines += [f"Needle in a haystack: passphrases found / asked ({s.niah_trials} depths per length).", "",
                  "| K/V | " + " | ".join(f"{n} tok" for n in s.niah_lengths) + " |",
                  "|---|" + "---:|" * len(s.niah_lengths)]
        for r in table:
            lines.append(f"| {r['pair']} | " + " | ".join(
                f"{c['hits']}/{c['trials']}" if c else "—" for c in r["niah"].values()) + " |")
        lines.append("")
    return "\n".join(lines)


def summary(s: Settings, table: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON-ready: settings and rows (depths and lengths as string keys)."""
    settings = {"model": str(s.model), "ctx": s.ctx, "depths": list(s.depths), "n_prompt": s.n_prompt,
                "n_gen": s.n_gen, "reps": s.reps, "ppl_ctx": s.ppl_ctx, "chunks": s.chunks,
                "niah_lengths": list(s.niah_lengths), "niah_trials": s.niah_trials,
                "n_gpu_layers": s.n_gpu_layers, "threads": s.threads, "kv_policy": s.kv_policy,
                "text": str(s.text) if s.text else None, "measures": list(s.measures)}
    return {"settings": settings,
            "rows": [{**r, "speed": {str(k): v for k, v in r["speed"].items()},
                      "niah": {str(k): v for k, v in r["niah"].items()}} for r in table]}
