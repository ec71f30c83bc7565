"""Chat templates, JSON-schema grammars and parsing of replies, by upstream's C++.

The prompt for a list of messages is rendered by llama.cpp's own chat code (Jinja
templates from the GGUF, tool definitions, reasoning switches) through the shim in
``csrc/shim/rq_chat.h``, with llama-server's defaults, so a chat here sees exactly the
prompt the bundled ``llama-server`` builds.  A reply is parsed back into content,
``reasoning_content`` and ``tool_calls`` by the parser that rendering chose.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._native import ffi, lib
from .errors import ChatError

REASONING_FORMATS = ("none", "auto", "deepseek", "deepseek-legacy")
TOOL_CHOICES = ("auto", "none", "required")


def _reason(err) -> str:
    """The message a shim call left in ``*err`` (and free it)."""
    if err[0] == ffi.NULL:
        return "unknown error"
    try:
        return ffi.string(err[0]).decode("utf-8", "replace")
    finally:
        lib.rq_string_free(err[0])


def _result(fn, *args) -> str:
    """Call a shim function that returns a malloc'd string or sets ``*error``."""
    err = ffi.new("char **")
    out = fn(*args, err)
    if out == ffi.NULL:
        raise ChatError(_reason(err))
    try:
        return ffi.string(out).decode("utf-8")
    finally:
        lib.rq_string_free(out)


def _json(value, what: str) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ChatError(f"{what} cannot be written as JSON: {exc}") from None


def json_schema_to_grammar(schema: Mapping | str) -> str:
    """GBNF that admits exactly the JSON documents ``schema`` describes (upstream's
    converter, the one behind llama-server's ``json_schema``)."""
    text = schema.encode() if isinstance(schema, str) else _json(schema, "the JSON schema")
    return _result(lib.rq_json_schema_to_grammar, text)


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered chat: the prompt text and how generation must be constrained and read."""

    prompt: str
    grammar: str                       # "" when unconstrained
    grammar_lazy: bool                 # grammar applies from a trigger on (tool calls)
    trigger_patterns: tuple[str, ...]
    trigger_tokens: tuple[int, ...]
    preserved_tokens: frozenset[int]   # special tokens the reply parser must see as text
    stops: tuple[str, ...]
    generation_prompt: str             # what the template put after the last message
    parser: Mapping                    # the input of ReplyParser
    thinking_start_tag: str = ""       # the reasoning block's tags ("" / (): the template has none)
    thinking_end_tags: tuple[str, ...] = ()


class ChatTemplate:
    """A model's chat templates (or ``template``, Jinja source, instead of the GGUF's)."""

    def __init__(self, model, template: str | None = None):
        if template is not None and not isinstance(template, str):
            raise TypeError(f"chat_template must be Jinja source text, not {type(template).__name__}")
        err = ffi.new("char **")
        self._ptr = lib.rq_chat_new(model, template.encode() if template else ffi.NULL, err)
        if self._ptr == ffi.NULL:
            raise ChatError(f"chat template: {_reason(err)}")
        self.info = json.loads(_result(lib.rq_chat_info, self._ptr))

    def render(self, messages: Sequence[Mapping], *, tools: Sequence[Mapping] | None = None,
               tool_choice: str = "auto", parallel_tool_calls: bool | None = None,
               add_generation_prompt: bool = True, continue_final_message: bool | str | None = None,
               json_schema: Mapping | None = None, grammar: str | None = None,
               reasoning_format: str = "deepseek", enable_thinking: bool = True,
               chat_template_kwargs: Mapping | None = None,
               reasoning_effort: str | None = None) -> ChatPrompt:
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not all(
                isinstance(m, Mapping) for m in messages):
            raise TypeError("messages must be a list of dicts like {'role': 'user', 'content': '...'}")
        if tool_choice not in TOOL_CHOICES:
            raise ValueError(f"tool_choice must be one of {TOOL_CHOICES}, not {tool_choice!r}")
        if reasoning_format not in REASONING_FORMATS:
            raise ValueError(f"reasoning_format must be one of {REASONING_FORMATS}, not {reasoning_format!r}")
        request = {"messages": list(messages), "tool_choice": tool_choice,
                   "add_generation_prompt": bool(add_generation_prompt),
                   "reasoning_format": reasoning_format, "enable_thinking": bool(enable_thinking),
                   "chat_template_kwargs": dict(chat_template_kwargs or {})}
        for key, value in (("tools", tools), ("parallel_tool_calls", parallel_tool_calls),
                           ("continue_final_message", continue_final_message), ("json_schema", json_schema),
                           ("grammar", grammar), ("reasoning_effort", reasoning_effort)):
            if value is not None:
                request[key] = list(value) if key == "tools" else value
        out = json.loads(_result(lib.rq_chat_apply, self._ptr, _json(request, "the chat request")))
        return ChatPrompt(prompt=out["prompt"], grammar=out["grammar"], grammar_lazy=out["grammar_lazy"],
                          trigger_patterns=tuple(out["trigger_patterns"]),
                          trigger_tokens=tuple(out["trigger_tokens"]),
                          preserved_tokens=frozenset(out["preserved_tokens"]), stops=tuple(out["stops"]),
                          generation_prompt=out["generation_prompt"], parser=out["parser"],
                          thinking_start_tag=out["thinking_start_tag"],
                          thinking_end_tags=tuple(out["thinking_end_tags"]))

    def close(self) -> None:
        if self._ptr is not None and self._ptr != ffi.NULL:
            lib.rq_chat_free(self._ptr)
        self._ptr = None


class ReplyParser:
    """Reads generated text as an assistant message: ``content``, ``reasoning_content``
    (text inside the template's thinking tags) and ``tool_calls``, in OpenAI's shape."""

    def __init__(self, parser: Mapping):
        err = ffi.new("char **")
        self._ptr = lib.rq_chat_parser_new(_json(dict(parser), "the parser settings"), err)
        if self._ptr == ffi.NULL:
            raise ChatError(f"reply parser: {_reason(err)}")

    def parse(self, text: str, partial: bool = False) -> dict:
        """The message so far; ``partial`` while more text may follow (streaming)."""
        return json.loads(_result(lib.rq_chat_parse, self._ptr, text.encode("utf-8"), bool(partial)))

    def close(self) -> None:
        if self._ptr is not None and self._ptr != ffi.NULL:
            lib.rq_chat_parser_free(self._ptr)
        self._ptr = None

    def __del__(self) -> None:  # a stream that was never iterated never reaches its finally
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter teardown
            pass

    def __enter__(self) -> ReplyParser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
