"""Checks and defaults applied to a bundled tool's arguments before it runs.

Pure functions over argument lists, so they are tested without starting a
process.  The tools themselves stay the authority on everything else: unknown
flags pass through untouched.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

from .. import cache_types
from ..errors import KVPolicyError
from ..kvpolicy import locate

# rq-run subcommand -> bundled binary
TOOLS = {
    "cli": "llama-cli",
    "server": "llama-server",
    "completion": "llama-completion",
    "bench": "llama-bench",
    "perplexity": "llama-perplexity",
    "quantize": "llama-quantize",
    "mtmd": "llama-mtmd-cli",
    "rpc-server": "ggml-rpc-server",
    "gguf-split": "llama-gguf-split",
    "imatrix": "llama-imatrix",
    "test-archs": "llama-test-archs",  # random-weight models of any architecture (-a REGEX -o DIR)
}

# Tools that take -ctk/-ctv and -fa.
_ATTENTION_TOOLS = {"cli", "server", "completion", "bench", "perplexity", "mtmd", "imatrix"}

_K_FLAGS = ("-ctk", "--cache-type-k", "-ctkd", "--cache-type-k-draft", "--spec-draft-type-k")
_V_FLAGS = ("-ctv", "--cache-type-v", "-ctvd", "--cache-type-v-draft", "--spec-draft-type-v")
_FA_FLAGS = ("-fa", "--flash-attn")
_POLICY_FLAG = "--kv-policy"
_FA_OFF = {"off", "0", "false", "disabled"}


class ToolArgsError(ValueError):
    """The arguments would make the tool fail or do something unsafe."""


def _values(args: list[str], flags: tuple[str, ...]) -> list[tuple[str, str]]:
    """(flag, value) pairs for every occurrence of ``flags`` (``-f v`` or ``-f=v``)."""
    found = []
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag:
                if i + 1 >= len(args):
                    raise ToolArgsError(f"{flag} needs a value")
                found.append((flag, args[i + 1]))
            elif arg.startswith(flag + "="):
                found.append((flag, arg[len(flag) + 1:]))
    return found


def _cache_types_in(args: list[str], flags: tuple[str, ...], tool: str) -> list[cache_types.CacheType]:
    out = []
    for flag, value in _values(args, flags):
        # llama-bench takes comma-separated lists to sweep over
        for name in value.split(",") if tool == "bench" else [value]:
            try:
                out.append(cache_types.get(name))
            except ValueError as exc:
                raise ToolArgsError(f"{flag} {name}: {exc}") from None
    return out


def _without(args: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def _kv_policy(tool: str, args: list[str], types: list[cache_types.CacheType], notes: list[str]) -> list[str]:
    """Resolve ``--kv-policy auto|none|FILE`` (default auto) to the file the tool reads."""
    given = _values(args, (_POLICY_FLAG,))
    value = given[-1][1] if given else "auto"
    args = _without(args, _POLICY_FLAG)
    if tool == "bench":
        if given:
            raise ToolArgsError("llama-bench takes a KV policy from the environment: "
                                "RQ_KV_POLICY=FILE rq-run bench ...")
        return args
    models = [value for _, value in _values(args, ("-m", "--model"))]
    model = models[-1] if models else None
    try:
        if value.lower() == "auto":
            quantized = any(t.quantized for t in types)
            if not (quantized and model and Path(model).is_file()):
                return args
            path = locate.resolve("auto", model)
            if path is None and any(t.rotorquant for t in types):
                notes.append(f"no KV policy for {model}: 3-bit K can cost 1.2-2.5x perplexity without one; "
                             f"`rq-run calibrate {model}` writes it once (--kv-policy none hides this note)")
        else:
            path = locate.resolve(value, model or ".")
    except KVPolicyError as exc:
        raise ToolArgsError(str(exc)) from None
    return args + [_POLICY_FLAG, str(path)] if path else args


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".sock"):  # a unix socket is local too
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def prepare(tool: str, args: list[str], env: "dict[str, str] | None" = None,
            notes: "list[str] | None" = None) -> list[str]:
    """Return the argument list to run ``tool`` with, or raise ``ToolArgsError``.

    * ``-ctk``/``-ctv`` (and the draft-model variants) must name a known cache type;
    * a quantized V cache needs flash attention: it is switched on when ``-fa``
      is absent, and ``-fa off`` with it is an error;
    * ``server`` binds 127.0.0.1 unless ``--host`` says otherwise, and refuses a
      non-loopback host without an API key;
    * ``rpc-server`` binds 127.0.0.1 (upstream's default) and refuses any other host
      unless ``--allow-remote`` (ours, removed) says the user knows it has no
      authentication; ``--rpc host:port,...`` servers are probed first (a clear error
      instead of llama.cpp's client aborting);
    * ``--kv-policy auto`` (the default) adds the model's KV policy file when one
      exists (``rq-run calibrate`` writes it) and a cache type is quantized;
      ``none`` adds nothing; a path must exist.  Advice for the user (e.g. that a rotor
      cache has no policy yet) is appended to ``notes``.
    """
    env = env or {}
    args = list(args)
    notes = notes if notes is not None else []
    if tool == "rpc-server":
        return _rpc_server(args, notes)
    if tool not in _ATTENTION_TOOLS:
        return args
    _check_rpc_servers(args, env)
    k_types = _cache_types_in(args, _K_FLAGS, tool)
    v_types = _cache_types_in(args, _V_FLAGS, tool)
    args = _kv_policy(tool, args, k_types + v_types, notes)
    quantized_v = [t.name for t in v_types if t.needs_flash_attn]
    if quantized_v:
        fa = _values(args, _FA_FLAGS)
        if not fa:
            args += ["-fa", "1" if tool == "bench" else "on"]
        elif any(value.lower() in _FA_OFF for _, value in fa) and tool != "bench":
            raise ToolArgsError(
                f"V cache type {quantized_v[0]} is quantized, and llama.cpp reads a quantized V "
                "cache only with flash attention; drop '-fa off' or use -ctv f16")
    if tool == "server":
        hosts = [value for _, value in _values(args, ("--host",))]
        host = hosts[-1] if hosts else env.get("LLAMA_ARG_HOST")
        if host is None:
            args += ["--host", "127.0.0.1"]
        elif not _is_loopback(host):
            has_key = _values(args, ("--api-key", "--api-key-file")) or env.get("LLAMA_API_KEY")
            if not has_key:
                raise ToolArgsError(
                    f"--host {host} exposes the server beyond this machine, and without "
                    "--api-key (or --api-key-file) anyone who can reach the port can use the "
                    "model and read other users' prompts; add --api-key, or bind 127.0.0.1")
    return args


_RPC_NO_AUTH = ("ggml-rpc has no authentication: anyone who can reach the port can allocate memory on "
                "this machine and run graphs on it, and read what other clients send")


def _rpc_server(args: list[str], notes: list[str]) -> list[str]:
    allow = "--allow-remote" in args
    args = [a for a in args if a != "--allow-remote"]
    hosts = [value for _, value in _values(args, ("-H", "--host"))]
    host = hosts[-1] if hosts else "127.0.0.1"
    if not _is_loopback(host):
        if not allow:
            raise ToolArgsError(
                f"--host {host} exposes the RPC server beyond this machine; {_RPC_NO_AUTH}.  Keep "
                "127.0.0.1 and reach it through an ssh tunnel (ssh -N -L 50052:127.0.0.1:50052 HOST), "
                "or add --allow-remote on a network you trust")
        notes.append(f"WARNING: listening on {host} without authentication; {_RPC_NO_AUTH}")
    return args


def _check_rpc_servers(args: list[str], env: "dict[str, str]") -> None:
    """Probe every RPC endpoint (``--rpc``, llama-bench's ``-rpc``, LLAMA_ARG_RPC) before
    the tool starts."""
    from ..errors import RpcError
    from ..rpc import parse_endpoint, probe

    values = [value for _, value in _values(args, ("--rpc", "-rpc"))]
    if not values and env.get("LLAMA_ARG_RPC"):
        values = [env["LLAMA_ARG_RPC"]]
    for value in values:
        for endpoint in value.split(","):
            try:
                parse_endpoint(endpoint)
                probe(endpoint)
            except (ValueError, RpcError) as exc:
                raise ToolArgsError(f"--rpc: {exc}") from None
