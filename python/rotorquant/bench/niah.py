"""Needle in a haystack: can the model still find one sentence in a long cache?

A sentence with a random passphrase is put at evenly spaced depths of a haystack of the
benchmark text (repeated as needed) that fills a context length; the model is asked for
the passphrase (through its chat template when it has one) and answers greedily.  A trial
counts when the passphrase is in the answer.  Every pair sees exactly the same prompts
(seeded by the length), so scores differ only by the cache.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .settings import Pair, Settings

_QUESTION = "What is the secret passphrase mentioned in the document? Reply with the passphrase only."
_ANSWER_TOKENS = 24
_OVERHEAD = 96  # template, question and answer tokens beside the haystack


@dataclass(frozen=True)
class Trial:
    length: int
    depth: float
    passphrase: str
    document: str


def _passphrase(rng: random.Random) -> str:
    return "-".join([rng.choice(["amber", "cobalt", "violet", "silver", "crimson", "jade"]),
                     rng.choice(["falcon", "otter", "maple", "harbor", "comet"]), str(rng.randint(10, 99))])


def trials(s: Settings, text: str, tokenize) -> list[Trial]:
    """The prompts of every length, ``s.niah_trials`` needle depths each; ``tokenize``
    counts a string's tokens."""
    words = text.split()
    if not words:
        raise ValueError("the benchmark text has no words to build a haystack from")
    out = []
    for length in s.niah_lengths:
        rng = random.Random(f"niah-{length}")  # a length's prompts do not depend on the others asked for
        budget = length - _OVERHEAD
        if budget < 32:
            raise ValueError(f"NIAH length {length} leaves no room for a haystack")
        base = list(words)
        while len(tokenize(" ".join(base))) < budget:  # repeat a short text until it overfills
            base += words
        lo, hi = 0, len(base)  # the longest prefix that fits
        while hi - lo > 8:
            mid = (lo + hi) // 2
            if len(tokenize(" ".join(base[:mid]))) <= budget - 16:
                lo = mid
            else:
                hi = mid
        hay = base[:lo]
        for i in range(s.niah_trials):
            depth = (i + 0.5) / s.niah_trials
            code = _passphrase(rng)
            at = int(depth * len(hay))
            doc = " ".join(hay[:at] + [f"The secret passphrase is {code}."] + hay[at:])
            out.append(Trial(length, depth, code, doc))
    return out


def _ask(llm, trial: Trial, chat: bool) -> str:
    request = f"Read the document and answer the question.\n\n<document>\n{trial.document}\n</document>\n\n{_QUESTION}"
    if chat:
        reply = llm.create_chat_completion([{"role": "user", "content": request}], max_tokens=_ANSWER_TOKENS,
                                           temperature=0.0, enable_thinking=False)
        return reply["choices"][0]["message"].get("content") or ""
    return llm.generate(request + "\nAnswer:", max_tokens=_ANSWER_TOKENS, temperature=0.0)


def score(s: Settings, pair: Pair, length: int, cases: list[Trial], policy: Path | None) -> dict:
    """``{"hits": n, "trials": m, "answers": [...]}`` for the trials of one length."""
    from ..llama import Llama

    mine = [t for t in cases if t.length == length]
    with Llama(s.model, n_ctx=length + _ANSWER_TOKENS + 8, n_batch=512, cache_type_k=pair.k, cache_type_v=pair.v,
               flash_attn="on", n_gpu_layers=s.n_gpu_layers, n_threads=s.threads,
               kv_policy=policy if policy else "none") as llm:
        chat = "tokenizer.chat_template" in llm.metadata
        answers = []
        for t in mine:
            answers.append(_ask(llm, t, chat))
            llm.reset()
    hits = sum(t.passphrase in a for t, a in zip(mine, answers))
    return {"hits": hits, "trials": len(mine), "answers": [a[:80] for a in answers]}
