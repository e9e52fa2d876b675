"""Shared by the refusal tests (audit, sweep, stage probe): a store copy to refuse against, and the one-line check."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from serve_store import analysed_toy_store, sha256


def refusal_store(folder: Path, n_items: int = 6) -> dict[str, Any]:
    """collect + pairs + analyse on the toy model (cases of benchmark 'toy'), with the store's sha256 as ``sha``."""
    info = analysed_toy_store(folder, n_items=n_items)
    info["sha"] = sha256(info["store"])
    return info


def copy_store(toy: dict[str, Any], folder: Path, name: str = "copy.duckdb") -> Path:
    """A copy of the toy store to refuse against (the original's bytes stay the reference)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    shutil.copyfile(toy["store"], path)
    return path


def one_error_line(code: int, capsys: pytest.CaptureFixture[str], expected_code: int = 2) -> str:
    """The error contract: the exit code, stderr exactly one ``error: ...`` line, no traceback anywhere."""
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == expected_code, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    return lines[0]
