"""``Llama``: a GGUF model and one inference context, with named KV-cache types.

The object owns three C resources (model, context, per-call sampler chain) and
frees them in ``close()``, which is idempotent and also runs on garbage
collection and at the end of a ``with`` block.  One ``Llama`` is not
thread-safe: use one per thread.
"""
from __future__ import annotations

import array
import codecs
import os
from collections.abc import Iterable, Iterator, Sequence

from . import cache_types
from ._logging import Capture
from ._native import ffi, lib
from .errors import ContextError, DecodeError, ModelLoadError
from .gguf_check import check_gguf_path
from .kvpolicy import locate as _kv_locate

_FLASH_ATTN = {
    "auto": lib.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": lib.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
_UINT32_MAX = 0xFFFFFFFF


def _flash_attn_mode(value: "str | bool") -> str:
    if value is True or value is False:
        return "on" if value else "off"
    if isinstance(value, str) and value.lower() in _FLASH_ATTN:
        return value.lower()
    raise ValueError(f"flash_attn must be 'auto', 'on', 'off' or a bool, not {value!r}")


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


class Llama:
    """A loaded GGUF model with a context whose KV cache uses named types.

    >>> with Llama("model.gguf", cache_type_k="q8_0", cache_type_v="q8_0") as llm:
    ...     print(llm.generate("The capital of France is", max_tokens=16, temperature=0))

    Arguments follow llama.cpp's meaning: ``n_ctx=0`` takes the model's training
    context, ``n_gpu_layers=-1`` offloads every layer, ``flash_attn="auto"`` lets
    llama.cpp decide.  A quantized V cache needs flash attention, so
    ``flash_attn="off"`` with a quantized ``cache_type_v`` is refused up front.

    ``kv_policy`` shapes a quantized cache per model (``rq-run calibrate`` writes one):
    ``"auto"`` uses the model's policy file if there is one (``MODEL.kvpolicy.gguf``
    or the user cache), a path uses that file, ``None`` uses none.  The policy in use
    is ``self.kv_policy`` (a path or ``None``).
    """

    def __init__(self, model_path: "str | os.PathLike[str]", *, n_ctx: int = 0, n_batch: int = 512,
                 n_gpu_layers: int = 0, cache_type_k: "str | cache_types.CacheType" = "f16",
                 cache_type_v: "str | cache_types.CacheType" = "f16",
                 flash_attn: "str | bool" = "auto", seed: "int | None" = None,
                 n_threads: "int | None" = None, verbose: bool = False, vocab_only: bool = False,
                 kv_policy: "str | os.PathLike[str] | None" = "auto"):
        self._model = ffi.NULL
        self._ctx = ffi.NULL
        self._generation = 0  # bumps on every generate(); stale streams stop

        # Everything checkable is checked before any C call.
        path = check_gguf_path(model_path)
        self.cache_type_k = cache_types.get(cache_type_k)
        self.cache_type_v = cache_types.get(cache_type_v)
        fa = _flash_attn_mode(flash_attn)
        if fa == "off" and self.cache_type_v.needs_flash_attn:
            raise ValueError(
                f"cache_type_v={self.cache_type_v.name!r} is quantized, and llama.cpp reads a "
                "quantized V cache only in flash attention; use flash_attn='auto' or 'on', "
                "or an unquantized V type (f16, bf16, f32)")
        _positive_int("n_ctx", n_ctx, minimum=0)
        _positive_int("n_batch", n_batch)
        if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int):
            raise ValueError(f"n_gpu_layers must be an integer, not {n_gpu_layers!r}")
        self.n_threads = _positive_int("n_threads", n_threads if n_threads is not None else _default_threads())
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < _UINT32_MAX):
            raise ValueError(f"seed must be an integer in [0, 2**32 - 1), not {seed!r}")
        self.seed = seed
        self.model_path = path
        self.kv_policy = None
        if not vocab_only and (self.cache_type_k.quantized or self.cache_type_v.quantized or
                               kv_policy not in (None, "auto", "none")):
            self.kv_policy = _kv_locate.resolve(kv_policy, path)
        self.verbose = bool(verbose)
        if self.verbose:
            _enable_verbose_logging()

        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        mparams.vocab_only = bool(vocab_only)
        with Capture() as cap:
            self._model = lib.llama_model_load_from_file(os.fsencode(path), mparams)
        if self._model == ffi.NULL:
            raise ModelLoadError(f"could not load model {path}", cap.reason())
        self._vocab = lib.llama_model_get_vocab(self._model)
        self._metadata: "dict[str, str] | None" = None
        self.vocab_only = bool(vocab_only)
        if self.vocab_only:  # tokenizer only: no weights, no context
            self.n_batch = 0
            return

        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, cparams.n_ubatch)
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.flash_attn_type = _FLASH_ATTN[fa]
        cparams.type_k = self.cache_type_k.ggml_type
        cparams.type_v = self.cache_type_v.ggml_type
        cparams.no_perf = False
        policy_path = ffi.new("char[]", os.fsencode(self.kv_policy)) if self.kv_policy else ffi.NULL
        cparams.kv_policy = policy_path
        self._context_params(cparams)
        with Capture() as cap:
            self._ctx = lib.llama_init_from_model(self._model, cparams)
        if self._ctx == ffi.NULL:
            self.close()
            raise ContextError(
                f"could not create a context (n_ctx={n_ctx}, cache_type_k={self.cache_type_k}, "
                f"cache_type_v={self.cache_type_v}, flash_attn={fa}, kv_policy={self.kv_policy})",
                cap.reason())
        self.n_batch = int(lib.llama_n_batch(self._ctx))

    def _context_params(self, cparams) -> None:
        """Hook for subclasses that need more context parameters (e.g. an eval callback)."""

    # -- lifetime ----------------------------------------------------------
    def close(self) -> None:
        """Free the context and the model.  Safe to call more than once."""
        self._generation += 1
        if getattr(self, "_ctx", ffi.NULL) != ffi.NULL:
            lib.llama_free(self._ctx)
            self._ctx = ffi.NULL
        if getattr(self, "_model", ffi.NULL) != ffi.NULL:
            lib.llama_model_free(self._model)
            self._model = ffi.NULL

    @property
    def closed(self) -> bool:
        return self._model == ffi.NULL

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter teardown
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("vocab only" if self.vocab_only else f"n_ctx={self.n_ctx}")
        return (f"Llama({str(self.model_path)!r}, {state}, cache_type_k={self.cache_type_k}, "
                f"cache_type_v={self.cache_type_v})")

    def _check_open(self, need_context: bool = True) -> None:
        if self.closed:
            raise ValueError("this Llama is closed")
        if need_context and self._ctx == ffi.NULL:
            raise ValueError("this Llama was opened with vocab_only=True: it has no context")

    # -- facts -------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        self._check_open()
        return int(lib.llama_n_ctx(self._ctx))

    @property
    def n_vocab(self) -> int:
        self._check_open(need_context=False)
        return int(lib.llama_vocab_n_tokens(self._vocab))

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF key/values of the model, as llama.cpp renders them (strings)."""
        self._check_open(need_context=False)
        if self._metadata is None:
            self._metadata = {}
            for i in range(lib.llama_model_meta_count(self._model)):
                key = _read_c_string(lambda buf, n: lib.llama_model_meta_key_by_index(self._model, i, buf, n))
                val = _read_c_string(lambda buf, n: lib.llama_model_meta_val_str_by_index(self._model, i, buf, n))
                self._metadata[key] = val
        return dict(self._metadata)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held, summed over devices: ``model`` weights, ``context``
        (KV cache and recurrent state) and ``compute`` buffers."""
        self._check_open()
        out = ffi.new("struct rq_memory_bytes *")
        lib.rq_context_memory(self._ctx, out)
        return {"model": out.model, "context": out.context, "compute": out.compute}

    def perf(self) -> dict[str, float]:
        """llama.cpp's counters for the last ``generate``: tokens and milliseconds."""
        self._check_open()
        p = lib.llama_perf_context(self._ctx)
        return {"prompt_tokens": p.n_p_eval, "prompt_ms": p.t_p_eval_ms,
                "generated_tokens": p.n_eval, "generate_ms": p.t_eval_ms}

    # -- text <-> tokens ---------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Text to token ids.  ``add_special`` adds BOS/EOS as the model asks;
        ``parse_special`` turns ``<|im_start|>``-style text into control tokens."""
        self._check_open(need_context=False)
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        data = text.encode("utf-8")
        capacity = len(data) + 8
        for _ in range(2):
            buf = ffi.new("llama_token[]", capacity)
            n = lib.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, parse_special)
            if n >= 0:
                return list(buf[0:n])
            if n == -(2**31):
                break
            capacity = -n
        raise ValueError(f"text of {len(data)} bytes is too long to tokenize")

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        """Token ids to text, inverse of ``tokenize``: the BOS/EOS and leading space
        the tokenizer adds are removed; ``special`` renders control tokens as text."""
        self._check_open(need_context=False)
        ids = self._checked_tokens(tokens)
        # Drop the BOS ourselves: upstream keeps the tokenizer's leading space
        # when it removes a BOS, which breaks detokenize(tokenize(s)) == s.
        if ids and lib.llama_vocab_get_add_bos(self._vocab) and ids[0] == lib.llama_vocab_bos(self._vocab):
            ids = ids[1:]
        arr = ffi.new("llama_token[]", ids)
        capacity = max(16, 8 * len(ids))
        for _ in range(2):
            buf = ffi.new("char[]", capacity)
            n = lib.llama_detokenize(self._vocab, arr, len(ids), buf, capacity, True, special)
            if n >= 0:
                return ffi.unpack(buf, n).decode("utf-8", "replace")
            capacity = -n
        raise ValueError("could not detokenize")  # pragma: no cover

    def _checked_tokens(self, tokens: Iterable[int]) -> list[int]:
        ids = list(tokens)
        n_vocab = self.n_vocab
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_vocab:
                raise ValueError(f"invalid token id {t!r} (vocabulary has {n_vocab} tokens)")
        return ids

    def _piece(self, token: int) -> bytes:
        buf = ffi.new("char[]", 64)
        n = lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ffi.new("char[]", -n)
            n = lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        return ffi.unpack(buf, n)

    # -- low level: evaluate tokens, read logits, save and restore state ---------
    def reset(self) -> None:
        """Forget every evaluated token (clears the KV cache)."""
        self._check_open()
        self._generation += 1
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)

    def eval(self, tokens: Sequence[int]) -> None:
        """Append ``tokens`` to the context (after those evaluated before)."""
        self._check_open()
        ids = self._checked_tokens(tokens)
        self._generation += 1
        arr = ffi.new("llama_token[]", ids)
        for start in range(0, len(ids), self.n_batch):
            self._decode(arr, start, min(self.n_batch, len(ids) - start))

    def logits(self) -> "array.array[float]":
        """Logits after the last evaluated token (one float per vocabulary entry)."""
        self._check_open()
        with Capture() as cap:
            ptr = lib.llama_get_logits_ith(self._ctx, -1)
        if ptr == ffi.NULL:
            raise ValueError(f"no logits: evaluate some tokens first ({cap.reason()})")
        out = array.array("f")
        out.frombytes(ffi.buffer(ptr, 4 * self.n_vocab))
        return out

    def save_state(self) -> bytes:
        """The context's whole state (KV cache in its own type, logits, RNG) as bytes."""
        self._check_open()
        size = lib.llama_state_get_size(self._ctx)
        buf = ffi.new("uint8_t[]", size)
        n = lib.llama_state_get_data(self._ctx, buf, size)
        return ffi.unpack(ffi.cast("char *", buf), n)

    def load_state(self, state: bytes) -> None:
        """Restore a state from ``save_state`` of a context with the same model and settings."""
        self._check_open()
        if not isinstance(state, (bytes, bytearray, memoryview)):
            raise TypeError(f"state must be bytes, not {type(state).__name__}")
        self._generation += 1
        data = bytes(state)
        with Capture() as cap:
            n = lib.llama_state_set_data(self._ctx, data, len(data))
        if n == 0:
            raise ValueError(f"state of {len(data)} bytes does not fit this context: {cap.reason() or 'rejected'}")

    # -- generation ----------------------------------------------------------
    def generate(self, prompt: str, max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.05, seed: "int | None" = None,
                 stop: "str | Sequence[str]" = (), stream: bool = False) -> "str | Iterator[str]":
        """Complete ``prompt`` (raw text, no chat template).

        ``temperature <= 0`` is greedy decoding.  Generation ends at an
        end-of-generation token, after ``max_tokens``, when the context is full,
        or just before the first ``stop`` string (which is not returned).
        With ``stream=True`` an iterator of text pieces is returned; starting
        another generation ends an unfinished stream.  The KV cache is cleared at
        the start of every call.
        """
        self._check_open()
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be str, not {type(prompt).__name__}")
        _positive_int("max_tokens", max_tokens, minimum=0)
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        if not all(isinstance(s, str) and s for s in stops):
            raise ValueError("stop must be a string or a sequence of non-empty strings")
        if seed is None:
            seed = self.seed
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < _UINT32_MAX):
            raise ValueError(f"seed must be an integer in [0, 2**32 - 1), not {seed!r}")
        for name, value in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, not {value!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise ValueError(f"top_k must be an integer, not {top_k!r}")
        tokens = self.tokenize(prompt)
        if not tokens:
            raise ValueError("prompt is empty and the model adds no BOS token; give some text")
        if len(tokens) >= self.n_ctx:
            raise ValueError(f"prompt is {len(tokens)} tokens, which does not fit the context "
                             f"of {self.n_ctx} tokens (raise n_ctx)")
        self._generation += 1
        pieces = self._generate(self._generation, tokens, max_tokens, stops,
                                (temperature, top_k, top_p, min_p, seed))
        return pieces if stream else "".join(pieces)

    def _sampler(self, temperature: float, top_k: int, top_p: float, min_p: float, seed: "int | None"):
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        if top_k > 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(top_k))
        if top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
        if min_p > 0.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(min_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(
            lib.LLAMA_DEFAULT_SEED if seed is None else seed))
        return chain

    def _decode(self, arr, start: int, count: int) -> None:
        batch = lib.llama_batch_get_one(arr + start, count)
        with Capture() as cap:
            rc = lib.llama_decode(self._ctx, batch)
        if rc != 0:
            what = {1: "no KV-cache slot for the batch (context full)", 2: "aborted",
                    -1: "invalid batch"}.get(rc, f"error {rc}")
            raise DecodeError(f"llama_decode failed: {what}", cap.reason())

    def _generate(self, generation: int, tokens: list[int], max_tokens: int,
                  stops: tuple[str, ...], sampling: tuple) -> Iterator[str]:
        sampler = self._sampler(*sampling)
        try:
            lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
            lib.llama_perf_context_reset(self._ctx)
            prompt = ffi.new("llama_token[]", tokens)
            for start in range(0, len(tokens), self.n_batch):
                self._decode(prompt, start, min(self.n_batch, len(tokens) - start))
            n_past, n_ctx = len(tokens), self.n_ctx
            text = _StopScanner(stops)
            utf8 = codecs.getincrementaldecoder("utf-8")("replace")
            step = ffi.new("llama_token[1]")
            for _ in range(max_tokens):
                if generation != self._generation or self.closed:
                    return  # a newer generate() or close() took over the context
                token = lib.llama_sampler_sample(sampler, self._ctx, -1)
                if lib.llama_vocab_is_eog(self._vocab, token):
                    break
                out, done = text.feed(utf8.decode(self._piece(token)))
                if out:
                    yield out
                if done or n_past >= n_ctx:
                    return
                step[0] = token
                self._decode(step, 0, 1)
                n_past += 1
            out, _ = text.feed(utf8.decode(b"", final=True))
            yield out + text.flush()
        finally:
            lib.llama_sampler_free(sampler)


class _StopScanner:
    """Streams text while holding back anything that may begin a stop string."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        self.pending += piece
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        keep = 0
        for s in self.stops:  # longest tail of pending that is a prefix of a stop
            for k in range(min(len(s) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(s[:k]):
                    keep = k
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _read_c_string(call, size: int = 256) -> str:
    """Call a snprintf-style C function, growing the buffer until it fits."""
    buf = ffi.new("char[]", size)
    n = call(buf, size)
    if n >= size:
        buf = ffi.new("char[]", n + 1)
        n = call(buf, n + 1)
    return ffi.string(buf).decode("utf-8", "replace") if n >= 0 else ""


def _enable_verbose_logging() -> None:
    import logging

    log = logging.getLogger("rotorquant.llama")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.DEBUG)


__all__ = ["Llama"]
