"""``Llama``: a GGUF model and one inference context, with named KV-cache types.

The object owns its C resources (model, context, abort switch, per-call sampler
chain) and frees them in ``close()``, which is idempotent and also runs on garbage
collection and at the end of a ``with`` block.  Calls from several threads are
serialized by a lock per object (a stream takes the lock once per token, so another
thread's call ends it instead of waiting for it).  Ctrl-C stops a running decode
between two graph nodes (see ``_call_interruptibly``).
"""
from __future__ import annotations

import array
import codecs
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Iterator, Mapping, Sequence

from . import cache_types, rpc
from ._logging import Capture, logger
from ._native import ffi, lib
from .errors import ContextError, DecodeError, ModelLoadError
from .gguf_check import validate_gguf
from .kvpolicy import locate as _kv_locate
from ._checks import _alternatives, _locked, _positive_int
from .chat_api import ChatMixin
from .checkpoints import Checkpoints
from .media import Chunks, MediaUnit, Projector, n_tokens, positions
from .completion import Step, completion, completion_chunks
from .placement import Placement
from .sampling import Grammar, ReasoningBudget, SamplerChain, Sampling, logprobs

_FLASH_ATTN = {
    "auto": lib.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": lib.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
_UINT32_MAX = 0xFFFFFFFF
_FIT_STATUS = {0: "fits", 1: "does not fit", 2: "error"}
_POOLING = {
    None: lib.LLAMA_POOLING_TYPE_UNSPECIFIED, "none": lib.LLAMA_POOLING_TYPE_NONE,
    "mean": lib.LLAMA_POOLING_TYPE_MEAN, "cls": lib.LLAMA_POOLING_TYPE_CLS, "last": lib.LLAMA_POOLING_TYPE_LAST,
}


def _flash_attn_mode(value: str | bool) -> str:
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


class Llama(ChatMixin):
    """A loaded GGUF model with a context whose KV cache uses named types.

    >>> with Llama("model.gguf", cache_type_k="q8_0", cache_type_v="q8_0") as llm:
    ...     print(llm.generate("The capital of France is", max_tokens=16, temperature=0))

    Arguments follow llama.cpp's meaning: ``n_ctx=0`` takes the model's training
    context, ``n_gpu_layers=-1`` offloads every layer, ``flash_attn="auto"`` lets
    llama.cpp decide.  A quantized V cache needs flash attention, so
    ``flash_attn="off"`` with a quantized ``cache_type_v`` is refused up front.

    Placement (:mod:`rotorquant.placement`): ``split_mode`` ("none", "layer", "row",
    "tensor"), ``main_gpu``, ``tensor_split`` (shares per GPU), ``override_tensor``
    ({"exps": "CPU"}: tensor-name regex -> device), ``n_cpu_moe`` (experts of the first N
    layers stay in RAM), ``use_mmap`` / ``use_mlock`` (None: llama.cpp decides),
    ``rpc_servers`` (["host:port", ...] of ``rq-run rpc-server`` / ``ggml-rpc-server``
    processes of the same build: their devices take layers first, as with llama.cpp's
    ``--rpc``; each is probed before use, :class:`~rotorquant.errors.RpcError` if it
    cannot serve).
    ``embeddings=True`` (with ``pooling``) makes :meth:`embed` available.

    ``kv_policy`` shapes a quantized cache per model (``rq-run calibrate`` writes one):
    ``"auto"`` uses the model's policy file if there is one (``MODEL.kvpolicy.gguf``
    or the user cache), a path uses that file, ``None`` uses none.  The policy in use
    is ``self.kv_policy`` (a path or ``None``).

    ``fit=True`` runs llama.cpp's parameter fitting (what ``llama-cli`` does by default)
    before the load: the settings still at llama.cpp's defaults — ``n_gpu_layers=-1``,
    no ``tensor_split``/``override_tensor``, ``n_ctx=0`` — are set to what fits each
    device's free memory less ``fit_target_mib`` (the context no smaller than
    ``fit_min_ctx``); ``n_gpu_layers="auto"`` means ``-1`` with ``fit=True``.  The outcome
    is ``self.fit_status`` ("fits", "does not fit", "error") and ``self.n_gpu_layers``.

    ``mmproj_path``: the multimodal projector (``mmproj-*.gguf``) for images/audio in chat
    messages (:mod:`rotorquant.media`: parts ``image_url``/``input_audio`` with a path, a
    ``data:`` URI or bytes); a chat's next turn keeps the KV cache up to the last medium it
    shares with the previous prompt (a medium is known by a hash of its bytes).

    ``chat_template`` (Jinja source) replaces the GGUF's template for the chat methods.
    ``ctx_checkpoints``: on hybrid and recurrent models (Qwen3.5, Mamba), how many
    snapshots of the recurrent state are kept so that a prompt departing from the cache
    (a chat's next turn) goes back to one instead of being evaluated whole
    (:mod:`rotorquant.checkpoints`); 0 turns them off.
    """

    def __init__(self, model_path: str | os.PathLike[str], *, n_ctx: int = 0, n_batch: int = 512,
                 n_gpu_layers: int | str = 0, cache_type_k: str | cache_types.CacheType = "f16",
                 cache_type_v: str | cache_types.CacheType = "f16",
                 flash_attn: str | bool = "auto", seed: int | None = None,
                 n_threads: int | None = None, verbose: bool = False, vocab_only: bool = False,
                 kv_policy: str | os.PathLike[str] | None = "auto", embeddings: bool = False,
                 pooling: str | None = None, split_mode: str = "layer", main_gpu: int = 0,
                 tensor_split: Sequence[float] | None = None,
                 override_tensor: Mapping[str, str] | None = None, n_cpu_moe: int = 0,
                 use_mmap: bool | None = None, use_mlock: bool = False,
                 chat_template: str | None = None, ctx_checkpoints: int = 4, fit: bool = False,
                 fit_target_mib: int = 1024, fit_min_ctx: int = 4096,
                 mmproj_path: str | os.PathLike[str] | None = None,
                 rpc_servers: Sequence[str] | None = None):
        self._lock = threading.RLock()
        self._rpc_servers: list[str] = []  # in use by this object until close() (rotorquant.rpc)
        self._chat: ChatTemplate | None = None
        self._checkpoints: Checkpoints | None = None
        self._projector: Projector | None = None
        self._model = ffi.NULL
        self._ctx = ffi.NULL
        self._abort = ffi.NULL
        self._worker: ThreadPoolExecutor | None = None
        self._generation = 0  # bumps on every generate(); stale streams stop
        self._cached: list | None = []  # what the KV cache holds, in order: tokens, MediaUnits (None: unknown)
        self._reused = 0                          # prompt tokens the last generation took from it

        # Everything checkable is checked before any C call.
        path = validate_gguf(model_path).path
        self.cache_type_k = cache_types.get(cache_type_k)
        self.cache_type_v = cache_types.get(cache_type_v)
        fa = _flash_attn_mode(flash_attn)
        if fa == "off" and self.cache_type_v.needs_flash_attn:
            raise ValueError(
                f"cache_type_v={self.cache_type_v.name!r} is quantized, and llama.cpp reads a "
                "quantized V cache only in flash attention; use flash_attn='auto' or 'on', "
                "or an unquantized V type (f16, bf16, f32)")
        if pooling not in _POOLING:
            raise ValueError(f"pooling must be one of {sorted(k for k in _POOLING if k)} or None "
                             f"(the model's own), not {pooling!r}")
        if pooling is not None and not embeddings:
            raise ValueError("pooling applies to embeddings: pass embeddings=True as well")
        self.embeddings = bool(embeddings)
        placement = Placement(split_mode=split_mode, main_gpu=main_gpu, tensor_split=tensor_split,
                              override_tensor=override_tensor, n_cpu_moe=n_cpu_moe,
                              use_mmap=use_mmap, use_mlock=use_mlock, rpc_servers=rpc_servers)
        self._rpc_servers = placement.rpc_servers
        _positive_int("n_ctx", n_ctx, minimum=0)
        _positive_int("ctx_checkpoints", ctx_checkpoints, minimum=0)
        _positive_int("n_batch", n_batch)
        if n_gpu_layers == "auto":  # as llama-cli's default: every layer, then fit to free memory
            n_gpu_layers, fit = -1, True
        if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int):
            raise ValueError(f"n_gpu_layers must be an integer or 'auto', not {n_gpu_layers!r}")
        if not isinstance(fit, bool):
            raise ValueError(f"fit must be True or False, not {fit!r}")
        _positive_int("fit_target_mib", fit_target_mib, minimum=0)
        _positive_int("fit_min_ctx", fit_min_ctx, minimum=0)
        self.n_threads = _positive_int("n_threads", n_threads if n_threads is not None else _default_threads())
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < _UINT32_MAX):
            raise ValueError(f"seed must be an integer in [0, 2**32 - 1), not {seed!r}")
        self.seed = seed
        self.model_path = path
        if chat_template is not None and (not isinstance(chat_template, str) or not chat_template.strip()):
            raise ValueError("chat_template must be Jinja source text (or None for the model's own)")
        self.chat_template = chat_template
        if mmproj_path is not None and not os.path.isfile(os.fspath(mmproj_path)):
            raise FileNotFoundError(f"no projector file {os.fspath(mmproj_path)}")
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
        placement.apply(mparams)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        # pooled embeddings need a whole text in one physical batch
        cparams.n_ubatch = n_batch if self.embeddings else min(n_batch, cparams.n_ubatch)
        cparams.embeddings = self.embeddings
        cparams.pooling_type = _POOLING[pooling]
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.flash_attn_type = _FLASH_ATTN[fa]
        cparams.type_k = self.cache_type_k.ggml_type
        cparams.type_v = self.cache_type_v.ggml_type
        cparams.no_perf = False
        policy_path = ffi.new("char[]", os.fsencode(self.kv_policy)) if self.kv_policy else ffi.NULL
        cparams.kv_policy = policy_path
        self._context_params(cparams)
        self.fit_status: str | None = None
        if fit and not vocab_only:
            with Capture() as cap:
                status = placement.fit(os.fsencode(path), mparams, cparams, fit_target_mib, fit_min_ctx)
            self.fit_status = _FIT_STATUS.get(status, "error")
            if status != 0:
                logger.warning("fitting to free device memory: %s%s", self.fit_status,
                               f" ({cap.reason()})" if cap.reason() else "")
        self.n_gpu_layers = int(mparams.n_gpu_layers)
        with Capture() as cap:
            self._model = lib.llama_model_load_from_file(os.fsencode(path), mparams)
        if self._model == ffi.NULL:
            raise ModelLoadError(f"could not load model {path}", cap.reason())
        self._vocab = lib.llama_model_get_vocab(self._model)
        self._metadata: dict[str, str] | None = None
        self.vocab_only = bool(vocab_only)
        if self.vocab_only:  # tokenizer only: no weights, no context
            self.n_batch = 0
            return

        with Capture() as cap:
            self._ctx = lib.llama_init_from_model(self._model, cparams)
        if self._ctx == ffi.NULL:
            self.close()
            raise ContextError(
                f"could not create a context (n_ctx={n_ctx}, cache_type_k={self.cache_type_k}, "
                f"cache_type_v={self.cache_type_v}, flash_attn={fa}, kv_policy={self.kv_policy})",
                cap.reason())
        self.n_batch = int(lib.llama_n_batch(self._ctx))
        if lib.llama_model_is_recurrent(self._model) or lib.llama_model_is_hybrid(self._model):
            self._checkpoints = Checkpoints(self._ctx, ctx_checkpoints)
        if mmproj_path is not None:
            try:
                self._projector = Projector(mmproj_path, self._model, n_threads=self.n_threads,
                                            use_gpu=self.n_gpu_layers != 0, flash_attn_type=_FLASH_ATTN[fa])
            except BaseException:
                self.close()
                raise
        self._abort = lib.rq_abort_new()
        lib.llama_set_abort_callback(self._ctx, ffi.addressof(lib, "rq_abort_callback"), self._abort)

    def _context_params(self, cparams) -> None:
        """Hook for subclasses that need more context parameters (e.g. an eval callback)."""

    # -- lifetime ----------------------------------------------------------
    def close(self) -> None:
        """Free the context and the model.  Safe to call more than once."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before anything was allocated
            return
        with lock:
            self._generation += 1
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None
            if self._ctx != ffi.NULL:
                lib.llama_free(self._ctx)
                self._ctx = ffi.NULL
            if self._abort != ffi.NULL:
                lib.rq_abort_free(self._abort)
                self._abort = ffi.NULL
            if self._chat is not None:
                self._chat.close()
                self._chat = None
            if self._projector is not None:
                self._projector.close()
                self._projector = None
            if self._model != ffi.NULL:
                lib.llama_model_free(self._model)
                self._model = ffi.NULL
            rpc.release(self._rpc_servers)  # after the model, which held the connections
            self._rpc_servers = []

    @property
    def closed(self) -> bool:
        return self._model == ffi.NULL

    def __enter__(self) -> Llama:
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

    @_locked
    def memory_bytes(self, *, by_device: bool = False) -> dict[str, int] | dict[str, dict[str, int]]:
        """Bytes held, summed over devices: ``model`` weights, ``context``
        (KV cache and recurrent state) and ``compute`` buffers.  ``by_device=True``: per
        device name ("CPU", "CUDA0", "RPC0", ...), with ``context`` split into ``kv`` and
        ``recurrent`` (the state of linear-attention layers), to see where layers went."""
        self._check_open()
        if not by_device:
            out = ffi.new("struct rq_memory_bytes *")
            lib.rq_context_memory(self._ctx, out)
            return {"model": out.model, "context": out.context, "compute": out.compute}
        return memory_by_device(self._ctx)

    @_locked
    def perf(self) -> dict[str, float]:
        """llama.cpp's counters for the last ``generate``: tokens and milliseconds, and
        how many prompt tokens came from the KV cache of earlier calls (not evaluated)."""
        self._check_open()
        p = lib.llama_perf_context(self._ctx)
        return {"prompt_tokens": p.n_p_eval, "prompt_ms": p.t_p_eval_ms,
                "generated_tokens": p.n_eval, "generate_ms": p.t_eval_ms,
                "prompt_reused_tokens": self._reused}

    # -- text <-> tokens ---------------------------------------------------
    @_locked
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

    @_locked
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

    def _piece(self, token: int, special: bool = False) -> bytes:
        buf = ffi.new("char[]", 64)
        n = lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ffi.new("char[]", -n)
            n = lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return ffi.unpack(buf, n)

    # -- low level: evaluate tokens, read logits, save and restore state ---------
    @_locked
    def reset(self) -> None:
        """Forget every evaluated token (clears the KV cache)."""
        self._check_open()
        self._generation += 1
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        self._cached = []

    @_locked
    def eval(self, tokens: Sequence[int]) -> None:
        """Append ``tokens`` to the context (after those evaluated before)."""
        self._check_open()
        ids = self._checked_tokens(tokens)
        self._generation += 1
        arr = ffi.new("llama_token[]", ids)
        for start in range(0, len(ids), self.n_batch):
            self._decode(arr, start, min(self.n_batch, len(ids) - start))
        if self._cached is not None:
            self._cached += ids

    @_locked
    def logits(self) -> array.array[float]:
        """Logits after the last evaluated token (one float per vocabulary entry)."""
        self._check_open()
        with Capture() as cap:
            ptr = lib.llama_get_logits_ith(self._ctx, -1)
        if ptr == ffi.NULL:
            raise ValueError(f"no logits: evaluate some tokens first ({cap.reason()})")
        out = array.array("f")
        out.frombytes(ffi.buffer(ptr, 4 * self.n_vocab))
        return out

    @_locked
    def save_state(self, path: str | os.PathLike[str] | None = None, *,
                   seq_id: int | None = None) -> bytes | None:
        """The context's state (KV cache in its own type, logits, RNG) as bytes, or into
        the file ``path`` (written whole or not at all).  ``seq_id`` takes one sequence's
        cache only, for :meth:`load_state` into the same or another sequence."""
        self._check_open()
        seq = self._seq(seq_id)
        if seq is None:
            size = lib.llama_state_get_size(self._ctx)
            buf = ffi.new("uint8_t[]", size)
            n = lib.llama_state_get_data(self._ctx, buf, size)
        else:
            size = lib.llama_state_seq_get_size(self._ctx, seq)
            buf = ffi.new("uint8_t[]", size)
            n = lib.llama_state_seq_get_data(self._ctx, buf, size, seq)
        data = ffi.unpack(ffi.cast("char *", buf), n)
        if path is None:
            return data
        _write_whole(os.fspath(path), _STATE_MAGIC + data)
        return None

    @_locked
    def load_state(self, state: bytes | str | os.PathLike[str], *, seq_id: int | None = None) -> None:
        """Restore a state from :meth:`save_state` (bytes or a file) of a context with the
        same model and settings; with ``seq_id``, a one-sequence state into that sequence."""
        self._check_open()
        seq = self._seq(seq_id)
        if isinstance(state, (str, os.PathLike)):
            raw = open(state, "rb").read()
            if not raw.startswith(_STATE_MAGIC):
                raise ValueError(f"{os.fspath(state)} is not a rotorquant state file")
            data = raw[len(_STATE_MAGIC):]
        elif isinstance(state, (bytes, bytearray, memoryview)):
            data = bytes(state)
        else:
            raise TypeError(f"state must be bytes or a path, not {type(state).__name__}")
        self._generation += 1
        with Capture() as cap:
            n = (lib.llama_state_set_data(self._ctx, data, len(data)) if seq is None
                 else lib.llama_state_seq_set_data(self._ctx, data, len(data), seq))
        self._cached = None  # the state's tokens are not recorded in it for us
        if n == 0:
            raise ValueError(f"state of {len(data)} bytes does not fit this context: {cap.reason() or 'rejected'}")

    def _seq(self, seq_id: int | None) -> int | None:
        if seq_id is None:
            return None
        n = int(lib.llama_n_seq_max(self._ctx))
        if isinstance(seq_id, bool) or not isinstance(seq_id, int) or not 0 <= seq_id < n:
            raise ValueError(f"seq_id must be an integer in [0, {n}), not {seq_id!r}")
        return seq_id

    # -- embeddings ----------------------------------------------------------
    @_locked
    def embed(self, text: str | Sequence[str], *, normalize: bool = True):
        """Embedding of ``text`` (a list of floats), or of each text of a sequence.

        Needs ``Llama(..., embeddings=True)``.  The vector is pooled as the model says
        (or as ``pooling`` chose: mean, cls, last); with ``pooling="none"`` one vector per
        token is returned instead.  ``normalize`` scales every vector to unit length.
        Each text is evaluated alone, in one batch of at most ``n_batch`` tokens.
        """
        self._check_open()
        if not self.embeddings:
            raise ValueError("this Llama computes no embeddings: open it with embeddings=True")
        if isinstance(text, str):
            return self._embed_one(text, normalize)
        texts = list(text)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("text must be a str or a sequence of str")
        return [self._embed_one(t, normalize) for t in texts]

    def _embed_one(self, text: str, normalize: bool):
        tokens = self.tokenize(text)
        if not tokens:
            raise ValueError("text is empty and the model adds no BOS token")
        limit = min(self.n_ctx, int(lib.llama_n_ubatch(self._ctx)))
        if len(tokens) > limit:
            raise ValueError(f"text is {len(tokens)} tokens; embeddings take at most {limit} "
                             "(raise n_batch and n_ctx)")
        self._generation += 1
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        self._cached = None
        arr = ffi.new("llama_token[]", tokens)
        self._decode(arr, 0, len(tokens))
        n_embd = int(lib.llama_model_n_embd(self._model))
        if lib.llama_pooling_type(self._ctx) == lib.LLAMA_POOLING_TYPE_NONE:
            rows = [lib.llama_get_embeddings_ith(self._ctx, i) for i in range(len(tokens))]
            if any(r == ffi.NULL for r in rows):
                raise ValueError("llama.cpp returned no per-token embeddings")
            return [_unit(list(ffi.unpack(r, n_embd)), normalize) for r in rows]
        ptr = lib.llama_get_embeddings_seq(self._ctx, 0)
        if ptr == ffi.NULL:
            raise ValueError("llama.cpp returned no pooled embedding")
        return _unit(list(ffi.unpack(ptr, n_embd)), normalize)

    # -- generation ----------------------------------------------------------
    @_locked
    def generate(self, prompt: str, max_tokens: int = 128, *, stop: str | Sequence[str] = (),
                 stream: bool = False, **sampling) -> str | Iterator[str]:
        """Complete ``prompt`` (raw text, no chat template).

        ``sampling`` takes the fields of :class:`rotorquant.Sampling` (``temperature``,
        ``top_k``, ``top_p``, ``min_p``, penalties, DRY, XTC, mirostat, ``logit_bias``,
        ``seed``, ``grammar``...); unknown names raise ``TypeError``.  ``temperature <= 0``
        is greedy decoding.  Generation ends at an end-of-generation token, after
        ``max_tokens``, when the context is full, or just before the first ``stop``
        string (which is not returned).  With ``stream=True`` an iterator of text pieces
        is returned; starting another generation ends an unfinished stream.  What the KV
        cache holds from earlier calls is reused for the prefix this prompt shares with it
        (a chat's earlier turns are not evaluated again); the rest is dropped.
        """
        _, steps = self._start(self._prompt_tokens(prompt), max_tokens, stop, sampling)
        pieces = (step.text for step in steps if step.text)
        return pieces if stream else "".join(pieces)

    @_locked
    def create_completion(self, prompt: str, *, max_tokens: int = 16, stream: bool = False,
                          stop: str | Sequence[str] = (), logprobs: int | None = None,
                          **sampling) -> dict | Iterator[dict]:
        """An OpenAI-shaped text completion (``object: "text_completion"``).

        ``logprobs=N`` adds, per generated token, its log-probability under the model and
        the N most likely alternatives (0 <= N <= 20), computed from the one row of logits
        every step produces anyway.  With ``stream=True`` an iterator of chunks is
        returned; the last one carries ``finish_reason`` ("stop" or "length").
        Other arguments as :meth:`generate`.
        """
        if logprobs is not None:
            _alternatives("logprobs", logprobs)
        n_prompt, steps = self._start(self._prompt_tokens(prompt), max_tokens, stop, sampling,
                                      top_logprobs=logprobs)
        model = os.path.basename(self.model_path)
        if stream:
            return completion_chunks(steps, model, logprobs is not None, self._token_text)
        return completion(steps, model, n_prompt, logprobs is not None, self._token_text)

    def _prompt_tokens(self, prompt: str, parse_special: bool = False) -> list[int]:
        self._check_open()
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be str, not {type(prompt).__name__}")
        tokens = self.tokenize(prompt, parse_special=parse_special)
        if not tokens:
            raise ValueError("prompt is empty and the model adds no BOS token; give some text")
        if len(tokens) >= self.n_ctx:
            raise ValueError(f"prompt is {len(tokens)} tokens, which does not fit the context "
                             f"of {self.n_ctx} tokens (raise n_ctx)")
        return tokens

    def _start(self, tokens: list[int] | Chunks, max_tokens: int, stop, sampling: dict,
               top_logprobs: int | None = None, grammar: Grammar | None = None,
               special: frozenset = frozenset(), marks: tuple[int, ...] = (),
               budget: ReasoningBudget | None = None) -> tuple[int, Iterator[Step]]:
        """Check everything, then return the prompt's length in tokens and the (lazy)
        generation; errors surface here, not at the first step.  ``special``: token ids
        whose text is rendered although they are control tokens (a chat template's
        tool-call markers)."""
        try:
            self._check_open()
            _positive_int("max_tokens", max_tokens, minimum=0)
            stops = (stop,) if isinstance(stop, str) else tuple(stop)
            if not all(isinstance(s, str) and s for s in stops):
                raise ValueError("stop must be a string or a sequence of non-empty strings")
            if sampling.get("seed") is None and self.seed is not None:
                sampling = dict(sampling, seed=self.seed)
            settings = Sampling(**sampling)
            chain = SamplerChain(settings, self._vocab, self.n_vocab, self.n_ctx, grammar, budget)
        except BaseException:
            if isinstance(tokens, Chunks):
                tokens.close()
            raise
        self._generation += 1
        n_prompt = tokens.n_tokens if isinstance(tokens, Chunks) else len(tokens)
        return n_prompt, self._generate(self._generation, tokens, max_tokens, stops, chain, top_logprobs,
                                           special, marks)

    def _keep_prefix(self, units: list, boundaries: Sequence[int] | None = None) -> int:
        """Reuse the KV cache for the longest prefix ``units`` (tokens; for a prompt with
        media, MediaUnits too) share with what it holds (a chat's earlier turns, a fixed
        system prompt, an image): drop the rest and return how many units stay.  At least
        the last unit is evaluated again, for its logits; ``boundaries`` (sorted) are the
        only unit counts evaluation may resume at (a prompt with media resumes at a chunk).
        Where the memory cannot drop a tail (the recurrent state of hybrid models), go back
        to the newest checkpoint inside the shared prefix (rotorquant/checkpoints.py,
        counted in units), or start over if there is none."""
        mem = lib.llama_get_memory(self._ctx)

        def resumable(n: int) -> int:
            return n if boundaries is None else max((b for b in boundaries if b <= n), default=0)

        keep = 0
        if self._cached:
            for a, b in zip(self._cached, units[:-1]):
                if a != b:
                    break
                keep += 1
        keep = resumable(keep)
        ok = keep > 0 and lib.llama_memory_seq_rm(mem, 0, positions(units[:keep]), -1)
        if not ok and keep > 0 and self._checkpoints:
            keep = self._checkpoints.restore(keep)
            ok = keep > 0 and resumable(keep) == keep and lib.llama_memory_seq_rm(mem, 0, positions(units[:keep]), -1)
        if not ok:
            lib.llama_memory_clear(mem, True)
            keep = 0
        if self._checkpoints is not None:
            self._checkpoints.drop_after(keep)
        self._cached = list(units[:keep])
        self._reused = n_tokens(self._cached)
        return keep

    def _eval_prompt(self, tokens: list[int], keep: int, marks: Iterable[int] = ()) -> None:
        """Evaluate ``tokens[keep:]``.  With checkpoints, batches end at ``marks`` and
        before the last token, and the state is saved there: the points a later prompt
        goes back to (the same prompt again; in a chat, the end of the last message,
        where the next turn's history departs from this turn's generation prompt)."""
        prompt = ffi.new("llama_token[]", tokens)
        stops = [len(tokens)]
        if self._checkpoints is not None:
            stops = sorted({m for m in (*marks, len(tokens) - 1) if keep < m < len(tokens)}) + stops
        start = keep
        for stop in stops:
            for pos in range(start, stop, self.n_batch):
                self._decode(prompt, pos, min(self.n_batch, stop - pos))
            if stop < len(tokens):
                self._checkpoints.take(stop)
            start = stop

    def _eval_media(self, chunks: Chunks) -> int:
        """Evaluate a prompt with media, chunk by chunk (mtmd encodes each medium and
        decodes text and embeddings), from the first chunk the KV cache does not already
        hold; return the tokens the prompt fills.  On hybrid models the state is saved
        after each medium: where a later prompt departs, it goes back to one."""
        pieces = chunks.units()
        units = [u for _, us in pieces for u in us]
        ends = list(itertools.accumulate(len(us) for _, us in pieces))
        keep = self._keep_prefix(units, boundaries=[0, *ends[:-1]])
        n_past = positions(units[:keep])
        new_n_past = ffi.new("llama_pos *")
        for i, ((chunk, us), end) in enumerate(zip(pieces, ends)):
            if end <= keep:
                continue
            with Capture() as cap:
                rc = self._call_interruptibly(lambda: lib.mtmd_helper_eval_chunk_single(
                    self._projector._ctx, self._ctx, chunk, n_past, 0, self.n_batch, i == len(pieces) - 1,
                    new_n_past))
            self._check_rpc(cap)
            if rc != 0:
                self._cached = None
                raise DecodeError(f"evaluating the multimodal prompt failed (error {rc})", cap.reason())
            n_past = new_n_past[0]
            self._cached += us
            if self._checkpoints is not None and isinstance(us[0], MediaUnit) and end < len(units):
                self._checkpoints.take(end)
        return chunks.n_tokens

    def _token_text(self, token: int) -> str:
        return self._piece(token).decode("utf-8", "replace")

    def _call_interruptibly(self, fn):
        """``fn()`` (a C call that may run for seconds), stoppable with Ctrl-C.

        Python sees a signal only in the main thread and only between bytecodes, never
        inside a C call.  So the call runs on this object's worker thread while the
        calling thread waits; on KeyboardInterrupt the abort switch makes llama.cpp stop
        between two graph nodes, and the interrupt is re-raised once the call has
        returned.  Every decode uses that one thread, whoever calls: ggml's OpenMP team
        belongs to the thread that starts it, and two teams spinning on the same cores
        made generation 3x slower when calls came from two threads.
        """
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rotorquant-decode")
        future = self._worker.submit(fn)
        try:
            return future.result()
        except KeyboardInterrupt:
            lib.rq_abort_set(self._abort, True)
            try:
                while True:
                    try:
                        future.result()
                        break
                    except KeyboardInterrupt:  # a second Ctrl-C while stopping
                        continue
            finally:
                lib.rq_abort_set(self._abort, False)
            raise

    def _check_rpc(self, cap: Capture) -> None:
        """After a decode: a server lost meanwhile answered zeros, so this step's logits are
        not the model's (patch 0009 keeps the process alive; this makes it an error)."""
        lost = rpc.take_failure() if self._rpc_servers else None
        if lost is not None:
            self._cached = None
            raise DecodeError(f"RPC server {lost} was lost during a decode (it crashed, was stopped or "
                              "the network failed); close this model and load it again once the server "
                              "is back", cap.reason())

    def _decode(self, arr, start: int, count: int) -> None:
        batch = lib.llama_batch_get_one(arr + start, count)
        with Capture() as cap:
            try:
                rc = self._call_interruptibly(lambda: lib.llama_decode(self._ctx, batch))
            except BaseException:
                self._cached = None  # part of the batch may be in the cache
                raise
        self._check_rpc(cap)
        if rc != 0:
            self._cached = None
            what = {1: "no KV-cache slot for the batch (context full)", 2: "aborted",
                    -1: "invalid batch"}.get(rc, f"error {rc}")
            raise DecodeError(f"llama_decode failed: {what}", cap.reason())

    def _generate(self, generation: int, tokens: list[int] | Chunks, max_tokens: int, stops: tuple[str, ...],
                  chain: SamplerChain, top_logprobs: int | None, special: frozenset,
                  marks: tuple[int, ...]) -> Iterator[Step]:
        try:
            with self._lock:
                if generation != self._generation or self.closed:
                    return
                lib.llama_perf_context_reset(self._ctx)
                if isinstance(tokens, Chunks):
                    n_past = self._eval_media(tokens)
                else:
                    keep = self._keep_prefix(tokens)
                    self._eval_prompt(tokens, keep, marks)
                    self._cached = list(tokens)
                    chain.accept_prompt(tokens)
                    n_past = len(tokens)
            n_ctx = self.n_ctx
            text = _StopScanner(stops)
            utf8 = codecs.getincrementaldecoder("utf-8")("replace")
            step = ffi.new("llama_token[1]")
            finish = "length"
            for _ in range(max_tokens):
                with self._lock:
                    if generation != self._generation or self.closed:
                        return  # a newer generation or close() took over the context
                    token = chain.sample(self._ctx)
                    if lib.llama_vocab_is_eog(self._vocab, token):
                        finish = "stop"
                        break
                    lp = top = None
                    if top_logprobs is not None:
                        lp, top = logprobs(self._ctx, self.n_vocab, token, top_logprobs)
                    piece = self._piece(token, token in special)
                out, done = text.feed(utf8.decode(piece))
                yield Step(out, token, lp, top)
                if done:
                    yield Step("", None, finish="stop")
                    return
                if n_past >= n_ctx:
                    break
                with self._lock:
                    if generation != self._generation or self.closed:
                        return
                    step[0] = token
                    self._decode(step, 0, 1)
                    if self._cached is not None:
                        self._cached.append(token)
                n_past += 1
            out, _ = text.feed(utf8.decode(b"", final=True))
            yield Step(out + text.flush(), None, finish=finish)
        finally:
            chain.close()
            if isinstance(tokens, Chunks):
                tokens.close()


_STATE_MAGIC = b"RQSTATE1"  # file header: a clear error for anything else


def _write_whole(path: str, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it: never a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _unit(v: list[float], normalize: bool) -> list[float]:
    if not normalize:
        return v
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v] if norm > 0 else v


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


def memory_by_device(ctx) -> dict[str, dict[str, int]]:
    """A context's memory per device name (a buffer type of no device is host memory: "CPU")."""
    n = lib.rq_context_memory_by_buft(ctx, ffi.NULL, ffi.NULL, 0)
    devs, mem = ffi.new("ggml_backend_dev_t[]", n), ffi.new("struct rq_memory_parts[]", n)
    lib.rq_context_memory_by_buft(ctx, devs, mem, n)
    totals: dict[str, dict[str, int]] = {}
    for dev, m in zip(devs, mem):
        name = ffi.string(lib.ggml_backend_dev_name(dev)).decode() if dev != ffi.NULL else "CPU"
        t = totals.setdefault(name, {"model": 0, "kv": 0, "recurrent": 0, "compute": 0})
        for key in t:
            t[key] += getattr(m, key)
    return totals
