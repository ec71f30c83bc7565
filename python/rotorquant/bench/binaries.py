"""The bundled ``llama-bench`` and ``llama-perplexity``, run for one K/V pair.

Both run through ``rq-run``'s argument checks (``cli.tool_args.prepare``), with flash
attention on (a quantized V cache needs it) and the KV policy passed explicitly: the
one ``rq-bench`` resolved for pairs with a rotor type, none for the others (an
``RQ_KV_POLICY`` in the caller's environment is not inherited).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from ..cli.tool_args import TOOLS, prepare
from .settings import Pair, Settings


class ToolFailed(RuntimeError):
    """A bundled tool exited with an error; the message ends with the tail of its output."""


def _command(tool: str, args: list[str]) -> list[str]:
    from .._native import BIN_DIR

    exe = BIN_DIR / TOOLS[tool]
    if not exe.is_file():
        raise FileNotFoundError(f"{exe} is missing: this rotorquant install is incomplete; reinstall it")
    return [str(exe), *prepare(tool, args)]


def _run(cmd: list[str], env: dict[str, str], timeout: float | None) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s") from None
    log = out.stdout + out.stderr
    if out.returncode != 0:
        raise ToolFailed(f"{Path(cmd[0]).name} exited with status {out.returncode}:\n" + "\n".join(log.splitlines()[-15:]))
    return log if cmd[0].endswith("llama-perplexity") else out.stdout


def _env(policy: Path | None, for_bench: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RQ_KV_POLICY"}
    if policy is not None and for_bench:
        env["RQ_KV_POLICY"] = str(policy)
    return env


def _common(s: Settings, pair: Pair) -> list[str]:
    args = ["-m", str(s.model), "-ctk", pair.k.name, "-ctv", pair.v.name, "-ngl", str(s.n_gpu_layers)]
    return args + (["-t", str(s.threads)] if s.threads else [])


def speed(s: Settings, pair: Pair, depth: int, policy: Path | None, timeout: float | None = None) -> dict:
    """Prefill (``-p``) and decode (``-n``) tokens per second with ``depth`` tokens already
    in the cache: ``{"pp": ..., "pp_sd": ..., "tg": ..., "tg_sd": ...}``."""
    args = _common(s, pair) + ["-fa", "1", "-p", str(s.n_prompt), "-n", str(s.n_gen), "-d", str(depth),
                               "-r", str(s.reps), "-o", "json"]  # the policy: in the environment
    out = _run(_command("bench", args), _env(policy, True), timeout)
    start = out.find("[")
    try:
        rows = json.loads(out[start:]) if start >= 0 else None
    except ValueError:
        rows = None
    if not isinstance(rows, list):
        raise ToolFailed(f"llama-bench printed no JSON results:\n{out[-2000:]}")
    got = {}
    for row in rows:
        kind = "pp" if row.get("n_prompt", 0) > 0 else "tg"
        got[kind], got[kind + "_sd"] = float(row["avg_ts"]), float(row["stddev_ts"])
        if row.get("type_k") != pair.k.name or row.get("type_v") != pair.v.name:
            raise ToolFailed(f"llama-bench ran K {row.get('type_k')} / V {row.get('type_v')}, not {pair.label}")
    if set(got) != {"pp", "pp_sd", "tg", "tg_sd"}:
        raise ToolFailed(f"llama-bench results lack a test: {rows}")
    return got


_KV_SIZES = re.compile(r"K \((\w+)\):\s*([\d.]+) MiB, V \((\w+)\):\s*([\d.]+) MiB")


def _number(pattern: str, log: str) -> float | None:
    m = re.search(pattern, log)
    return float(m.group(1)) if m else None


def perplexity(s: Settings, pair: Pair, text: Path, chunks: int, base: Path, policy: Path | None,
               timeout: float | None = None) -> dict:
    """Perplexity over ``chunks`` windows of ``s.ppl_ctx`` tokens.  The f16 pair writes the
    reference logits to ``base``; every other pair is scored against them (KL divergence,
    how often the top token agrees).  The K/V types llama.cpp logged are checked: the
    figures are of a cache that really stored them."""
    args = _common(s, pair) + ["-f", str(text), "-c", str(s.ppl_ctx), "--chunks", str(chunks), "-fa", "on",
                               "-lv", "4", "--kl-divergence-base", str(base)]
    if not pair.is_f16:
        args.append("--kl-divergence")
    args += ["--kv-policy", str(policy) if policy else "none"]
    log = _run(_command("perplexity", args), _env(None, False), timeout)
    sizes = _KV_SIZES.findall(log)
    if not sizes:
        raise ToolFailed("llama-perplexity did not log its KV cache sizes")
    if policy is None and any(k != pair.k.name or v != pair.v.name for k, _, v, _ in sizes):
        raise ToolFailed(f"the KV cache was allocated as {sizes}, not K {pair.k.name} / V {pair.v.name}")
    if pair.is_f16:
        ppl, kld, top = _number(r"Final estimate: PPL = ([\d.]+|inf|nan)", log), 0.0, 100.0
    else:
        ppl = _number(r"Mean PPL\(Q\)\s*:\s*([\d.]+|inf|nan)", log)
        kld = _number(r"Mean\s+KLD:\s*([-\d.]+)", log)
        top = _number(r"Same top p:\s*([\d.]+)", log)
    if ppl is None or kld is None:
        raise ToolFailed("llama-perplexity printed no final perplexity:\n" + "\n".join(log.splitlines()[-15:]))
    return {"ppl": ppl, "kld": kld, "same_top_p": top,
            "k_mib": sum(float(x[1]) for x in sizes), "v_mib": sum(float(x[3]) for x in sizes)}
