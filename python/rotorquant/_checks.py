"""Small helpers the Llama modules share: the per-object lock and argument checks."""
from __future__ import annotations

import functools


def _locked(method):
    """Run a method under the object's lock (concurrent calls are serialized)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


MAX_ALTERNATIVES = 20  # OpenAI's limit for top_logprobs / logprobs


def _alternatives(name: str, value) -> int:
    """How many alternatives per token a logprobs request asks for (0..20)."""
    _positive_int(name, value, minimum=0)
    if value > MAX_ALTERNATIVES:
        raise ValueError(f"{name} must be at most {MAX_ALTERNATIVES}, not {value}")
    return value
