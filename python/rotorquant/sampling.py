"""How the next token is chosen: ``Sampling`` (validated settings) and the llama.cpp
sampler chain built from them.

The chain follows upstream's default order (``common/sampling.cpp``) so that the same
settings pick the same tokens as ``llama-cli``/``llama-server``:

    logit bias -> penalties -> DRY -> top-n-sigma -> top-k -> typical -> top-p -> min-p
    -> XTC -> temperature -> dist            (or mirostat 1/2 after the temperature;
                                              greedy when temperature <= 0)

A GBNF grammar runs in front of the whole chain, and a reasoning budget in front of that
(as in upstream's ``common_sampler``: it forces the end of a thinking block).  The
prompt's tokens are fed to the chain (not to the grammar, which constrains only what is
generated) so that repetition penalties and DRY see the prompt as upstream's server does.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

from ._logging import Capture
from ._native import ffi, lib
from .chat import _reason

_UINT32_MAX = 0xFFFFFFFF
DRY_BREAKERS = ("\n", ":", "\"", "*")  # upstream's default sequence breakers


def _number(name: str, value, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {value!r}")
    return float(value)


def _integer(name: str, value, lo: int, hi: int = 2**31 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], not {value!r}")
    return value


@dataclass(frozen=True)
class Sampling:
    """Sampling settings, with upstream's defaults and its meaning of "disabled".

    ``temperature <= 0`` is greedy decoding.  ``seed=None`` draws a random seed.
    ``logit_bias`` maps token ids to values added to their logits (``-inf`` bans a
    token).  ``grammar`` is GBNF text (see upstream's ``grammars/README.md``); output
    is constrained to it from the first generated token.
    """

    temperature: float = 0.8
    top_k: int = 40                    # <= 0: off
    top_p: float = 0.95                # 1.0: off
    min_p: float = 0.05                # 0.0: off
    typical_p: float = 1.0             # 1.0: off
    top_n_sigma: float = -1.0          # <= 0: off
    repeat_penalty: float = 1.0        # 1.0: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64           # tokens the penalties look back; -1: the context
    dry_multiplier: float = 0.0        # 0.0: DRY off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1       # -1: the context
    dry_sequence_breakers: tuple[str, ...] = DRY_BREAKERS
    xtc_probability: float = 0.0       # 0.0: XTC off
    xtc_threshold: float = 0.1
    mirostat: int = 0                  # 0 off, 1 or 2: Mirostat v1 / v2
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    seed: int | None = None
    grammar: str | None = None
    grammar_root: str = "root"

    def __post_init__(self) -> None:
        for name in ("temperature", "typical_p", "top_n_sigma", "repeat_penalty", "presence_penalty",
                     "frequency_penalty", "dry_multiplier", "dry_base", "xtc_threshold",
                     "mirostat_tau", "mirostat_eta"):
            _number(name, getattr(self, name))
        _integer("top_k", self.top_k, -1)
        _integer("penalty_last_n", self.penalty_last_n, -1)
        _integer("dry_allowed_length", self.dry_allowed_length, 0)
        _integer("dry_penalty_last_n", self.dry_penalty_last_n, -1)
        _integer("mirostat", self.mirostat, 0, 2)
        _number("top_p", self.top_p, 0.0, 1.0)
        _number("min_p", self.min_p, 0.0, 1.0)
        _number("xtc_probability", self.xtc_probability, 0.0, 1.0)
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be > 0 (1.0 is off), not {self.repeat_penalty!r}")
        if self.seed is not None:
            _integer("seed", self.seed, 0, _UINT32_MAX - 1)
        if isinstance(self.dry_sequence_breakers, str) or not all(
                isinstance(b, str) and b for b in self.dry_sequence_breakers):
            raise ValueError("dry_sequence_breakers must be a sequence of non-empty strings")
        object.__setattr__(self, "dry_sequence_breakers", tuple(self.dry_sequence_breakers))
        if not isinstance(self.logit_bias, Mapping):
            raise ValueError(f"logit_bias must map token ids to numbers, not {self.logit_bias!r}")
        bias = {}
        for tok, value in self.logit_bias.items():
            _integer("logit_bias token", tok, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"logit_bias[{tok}] must be a number, not {value!r}")
            bias[tok] = float(value)
        object.__setattr__(self, "logit_bias", bias)
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            raise ValueError("grammar must be non-empty GBNF text (or None)")
        if not isinstance(self.grammar_root, str) or not self.grammar_root:
            raise ValueError("grammar_root must be a rule name")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Grammar:
    """A grammar as the sampler applies it.  ``lazy``: only from the first match of a
    trigger pattern (regex over the output) or trigger token on, as chat templates
    constrain tool calls; ``prefill``: tokens the template already wrote after the last
    message, fed to the grammar (not to the other samplers) so it starts past them."""

    text: str
    root: str = "root"
    lazy: bool = False
    trigger_patterns: tuple[str, ...] = ()
    trigger_tokens: tuple[int, ...] = ()
    prefill: tuple[int, ...] = ()


UNLIMITED_REASONING = 2**31 - 1


@dataclass(frozen=True)
class ReasoningBudget:
    """About ``tokens`` generated tokens inside a chat template's reasoning block (from
    ``start`` to one of ``ends``; a UTF-8 character in progress is finished), then
    ``message`` and ``ends[0]`` are forced.  ``generation_prompt``: what the template wrote
    after the last message, which may have opened (or opened and closed) the block.
    ``tokens=UNLIMITED_REASONING`` (the server's INT_MAX) never forces: with tools it only
    tells the tool-call grammar where thinking is."""

    tokens: int
    start: str
    ends: tuple[str, ...]
    message: str = ""
    generation_prompt: str = ""


class SamplerChain:
    """The C sampler chain for one generation; ``close()`` frees it (idempotent).
    ``grammar`` replaces ``s.grammar`` (chat completions build theirs from the template)."""

    def __init__(self, s: Sampling, vocab, n_vocab: int, n_ctx: int, grammar: Grammar | None = None,
                 budget: ReasoningBudget | None = None):
        if grammar is None and s.grammar is not None:
            grammar = Grammar(s.grammar, s.grammar_root)
        for tok in s.logit_bias:
            if tok >= n_vocab:
                raise ValueError(f"logit_bias token {tok} is outside the vocabulary of {n_vocab} tokens")
        self._keep = []  # C strings the samplers hold pointers to
        self._inner = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        self._outer = self._inner
        seed = lib.LLAMA_DEFAULT_SEED if s.seed is None else s.seed

        def add(smpl) -> None:
            lib.llama_sampler_chain_add(self._inner, smpl)

        if s.logit_bias:
            arr = ffi.new("llama_logit_bias[]", len(s.logit_bias))
            for i, (tok, value) in enumerate(s.logit_bias.items()):
                arr[i].token, arr[i].bias = tok, value
            add(lib.llama_sampler_init_logit_bias(n_vocab, len(s.logit_bias), arr))
        last_n = n_ctx if s.penalty_last_n == -1 else s.penalty_last_n
        if last_n and (s.repeat_penalty != 1.0 or s.presence_penalty or s.frequency_penalty):
            add(lib.llama_sampler_init_penalties(n_vocab, last_n, s.repeat_penalty,
                                                 s.frequency_penalty, s.presence_penalty))
        if s.dry_multiplier > 0:
            breakers = [ffi.new("char[]", b.encode()) for b in s.dry_sequence_breakers]
            self._keep += breakers
            ptrs = ffi.new("const char *[]", breakers)
            dry_n = n_ctx if s.dry_penalty_last_n == -1 else s.dry_penalty_last_n
            add(lib.llama_sampler_init_dry(vocab, s.dry_multiplier, s.dry_base, s.dry_allowed_length,
                                           dry_n, ptrs, len(breakers)))
        if s.temperature <= 0:
            add(lib.llama_sampler_init_greedy())
        elif s.mirostat:
            add(lib.llama_sampler_init_temp(s.temperature))
            add(lib.llama_sampler_init_mirostat(n_vocab, seed, s.mirostat_tau, s.mirostat_eta, 100)
                if s.mirostat == 1 else lib.llama_sampler_init_mirostat_v2(seed, s.mirostat_tau, s.mirostat_eta))
        else:
            if s.top_n_sigma > 0:
                add(lib.llama_sampler_init_top_n_sigma(s.top_n_sigma))
            if s.top_k > 0:
                add(lib.llama_sampler_init_top_k(s.top_k))
            if s.typical_p < 1.0:
                add(lib.llama_sampler_init_typical(s.typical_p, 1))
            if s.top_p < 1.0:
                add(lib.llama_sampler_init_top_p(s.top_p, 1))
            if s.min_p > 0.0:
                add(lib.llama_sampler_init_min_p(s.min_p, 1))
            if s.xtc_probability > 0.0:
                add(lib.llama_sampler_init_xtc(s.xtc_probability, s.xtc_threshold, 1, seed))
            add(lib.llama_sampler_init_temp(s.temperature))
            add(lib.llama_sampler_init_dist(seed))
        front = []  # samplers in front of the inner chain, in order; ours until the chain owns them
        try:
            if budget is not None:
                front.append(self._budget_sampler(budget, vocab))
            if grammar is not None:
                with Capture() as cap:
                    smpl = self._grammar_sampler(grammar, vocab)
                if smpl == ffi.NULL:
                    raise ValueError(f"grammar could not be parsed (root rule {grammar.root!r})"
                                     + (f": {cap.reason()}" if cap.reason() else ""))
                front.append(smpl)
                for tok in grammar.prefill:
                    lib.llama_sampler_accept(smpl, tok)
                if budget is not None and grammar.lazy:
                    # as the server: a lazy grammar (tool calls) is off while the budget
                    # counts or forces, so a trigger written while thinking is thinking and
                    # the forced end tag is never rejected
                    smpl = front.pop()
                    front.append(lib.rq_reasoning_gated_grammar_new(front.pop(), smpl))
        except BaseException:
            for smpl in front:
                lib.llama_sampler_free(smpl)
            self.close()
            raise
        if front:
            self._outer = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
            for smpl in front:
                lib.llama_sampler_chain_add(self._outer, smpl)
            lib.llama_sampler_chain_add(self._outer, self._inner)  # the outer chain owns it now

    @staticmethod
    def _budget_sampler(b: ReasoningBudget, vocab):
        ends = [ffi.new("char[]", e.encode()) for e in b.ends]
        err = ffi.new("char **")
        smpl = lib.rq_reasoning_budget_new(vocab, b.start.encode(), ffi.new("const char *[]", ends), len(ends),
                                           b.message.encode(), b.tokens, b.generation_prompt.encode(), err)
        if smpl == ffi.NULL:
            raise ValueError(f"reasoning budget: {_reason(err)}")
        return smpl

    def _grammar_sampler(self, g: Grammar, vocab):
        if not g.lazy:
            return lib.llama_sampler_init_grammar(vocab, g.text.encode(), g.root.encode())
        patterns = [ffi.new("char[]", p.encode()) for p in g.trigger_patterns]
        self._keep += patterns
        return lib.llama_sampler_init_grammar_lazy_patterns(
            vocab, g.text.encode(), g.root.encode(), ffi.new("const char *[]", patterns) if patterns else ffi.NULL,
            len(patterns), ffi.new("llama_token[]", g.trigger_tokens) if g.trigger_tokens else ffi.NULL,
            len(g.trigger_tokens))

    def accept_prompt(self, tokens: Iterable[int]) -> None:
        """Let penalties and DRY see the prompt (the grammar does not)."""
        for tok in tokens:
            lib.llama_sampler_accept(self._inner, tok)

    def sample(self, ctx) -> int:
        """Sample from the last logits of ``ctx`` and advance every sampler past the token."""
        return lib.llama_sampler_sample(self._outer, ctx, -1)

    def close(self) -> None:
        if self._outer is not None:
            lib.llama_sampler_free(self._outer)  # frees the inner chain too when it owns it
            self._outer = self._inner = None


def logprobs(ctx, n_vocab: int, token: int, top_n: int) -> tuple[float, list[tuple[int, float]]]:
    """Log-probability of ``token`` under the model's last logits, and the ``top_n`` best."""
    lp = ffi.new("float *")
    ids, vals = ffi.new("int[]", max(top_n, 1)), ffi.new("float[]", max(top_n, 1))
    n = lib.rq_logprobs(lib.llama_get_logits_ith(ctx, -1), n_vocab, token, top_n, lp, ids, vals)
    if n < 0:
        raise ValueError(f"no logits for token {token} (vocabulary of {n_vocab})")
    return lp[0], [(ids[i], vals[i]) for i in range(n)]
