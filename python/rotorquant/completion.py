"""OpenAI-shaped completion results from the steps of a generation.

``Llama._generate`` yields one ``Step`` per generated token (the text that became final
with it: a stop string holds text back, a multi-byte character may span tokens) and a
last step with the finish reason.  This module only reshapes them, so the plain
``generate()`` text and ``create_completion()`` cannot disagree.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    text: str
    token: "int | None"
    logprob: "float | None" = None
    top: "list[tuple[int, float]] | None" = None
    finish: "str | None" = None   # "stop" or "length" on the last step


def _ids() -> tuple[str, int]:
    return f"cmpl-{uuid.uuid4().hex}", int(time.time())


def completion(steps: Iterator[Step], model: str, n_prompt: int, with_logprobs: bool,
               token_text: Callable[[int], str]) -> dict:
    text, finish, generated = [], None, []
    for step in steps:
        text.append(step.text)
        if step.token is not None:
            generated.append(step)
        finish = step.finish or finish
    out = "".join(text)
    choice = {"text": out, "index": 0, "logprobs": None, "finish_reason": finish}
    if with_logprobs:
        choice["logprobs"] = _logprobs(generated, token_text, len(out))
    cid, created = _ids()
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(generated),
                      "total_tokens": n_prompt + len(generated)}}


def _top(step: Step, token_text: Callable[[int], str]) -> dict:
    """Alternatives by text, best first; of tokens with the same text (byte tokens of one
    UTF-8 character all read as U+FFFD) the likeliest is kept."""
    top: dict = {}
    for t, lp in step.top or ():
        top.setdefault(token_text(t), lp)
    return top


def _logprobs(steps: list[Step], token_text: Callable[[int], str], text_len: int) -> dict:
    """OpenAI's legacy layout plus ``token_ids`` (texts can collide, ids cannot);
    text_offset counts characters from the completion's start.  Tokens whose text lies
    wholly in a removed stop string are left out."""
    tokens, ids, lps, tops, offsets, pos = [], [], [], [], [], 0
    for step in steps:
        piece = token_text(step.token)
        if pos >= text_len and tokens:
            break
        tokens.append(piece)
        ids.append(step.token)
        lps.append(step.logprob)
        tops.append(_top(step, token_text))
        offsets.append(pos)
        pos += len(piece)
    return {"tokens": tokens, "token_ids": ids, "token_logprobs": lps, "top_logprobs": tops,
            "text_offset": offsets}


def completion_chunks(steps: Iterator[Step], model: str, with_logprobs: bool,
                      token_text: Callable[[int], str]) -> Iterator[dict]:
    cid, created = _ids()
    for step in steps:
        if not step.text and step.finish is None and not with_logprobs:
            continue
        choice = {"text": step.text, "index": 0, "logprobs": None, "finish_reason": step.finish}
        if with_logprobs and step.token is not None:
            choice["logprobs"] = {"tokens": [token_text(step.token)], "token_ids": [step.token],
                                  "token_logprobs": [step.logprob], "top_logprobs": [_top(step, token_text)]}
        yield {"id": cid, "object": "text_completion", "created": created, "model": model,
               "choices": [choice]}
