"""The chat methods of :class:`rotorquant.Llama` (kept apart: llama.py holds the model,
the context and generation; this holds what a chat adds on top of generation —
templates, media, constrained and parsed replies)."""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

from ._checks import _alternatives, _locked
from .chat import ChatPrompt, ChatTemplate, ReplyParser
from .completion import chat_chunks, chat_completion
from .media import split_media
from .sampling import UNLIMITED_REASONING, Grammar, ReasoningBudget


class ChatMixin:
    """Chat on top of Llama's generation (``_start``, ``_prompt_tokens``, ``tokenize``)."""

    def _chat_template(self) -> ChatTemplate:
        self._check_open(need_context=False)
        if self._chat is None:
            self._chat = ChatTemplate(self._model, self.chat_template)
        return self._chat

    @_locked
    def apply_chat_template(self, messages: Sequence[Mapping], **options) -> str:
        """The prompt that ``messages`` (OpenAI-style dicts) become.

        Rendered by llama.cpp's own chat code from the GGUF's Jinja template (or the
        ``chat_template`` given to the constructor) with llama-server's defaults, so it
        is byte for byte what the bundled ``llama-server`` renders (its
        ``/apply-template``).  ``options``: ``tools``, ``tool_choice``,
        ``parallel_tool_calls``, ``add_generation_prompt``, ``continue_final_message``,
        ``json_schema``, ``grammar``, ``reasoning_format``, ``enable_thinking``,
        ``chat_template_kwargs``, ``reasoning_effort``.  A trailing assistant message is
        continued (a prefill), as in the server.
        """
        return self._chat_template().render(self._media_messages(messages)[0], **options).prompt

    @_locked
    def create_chat_completion(self, messages: Sequence[Mapping], *,
                               tools: Sequence[Mapping] | None = None, tool_choice: str = "auto",
                               parallel_tool_calls: bool | None = None,
                               response_format: Mapping | None = None, max_tokens: int | None = None,
                               stream: bool = False, stop: str | Sequence[str] = (),
                               logprobs: bool = False, top_logprobs: int | None = None,
                               reasoning_format: str = "deepseek", enable_thinking: bool = True,
                               reasoning_effort: str | None = None,
                               reasoning_budget: int | None = None, reasoning_budget_message: str = "",
                               chat_template_kwargs: Mapping | None = None,
                               continue_final_message: bool | str | None = None,
                               **sampling) -> dict | Iterator[dict]:
        """An OpenAI-shaped chat completion (``object: "chat.completion"``).

        The prompt is :meth:`apply_chat_template`'s.  With ``tools`` the template's tool
        format is used: generation is constrained to valid calls from the template's
        trigger on, and the reply comes back parsed into ``message["tool_calls"]``
        (``finish_reason: "tool_calls"``).  Text in the template's thinking tags goes to
        ``message["reasoning_content"]`` (``reasoning_format="none"`` leaves it in the
        content).  ``reasoning_budget=N`` lets about N generated tokens into that block (a
        UTF-8 character in progress is finished), then forces ``reasoning_budget_message``
        and the end tag: upstream's reasoning-budget sampler, as llama-server's
        ``--reasoning-budget``, except that whether the template's generation prompt opened
        the block is read from its text and what the template wrote is not counted.  0 skips
        the thinking, ``None`` or -1 sets no limit, a template without thinking tags ignores
        it.  With ``tools`` the tool-call grammar is off inside the thinking block (a call
        written while thinking is thinking), as in the server.  ``response_format`` as OpenAI's
        (``{"type": "json_object"}``, optionally with ``"schema"``, or
        ``{"type": "json_schema", "json_schema": {"schema": ...}}``) constrains the reply to JSON; ``grammar=`` (GBNF) to a grammar.  ``max_tokens=None``
        runs until the model stops or the context is full.  ``logprobs=True`` (with
        ``top_logprobs=N`` alternatives) adds OpenAI's ``logprobs.content`` list.  With
        ``stream=True`` an iterator of ``chat.completion.chunk`` dicts is returned, each
        carrying a ``delta``.  Sampling settings as :meth:`generate`.
        """
        schema = _response_schema(response_format)
        user_grammar = sampling.pop("grammar", None)
        root = sampling.pop("grammar_root", "root")
        if not isinstance(logprobs, bool):
            raise ValueError(f"logprobs must be True or False, not {logprobs!r}")
        if top_logprobs is not None:
            if not logprobs:
                raise ValueError("top_logprobs needs logprobs=True")
            _alternatives("top_logprobs", top_logprobs)
        n_top = (top_logprobs or 0) if logprobs else None
        if reasoning_budget is not None and (isinstance(reasoning_budget, bool) or not isinstance(reasoning_budget, int)
                                             or not -1 <= reasoning_budget < 2**31):
            raise ValueError(f"reasoning_budget must be None, -1 or an integer >= 0, not {reasoning_budget!r}")
        if reasoning_budget == -1:
            reasoning_budget = None  # the server's "no budget"
        if not isinstance(reasoning_budget_message, str):
            raise TypeError(f"reasoning_budget_message must be a string, not {type(reasoning_budget_message).__name__}")
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        messages, media = self._media_messages(messages)
        cp = self._chat_template().render(
            messages, tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
            continue_final_message=continue_final_message, json_schema=schema, grammar=user_grammar,
            reasoning_format=reasoning_format, enable_thinking=enable_thinking,
            chat_template_kwargs=chat_template_kwargs, reasoning_effort=reasoning_effort)
        if media:
            tokens = self._projector.tokenize(cp.prompt, media)
            if tokens.n_tokens >= self.n_ctx:
                n = tokens.n_tokens
                tokens.close()
                raise ValueError(f"prompt is {n} tokens with its media, which does not fit the context "
                                 f"of {self.n_ctx} tokens (raise n_ctx)")
        else:
            tokens = self._prompt_tokens(cp.prompt, parse_special=True)
        grammar = self._chat_grammar(cp, root if user_grammar else "root")
        budget = None
        # as the server: a budget where one is asked for, and an unlimited one where a tool-call
        # grammar (lazy) has to know where thinking is
        if (reasoning_budget is not None or (grammar is not None and grammar.lazy)) and \
                cp.thinking_start_tag and cp.thinking_end_tags:
            budget = ReasoningBudget(UNLIMITED_REASONING if reasoning_budget is None else reasoning_budget,
                                     cp.thinking_start_tag, cp.thinking_end_tags, reasoning_budget_message,
                                     cp.generation_prompt)
        n_prompt, steps = self._start(tokens, self.n_ctx if max_tokens is None else max_tokens,
                                      stops + cp.stops, sampling, top_logprobs=n_top, grammar=grammar,
                                      special=cp.preserved_tokens,
                                      marks=() if media else self._end_of_messages(tokens, cp), budget=budget)
        parser = ReplyParser(cp.parser)
        model = os.path.basename(self.model_path)
        if stream:
            return chat_chunks(steps, model, parser, logprobs, self._piece)
        return chat_completion(steps, model, n_prompt, parser, logprobs, self._piece)

    def _media_messages(self, messages):
        """Messages with media parts replaced by the projector's marker, and the media."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            return messages, []  # the template reports the type error
        out, media = split_media(messages, self._projector.marker if self._projector else "")
        if media and self._projector is None:
            raise ValueError("the messages hold images or audio: load the model with mmproj_path= "
                             "(the projector file rq-convert writes next to it)")
        return out, media

    def _end_of_messages(self, tokens: list[int], cp: ChatPrompt) -> tuple[int, ...]:
        """Where the last message ends and the generation prompt begins, in tokens: the
        next turn re-renders what follows.  Taken as the tokens the prompt without its
        generation prompt shares with the whole prompt (a tokenizer may merge across
        the boundary; then the checkpoint sits a token or two earlier)."""
        gen = cp.generation_prompt
        if self._checkpoints is None or not gen or not cp.prompt.endswith(gen):
            return ()
        head = self.tokenize(cp.prompt[:len(cp.prompt) - len(gen)], parse_special=True)
        n = 0
        for a, b in zip(head, tokens):
            if a != b:
                break
            n += 1
        return (n,) if 0 < n < len(tokens) else ()

    def _chat_grammar(self, cp: ChatPrompt, root: str) -> Grammar | None:
        """The template's grammar, started past what the template wrote after the last
        message (as upstream's sampler does: the grammar begins with that text)."""
        if not cp.grammar:
            return None
        prefill = () if cp.grammar_lazy else self._generation_prefill(cp)
        return Grammar(cp.grammar, root, cp.grammar_lazy, cp.trigger_patterns, cp.trigger_tokens, prefill)

    def _generation_prefill(self, cp: ChatPrompt) -> tuple[int, ...]:
        """The tokens of what the template wrote after the last message (upstream feeds
        them to the grammar, which starts past them)."""
        if not cp.generation_prompt:
            return ()
        toks = self.tokenize(cp.generation_prompt, add_special=False, parse_special=True)
        # some tokenizers put a space token first, which the template did not write
        if toks and self._piece(toks[0], True)[:1].isspace() and not cp.generation_prompt[:1].isspace():
            toks = toks[1:]
        return tuple(toks)


def _response_schema(response_format: Mapping | None) -> Mapping | None:
    """The JSON schema an OpenAI ``response_format`` asks for (``{}``: any object)."""
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise ValueError(f"response_format must be a dict like {{'type': 'json_object'}}, not {response_format!r}")
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return response_format.get("schema") or {}
    if kind == "json_schema":
        wrapper = response_format.get("json_schema")
        if not isinstance(wrapper, Mapping) or not isinstance(wrapper.get("schema", {}), Mapping):
            raise ValueError("response_format of type 'json_schema' needs {'json_schema': {'schema': {...}}}")
        return wrapper.get("schema") or {}
    raise ValueError(f"response_format type must be 'text', 'json_object' or 'json_schema', not {kind!r}")
