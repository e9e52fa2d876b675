"""What the store commands share for output: a rich console sized to the terminal, one-line store errors, numbers."""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from failtrace.errors import FailtraceError, one_line
from failtrace.views.common import count_of  # noqa: F401  (re-exported: the CLI modules import it here)


def console(stderr: bool = False, width: int | None = None) -> Any:
    """A rich console as wide as the terminal (at least 100 columns; 200 when not a terminal), never soft-wrapped.
    Markup is off: table cells and titles hold item ids, paths and model names from the user's data, where
    ``[/]`` or ``[i]`` must print as written (a caller that wants markup passes ``markup=True`` to ``print``)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if width is None:
        width = max(shutil.get_terminal_size((200, 24)).columns if stream.isatty() else 200, 100)
    return Console(file=stream, width=width, soft_wrap=False, markup=False)


@contextlib.contextmanager
def store_errors(store: Path) -> Iterator[None]:
    """A DuckDB error while using an open store (a damaged page, a full disk) as one line naming the store."""
    try:
        yield
    except Exception as exc:
        import duckdb

        if not isinstance(exc, duckdb.Error):
            raise
        first = one_line(str(exc).split("\n")[0])[:300]
        raise FailtraceError(f"results store {store} could not be used ({type(exc).__name__}: {first}); it may be "
                             f"damaged, on a full disk, or not a failtrace store. Use another --store, or restore "
                             f"it from a copy") from None


def fmt(x: float | None, digits: int = 1) -> str:
    """``x`` with ``digits`` decimals, ``-`` for None."""
    return "-" if x is None else f"{x:.{digits}f}"
