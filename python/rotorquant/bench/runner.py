"""Run every cell of a benchmark that is not already done, then write the reports."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from ..kvpolicy import locate
from . import binaries, niah, report
from .progress import Progress
from .settings import F16, Pair, Settings
from .._files import write_atomic
from .store import ResultStore


@dataclass
class Outcome:
    """What a run produced: rows per pair, the files written, the cells that failed."""

    rows: list[dict[str, Any]]
    files: list[Path]
    failures: list[tuple[str, str]] = field(default_factory=list)
    measured: int = 0
    kept: int = 0


@dataclass(frozen=True)
class _Cell:
    slot: tuple            # where the value goes in the report: ("speed", "iso3", 16384), ...
    key: str               # what it depends on, spelled out (results.json)
    label: str             # for the progress line
    measure: Callable[[], dict]
    writes: Path | None = None  # a file later cells read (f16's logits): measured again if it is gone
    reads: Path | None = None   # a file an earlier cell writes: without it this cell cannot run


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _text_file(s: Settings, out: Path) -> Path:
    """The benchmark text: --text, or the built-in calibration sample copied next to the results."""
    if s.text is not None:
        return Path(s.text)
    sample = resources.files("rotorquant.kvpolicy").joinpath("data/calibration.txt").read_bytes()
    path = out / "builtin-sample.txt"
    if not path.is_file() or path.read_bytes() != sample:
        write_atomic(path, sample)
    return path


def _kv_bytes(s: Settings, pair: Pair, policy: Path | None) -> dict:
    from ..plan import plan

    p = plan(s.model, n_ctx=s.ctx, cache_type_k=pair.k.name, cache_type_v=pair.v.name,
             n_gpu_layers=s.n_gpu_layers, flash_attn="on", kv_policy=policy if policy else "none")
    return {"kv_bytes": sum(d.kv for d in p.devices), "recurrent_bytes": sum(d.recurrent for d in p.devices),
            "n_ctx": p.n_ctx}


def _cells(s: Settings, text: Path | None, n_tokens: int, policy: Path | None) -> list[_Cell]:
    th = _digest(text) if text is not None else None
    pol = {True: f"policy={_digest(policy)}" if policy else "policy=none", False: "policy=none"}
    cells: list[_Cell] = []
    pairs = s.pairs
    if "kv" in s.measures:
        for pr in pairs:
            pp = policy if pr.rotorquant else None
            cells.append(_Cell(("kv", pr.label), f"kv {pr.label} ctx={s.ctx} ngl={s.n_gpu_layers} {pol[pr.rotorquant]}",
                               f"KV bytes {pr.label}", lambda pr=pr, pp=pp: _kv_bytes(s, pr, pp)))
    if "quality" in s.measures:
        chunks = min(s.chunks, n_tokens // s.ppl_ctx)
        common = f"c={s.ppl_ctx} chunks={chunks} text={th} ngl={s.n_gpu_layers}"
        f16_key = f"quality f16 {common} policy=none"
        base = Path(s.out) / f"f16-logits-{_key_digest(f16_key)}.kld"  # one file per reference measurement
        for pr in [F16, *[p for p in pairs if p != F16]]:  # f16 first: it writes the reference logits
            pp = policy if pr.rotorquant else None
            cells.append(_Cell(("quality", pr.label), f"quality {pr.label} {common} {pol[pr.rotorquant]}",
                               f"perplexity {pr.label}",
                               lambda pr=pr, pp=pp: binaries.perplexity(s, pr, text, chunks, base, pp),
                               writes=base if pr == F16 else None, reads=None if pr == F16 else base))
    if "speed" in s.measures:
        for pr in pairs:
            pp = policy if pr.rotorquant else None
            for d in s.depths:
                key = (f"speed {pr.label} d={d} p={s.n_prompt} n={s.n_gen} r={s.reps} ngl={s.n_gpu_layers} "
                       f"t={s.threads or 'default'} {pol[pr.rotorquant]}")
                cells.append(_Cell(("speed", pr.label, d), key, f"speed {pr.label} @ depth {d}",
                                   lambda pr=pr, pp=pp, d=d: binaries.speed(s, pr, d, pp)))
    if "niah" in s.measures:
        cases: list[niah.Trial] = []

        def prompts() -> list[niah.Trial]:  # built on first use: a rerun with all cells done skips it
            if not cases:
                cases.extend(niah.trials(s, text.read_text(errors="replace"), _tokenizer(s)))
            return cases

        for pr in pairs:
            pp = policy if pr.rotorquant else None
            for n in s.niah_lengths:
                cells.append(_Cell(("niah", pr.label, n),
                                   f"niah {pr.label} len={n} trials={s.niah_trials} text={th} ngl={s.n_gpu_layers} "
                                   f"{pol[pr.rotorquant]}", f"needle {pr.label} @ {n} tokens",
                                   lambda pr=pr, pp=pp, n=n: niah.score(s, pr, n, prompts(), pp)))
    return cells


def _tokenizer(s: Settings) -> Callable[[str], list[int]]:
    from ..llama import Llama

    vocab = Llama(s.model, vocab_only=True)
    return lambda text: vocab.tokenize(text, add_special=False)


def run(s: Settings, *, command: str = "rq-bench", progress_stream=None) -> Outcome:
    """Measure what is missing from ``s.out/results.json``, then write ``results.md``, the
    summary in ``results.json`` and the plots.  A failed cell is reported and skipped (a
    rerun tries it again); Ctrl-C keeps every cell finished so far."""
    out = Path(s.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out, Path(s.model))
    policy = locate.resolve(s.kv_policy, s.model) if any(p.rotorquant for p in s.pairs) else None
    text = _text_file(s, out) if {"quality", "niah"} & set(s.measures) else None
    n_tokens = 0
    if "quality" in s.measures:
        n_tokens = len(_tokenizer(s)(text.read_text(errors="replace")))
        if n_tokens < 2 * s.ppl_ctx:
            raise ValueError(f"{text} has {n_tokens} tokens; perplexity with a context of {s.ppl_ctx} needs at "
                             f"least {2 * s.ppl_ctx}: pass a longer --text or a smaller --ppl-ctx")
    cells = _cells(s, text, n_tokens, policy)
    result = Outcome(rows=[], files=[])
    values: dict[tuple, dict] = {}
    bar = Progress(len(cells), progress_stream)
    if store.discarded:
        bar.note(f"{store.path} held {store.discarded} measurements of another model file (or of this one "
                 "before it changed); they are not reused")
    for cell in cells:
        kept = store.get(cell.key)
        if kept is not None and (cell.writes is None or cell.writes.is_file()):
            values[cell.slot] = kept
            result.kept += 1
            bar.finish(cell.label, "kept")
            continue
        if cell.reads is not None and not cell.reads.is_file():
            why = "needs the f16 reference logits, whose measurement failed"
            result.failures.append((cell.label, why))
            bar.finish(cell.label, f"skipped: {why}")
            continue
        bar.start(cell.label)
        try:
            values[cell.slot] = cell.measure()
        except (binaries.ToolFailed, OSError, ValueError, RuntimeError) as exc:
            result.failures.append((cell.label, str(exc)))
            bar.finish(cell.label, f"failed: {str(exc).splitlines()[0]}")
            continue
        store.put(cell.key, values[cell.slot])
        result.measured += 1
        bar.finish(cell.label, "done")

    result.rows = report.rows(s, values)
    summary = report.summary(s, result.rows)
    store.save(summary)
    md = out / "results.md"
    write_atomic(md, report.markdown(s, result.rows, command) + "\n")
    result.files += [store.path, md]
    if s.plots:
        from . import plots

        title = Path(s.model).name
        for made in (plots.quality(result.rows, out / "quality.png", title),
                     plots.decode(result.rows, out / "decode.png", title)):
            if made:
                result.files.append(made)
    return result
