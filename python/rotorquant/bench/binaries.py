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


def _run(cmd: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env)
    log = out.stdout + out.stderr
    if out.returncode != 0:
        raise ToolFailed(f"{Path(cmd[0]).name} exited with status {out.returncode}:\n" + "\n".join(log.splitlines()[-15:]))
    return log if cmd[0].endswith("llama-perplexity") else out.stdout


def _env(policy: Path | None) -> dict[str, str]:
    """The caller's environment with ``RQ_KV_POLICY`` set to ``policy`` (llama-bench has no
    flag for it) or removed."""
    env = {k: v for k, v in os.environ.items() if k != "RQ_KV_POLICY"}
    if policy is not None:
        env["RQ_KV_POLICY"] = str(policy)
    return env


def _common(s: Settings, pair: Pair) -> list[str]:
    args = ["-m", str(s.model), "-ctk", pair.k.name, "-ctv", pair.v.name, "-ngl", str(s.n_gpu_layers)]
    return args + (["-t", str(s.threads)] if s.threads else [])


def speed(s: Settings, pair: Pair, depth: int, policy: Path | None) -> dict:
    """Prefill (``-p``) and decode (``-n``) tokens per second with ``depth`` tokens already
    in the cache: ``{"pp": ..., "pp_sd": ..., "tg": ..., "tg_sd": ...}``."""
    args = _common(s, pair) + ["-fa", "1", "-p", str(s.n_prompt), "-n", str(s.n_gen), "-d", str(depth),
                               "-r", str(s.reps), "-o", "json"]  # the policy: in the environment
    out = _run(_command("bench", args), _env(policy))
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


_POLICY_LAYER = re.compile(r"layer +(\d+): K (\w+), V (\w+) \(KV policy\)")


def _check_policy_layers(log: str, policy: Path, pair: Pair) -> None:
    """The layers the engine says the policy changed are exactly those the policy changes
    for this pair (its per-layer types apply only where the context's type is its base
    type, as in rq_kv_policy::layer_type_k), with the types it names."""
    from ..kvpolicy.policy import describe

    wanted = describe(policy)

    def layer_type(il: int, which: str, ctx_type: str) -> str:
        types = wanted["type_" + which]
        if wanted["base_type_" + which] != ctx_type or il >= len(types) or not types[il]:
            return ctx_type
        return types[il]

    logged = {int(il): (k, v) for il, k, v in _POLICY_LAYER.findall(log)}
    for il, got in logged.items():
        want = (layer_type(il, "k", pair.k.name), layer_type(il, "v", pair.v.name))
        if got != want:
            raise ToolFailed(f"layer {il} was allocated as K {got[0]} / V {got[1]}; the KV policy {policy} "
                             f"names K {want[0]} / V {want[1]}")
    n_layer = max(len(wanted["type_k"]), len(wanted["type_v"]))
    changes = any((layer_type(il, "k", pair.k.name), layer_type(il, "v", pair.v.name)) != (pair.k.name, pair.v.name)
                  for il in range(n_layer))
    if changes and not logged:
        raise ToolFailed(f"the KV policy {policy} changes layers of {pair.label}, but llama-perplexity "
                         "logged no layer with the policy's types")


def _number(pattern: str, log: str) -> float | None:
    m = re.search(pattern, log)
    return float(m.group(1)) if m else None


def perplexity(s: Settings, pair: Pair, text: Path, chunks: int, base: Path, policy: Path | None) -> dict:
    """Perplexity over ``chunks`` windows of ``s.ppl_ctx`` tokens.  The f16 pair writes the
    reference logits to ``base`` (whole or not at all); every other pair is scored against
    them (KL divergence, how often the top token agrees).  The K/V types llama.cpp logged
    are checked, per layer under a policy: the figures are of a cache that really stored
    them."""
    written = base.with_name(f".{base.name}.part") if pair.is_f16 else base
    args = _common(s, pair) + ["-f", str(text), "-c", str(s.ppl_ctx), "--chunks", str(chunks), "-fa", "on",
                               "-lv", "4", "--kl-divergence-base", str(written)]
    if not pair.is_f16:
        args.append("--kl-divergence")
    args += ["--kv-policy", str(policy) if policy else "none"]
    try:
        log = _run(_command("perplexity", args), _env(None))
        if pair.is_f16:
            os.replace(written, base)
    finally:
        if pair.is_f16:
            written.unlink(missing_ok=True)
    sizes = _KV_SIZES.findall(log)
    if not sizes:
        raise ToolFailed("llama-perplexity did not log its KV cache sizes")
    if any(k != pair.k.name or v != pair.v.name for k, _, v, _ in sizes):
        raise ToolFailed(f"the KV cache was allocated as {sizes}, not K {pair.k.name} / V {pair.v.name}")
    if policy is not None:
        _check_policy_layers(log, policy, pair)
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
