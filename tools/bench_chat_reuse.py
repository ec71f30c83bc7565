#!/usr/bin/env python3
"""How much of a multi-turn chat a hybrid model evaluates again each turn (issue 6), with
and without recurrent-state checkpoints:

    python tools/bench_chat_reuse.py [MODEL.gguf] [--turns 6] [--threads 2]

MODEL defaults to the random-weight hybrid Qwen3.5 of the bundled llama-test-archs (the
only hybrid model that runs here; its speed is not a real model's, the token counts are
what matter).  Every turn sends the whole history, rendered by a thinking template (the
reply's <think> is opened by the generation prompt and not rendered in later turns, as
Qwen3's templates do).  Per turn: prompt tokens, tokens evaluated, prompt time.  The table
goes to docs/BENCHMARKS.md (section ``chat-reuse-hybrid``).
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_doc import write_section  # noqa: E402
import rq_assets  # noqa: E402

TEMPLATE = (  # as tests/test_chat.py's: Qwen3-style reasoning
    "{% for m in messages %}<|{{ m.role }}|>{% if m.role == 'assistant' and m.reasoning_content %}"
    "<think>\n{{ m.reasoning_content }}\n</think>\n{% endif %}{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")


def default_model(tmp: Path) -> Path:
    from rotorquant._native import BIN_DIR
    subprocess.run([str(BIN_DIR / "llama-test-archs"), "-a", "^qwen35", "-o", str(tmp)], check=True,
                   capture_output=True)
    return next(tmp.glob("qwen35-dense*.gguf"))


def conversation(model: Path, turns: int, threads: int, checkpoints: int, texts: list[str]) -> list[tuple]:
    from rotorquant import Llama
    rows, history = [], []
    with Llama(model, n_ctx=8192, n_threads=threads, chat_template=TEMPLATE, ctx_checkpoints=checkpoints,
               kv_policy=None) as llm:
        for turn in range(turns):
            history.append({"role": "user", "content": texts[turn]})
            n_prompt = len(llm.tokenize(llm.apply_chat_template(history), parse_special=True))
            t0 = time.perf_counter()
            reply = llm.create_chat_completion(history, max_tokens=24, temperature=0)
            wall = time.perf_counter() - t0
            perf = llm.perf()
            rows.append((turn + 1, n_prompt, n_prompt - perf["prompt_reused_tokens"], perf["prompt_ms"], wall,
                         llm._checkpoints.nbytes() if llm._checkpoints is not None else 0))
            history.append({"role": "assistant", "content": reply["choices"][0]["message"]["content"] or "ok"})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    text = rq_assets.sotu_text(200_000).read_text(errors="replace")
    texts = [text[i * 1500:(i + 1) * 1500] for i in range(a.turns)]  # ~1.5 kB of prose per user turn
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model or default_model(Path(tmp))
        runs = {n: conversation(model, a.turns, a.threads, n, texts) for n in (0, 4)}
    lines = [
        "## Multi-turn chat on a hybrid model: tokens evaluated per turn",
        "",
        f"{model.name if a.model else 'llama-test-archs qwen35-dense (random weights)'}, CPU, "
        f"{a.threads} threads, {datetime.date.today().isoformat()}, 24-token replies, a thinking template. "
        f"Reproduce: `python tools/bench_chat_reuse.py --turns {a.turns} --threads {a.threads}`.",
        "",
        "| turn | prompt tokens | evaluated, no checkpoints | evaluated, 4 checkpoints | prompt ms (0 / 4) "
        "| checkpoint bytes held |",
        "|---|---|---|---|---|---|",
    ]
    for off, on in zip(runs[0], runs[4]):
        lines.append(f"| {off[0]} | {off[1]} | {off[2]} | {on[2]} | {off[3]:.0f} / {on[3]:.0f} | {on[5]} |")
    tot_off, tot_on = sum(r[2] for r in runs[0]), sum(r[2] for r in runs[4])
    lines += ["", f"Whole conversation: {tot_off} tokens evaluated without checkpoints, {tot_on} with "
              f"({tot_off / max(tot_on, 1):.1f}x fewer)."]
    write_section("chat-reuse-hybrid", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
