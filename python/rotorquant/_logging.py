"""llama.cpp / ggml log lines -> Python ``logging`` (logger ``rotorquant.llama``).

llama.cpp writes a message in pieces (``GGML_LOG_LEVEL_CONT`` continues the
previous one) and ends it with a newline; pieces are joined here so each log
record is one line.  The most recent lines are also kept in memory so that an
exception can quote what llama.cpp said while the failing call ran
(``Capture``).
"""
from __future__ import annotations

import atexit
import collections
import itertools
import logging
import threading

from ._ffi import ffi, lib

logger = logging.getLogger("rotorquant.llama")

_LEVELS = {
    lib.GGML_LOG_LEVEL_DEBUG: logging.DEBUG,
    lib.GGML_LOG_LEVEL_INFO: logging.INFO,
    lib.GGML_LOG_LEVEL_WARN: logging.WARNING,
    lib.GGML_LOG_LEVEL_ERROR: logging.ERROR,
    lib.GGML_LOG_LEVEL_NONE: logging.INFO,
}

_lock = threading.Lock()
_counter = itertools.count()
_recent: collections.deque = collections.deque(maxlen=256)  # (serial, level, line)
_partial: list[str] = []
_partial_level = logging.INFO


def _emit(level: int, line: str) -> None:
    _recent.append((next(_counter), level, line))
    if logger.isEnabledFor(level):
        logger.log(level, "%s", line)


@ffi.def_extern()
def _rq_python_log(level, text, user_data):  # noqa: ARG001 - C signature
    """Called by C for every log piece; must never raise into C."""
    global _partial_level
    try:
        piece = ffi.string(text).decode("utf-8", "replace")
        with _lock:
            if level != lib.GGML_LOG_LEVEL_CONT:
                if _partial:  # a message that never got its newline
                    _emit(_partial_level, "".join(_partial).rstrip())
                    _partial.clear()
                _partial_level = _LEVELS.get(level, logging.INFO)
            _partial.append(piece)
            joined = "".join(_partial)
            if "\n" in joined:
                *lines, rest = joined.split("\n")
                for line in lines:
                    if line.strip():
                        _emit(_partial_level, line.rstrip())
                _partial[:] = [rest] if rest else []
    except Exception:  # pragma: no cover - logging must not break inference
        pass


def install() -> None:
    lib.llama_log_set(lib._rq_python_log, ffi.NULL)
    # Destructors that run during interpreter teardown may still log.
    atexit.register(lib.rq_log_silence)


class Capture:
    """Collects the warning and error lines logged inside a ``with`` block.

    >>> with Capture() as cap:
    ...     ptr = lib.llama_model_load_from_file(...)
    >>> cap.reason()   # "error loading model: ..." or ""
    """

    def __enter__(self) -> Capture:
        with _lock:
            self._start = next(_counter)
        return self

    def __exit__(self, *exc) -> None:
        with _lock:
            if _partial:
                _emit(_partial_level, "".join(_partial).rstrip())
                _partial.clear()
            self._end = next(_counter)

    def lines(self, min_level: int = logging.WARNING) -> list[str]:
        end = getattr(self, "_end", None)
        with _lock:
            return [line for serial, level, line in _recent
                    if serial > self._start and (end is None or serial < end) and level >= min_level]

    def reason(self) -> str:
        """Error lines if any were logged, else warnings; joined with '; '."""
        lines = self.lines(logging.ERROR) or self.lines(logging.WARNING)
        return "; ".join(dict.fromkeys(lines))
