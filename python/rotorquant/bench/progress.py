"""A one-line progress bar on a terminal; one line per step elsewhere (logs, CI)."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, width: int = 24):
        self.total, self.done, self.width = total, 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self._step_t0 = self.t0

    def start(self, label: str) -> None:
        """Show the step now running."""
        self._step_t0 = time.monotonic()
        if self.tty:
            filled = self.width * self.done // max(1, self.total)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r\x1b[K[{bar}] {self.done}/{self.total} {label}")
            self.stream.flush()

    def finish(self, label: str, status: str) -> None:
        """Count the step; ``status`` is e.g. "done", "kept" (from an earlier run), "failed"."""
        self.done += 1
        took = time.monotonic() - self._step_t0
        line = f"[{self.done}/{self.total}] {label}: {status}" + (f" ({took:.0f} s)" if status != "kept" else "")
        self.stream.write(("\r\x1b[K" if self.tty else "") + line + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A line that is not a step (a warning, what was found on disk)."""
        self.stream.write(("\r\x1b[K" if self.tty else "") + message + "\n")
        self.stream.flush()
