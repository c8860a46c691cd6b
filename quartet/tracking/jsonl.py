"""Append-only jsonl metrics: one line per logged step, easy to plot or diff in tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["JsonlWriter"]


class JsonlWriter:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
