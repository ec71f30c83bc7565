"""``results.json``: every finished measurement, saved as soon as it finishes.

A cell is one measurement (one pair at one depth, length...) under a key that spells out
everything it depends on, so a rerun finds the cells it can keep.  The file also records
which model they were measured on (path, size, modification time): another model file
under the same name starts afresh.  Writes go to a temporary file renamed over the old
one, so an interrupted run leaves the last complete file, never half of one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._files import write_atomic

FORMAT = 1


def model_fingerprint(model: Path) -> dict[str, Any]:
    st = model.stat()
    return {"path": str(model.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


class ResultStore:
    """Cells of one model's run in ``folder/results.json``."""

    def __init__(self, folder: Path, model: Path):
        self.path = folder / "results.json"
        self.model = model_fingerprint(model)
        self.cells: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, Any] = {}  # the report's rows and when: kept by every save
        self.discarded = 0  # cells of another model found in an existing file
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{self.path} is not a results file of rq-bench ({exc}); "
                                 "move it away or choose another --out") from None
            if not isinstance(old, dict) or old.get("format") != FORMAT or not isinstance(old.get("cells"), dict):
                raise ValueError(f"{self.path} is not a results file of rq-bench (format {FORMAT}); "
                                 "move it away or choose another --out")
            if old.get("model") == self.model:
                self.cells = old["cells"]
                self.summary = {k: v for k, v in old.items() if k not in ("format", "model", "cells")}
            else:
                self.discarded = len(old["cells"])

    def get(self, key: str) -> dict[str, Any] | None:
        return self.cells.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.cells[key] = value
        self.save()

    def save(self, summary: dict[str, Any] | None = None) -> None:
        """Write the file; ``summary`` (the report's rows) replaces the one kept so far."""
        if summary is not None:
            self.summary = summary
        doc = {"format": FORMAT, "model": self.model, **self.summary, "cells": self.cells}
        write_atomic(self.path, json.dumps(doc, indent=1, sort_keys=False) + "\n")
