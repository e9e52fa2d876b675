"""A real results store for the explorer tests: the toy model's collect + pairs (tests/cases_toy.py) and then
``analyse``, so every table the explorer reads holds rows the pipeline wrote (about 20 s on one CPU thread)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cases_toy import build_toy_store

from failtrace.cases.analyse import analyse
from failtrace.store import open_store
from failtrace.testing.toy import one_thread


def analysed_toy_store(folder: Path, n_items: int = 8) -> dict[str, Any]:
    """``folder/runs.duckdb`` with cases; returns build_toy_store's dict plus the analysis summary."""
    with one_thread():
        info = build_toy_store(folder / "runs.duckdb", folder / "model", n_items=n_items)
        with open_store(info["store"]) as st:
            info["summary"] = analyse(st, progress=False)
    return info


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
