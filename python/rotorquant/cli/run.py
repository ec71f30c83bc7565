"""``rq-run``: run a bundled llama.cpp tool with rotorquant's checks and defaults.

    rq-run [--print-command] TOOL [tool arguments...]
    rq-run demo [--help]
    rq-run calibrate MODEL [--help]
    rq-run plan MODEL [--help]

Arguments after TOOL go to the tool unchanged, except for the checks in
``tool_args.prepare`` (cache-type names, flash attention for a quantized V
cache, a safe default host for the server).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from .tool_args import TOOLS, ToolArgsError, prepare

USAGE = f"""usage: rq-run [--print-command] TOOL [ARGS...]
       rq-run demo [--help]
       rq-run calibrate MODEL [--help]
       rq-run plan MODEL [-c N] [-ctk T[,T...]] [-ctv T] [-np N] [-ngl N] [--help]

Runs the llama.cpp tools bundled with rotorquant.  TOOL is one of:
  {', '.join(TOOLS)}
and `demo`, which generates text with a quantized KV cache on an embedded model,
`calibrate`, which writes a model's KV policy (used automatically afterwards;
`--kv-policy auto|none|FILE` chooses, default auto), and `plan`, which shows the memory a
load needs per device (weights, KV cache, recurrent state, compute) and whether it fits
(exit status 1 if not).

options:
  --print-command  print the command line instead of running it
  -h, --help       show this help; `rq-run TOOL --help` shows the tool's own
"""


def tool_path(tool: str) -> str:
    from .._native import BIN_DIR

    path = BIN_DIR / TOOLS[tool]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this rotorquant install is incomplete; reinstall it")
    return str(path)


def main(argv: "list[str] | None" = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    print_only = False
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        if opt == "--print-command":
            print_only = True
        elif opt in ("-h", "--help"):
            print(USAGE, end="")
            return 0
        else:
            print(f"rq-run: unknown option {opt}\n\n{USAGE}", end="", file=sys.stderr)
            return 2
    if not argv:
        print(USAGE, end="", file=sys.stderr)
        return 2
    tool, args = argv[0], argv[1:]
    if tool == "demo":
        from .demo import main as demo_main
        return demo_main(args)
    if tool == "calibrate":
        from .calibrate import main as calibrate_main
        return calibrate_main(args)
    if tool == "plan":
        from .plan import main as plan_main
        return plan_main(args)
    if tool not in TOOLS:
        print(f"rq-run: unknown tool {tool!r}; choose one of: {', '.join([*TOOLS, 'demo', 'calibrate', 'plan'])}",
              file=sys.stderr)
        return 2
    try:
        notes: list[str] = []
        args = prepare(tool, args, dict(os.environ), notes)
        for note in notes:
            print(f"rq-run {tool}: note: {note}", file=sys.stderr)
        cmd = [tool_path(tool), *args]
    except (ToolArgsError, FileNotFoundError) as exc:
        print(f"rq-run {tool}: error: {exc}", file=sys.stderr)
        return 2
    if print_only:
        print(shlex.join(cmd))
        return 0
    sys.stdout.flush()
    if os.name == "posix":
        os.execv(cmd[0], cmd)  # the tool takes over this process: signals, exit code
    return subprocess.call(cmd)  # pragma: no cover - non-POSIX


if __name__ == "__main__":
    sys.exit(main())
