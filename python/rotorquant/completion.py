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
    token: int | None
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    finish: str | None = None   # "stop" or "length" on the last step


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


# -- chat ------------------------------------------------------------------------------
def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _with_ids(message: dict) -> dict:
    """OpenAI's message shape: every tool call has an id and ``type: "function"``."""
    calls = message.get("tool_calls")
    if calls:
        for call in calls:
            call.setdefault("type", "function")
            if not call.get("id"):
                call["id"] = _call_id()
    message.setdefault("content", None if calls else "")
    return message


def _chat_logprob(step: Step, token_bytes: Callable[[int], bytes]) -> dict:
    def entry(token: int, lp: float) -> dict:
        b = token_bytes(token)
        return {"token": b.decode("utf-8", "replace"), "logprob": lp, "bytes": list(b)}
    out = entry(step.token, step.logprob)
    out["top_logprobs"] = [entry(t, lp) for t, lp in step.top or ()]
    return out


def _finish(finish: str | None, message: dict) -> str | None:
    return "tool_calls" if finish == "stop" and message.get("tool_calls") else finish


def chat_completion(steps: Iterator[Step], model: str, n_prompt: int, parser, with_logprobs: bool,
                    token_bytes: Callable[[int], bytes]) -> dict:
    text, finish, generated = [], None, []
    try:
        for step in steps:
            text.append(step.text)
            if step.token is not None:
                generated.append(step)
            finish = step.finish or finish
        message = _with_ids(parser.parse("".join(text)))
    finally:
        parser.close()
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(finish, message)}
    if with_logprobs:
        choice["logprobs"] = {"content": [_chat_logprob(s, token_bytes) for s in generated]}
    cid, created = _ids()
    return {"id": "chat" + cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(generated),
                      "total_tokens": n_prompt + len(generated)}}


def _text_delta(key: str, old: dict, new: dict) -> str:
    a, b = old.get(key) or "", new.get(key) or ""
    return b[len(a):] if b.startswith(a) else ""


def _message_delta(old: dict, new: dict, ids: list[str]) -> dict:
    """What ``new`` (the reply parsed so far) adds to ``old``: text appended to content or
    reasoning, new tool calls (id, name) and text appended to their arguments."""
    delta: dict = {}
    for key in ("reasoning_content", "content"):
        piece = _text_delta(key, old, new)
        if piece:
            delta[key] = piece
    old_calls, calls = old.get("tool_calls") or [], new.get("tool_calls") or []
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function", {})
        prev = old_calls[i].get("function", {}) if i < len(old_calls) else None
        if prev is None:
            while len(ids) <= i:
                ids.append(call.get("id") or _call_id())
            out.append({"index": i, "id": ids[i], "type": "function",
                        "function": {"name": fn.get("name", ""), "arguments": fn.get("arguments", "")}})
        else:
            piece = _text_delta("arguments", prev, fn)
            if piece:
                out.append({"index": i, "function": {"arguments": piece}})
    if out:
        delta["tool_calls"] = out
    return delta


def chat_chunks(steps: Iterator[Step], model: str, parser, with_logprobs: bool,
                token_bytes: Callable[[int], bytes]) -> Iterator[dict]:
    cid, created = _ids()

    def chunk(delta: dict, finish: str | None = None, logprobs=None) -> dict:
        return {"id": "chat" + cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

    text, msg, ids = "", {}, []
    try:
        yield chunk({"role": "assistant", "content": None})
        for step in steps:
            text += step.text
            new = parser.parse(text, partial=step.finish is None)
            delta = _message_delta(msg, new, ids)
            msg = new if delta or step.finish is not None else msg
            lp = None
            if with_logprobs and step.token is not None:
                lp = {"content": [_chat_logprob(step, token_bytes)]}
            if step.finish is not None:
                if delta:
                    yield chunk(delta, logprobs=lp)
                yield chunk({}, _finish(step.finish, msg))
            elif delta or lp:
                yield chunk(delta, logprobs=lp)
    finally:
        parser.close()
