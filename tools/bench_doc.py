"""Write a benchmark's table into its own marked section of docs/BENCHMARKS.md."""
from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs/BENCHMARKS.md"


def write_section(name: str, body: list[str]) -> None:
    """Replace (or append) section `name`; everything outside the markers is left alone."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = "\n".join([start, *body, "", end])
    text = DOC.read_text() if DOC.is_file() else "# Benchmarks\n"
    if start in text:
        text = re.sub(re.escape(start) + r".*" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(block)
