"""One progress display for every long stage (collect, pairs, analyse, compare, graph edges, the Ray stages, a
model's assembly from its chunk packages).

rich draws the bar on a terminal; off a terminal (a log file, ``nohup``) rich would print it only once, at the end,
and tqdm writes carriage-return frames into the log, so there a plain line per step is written instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


class Bar:
    """A rich progress bar on stderr, or nothing when progress is off.

    When stderr is not a terminal, a plain line per step (``description: done/total, seconds (note)``) is written
    instead, so a long job's log shows how far it is. ``transient``: the bar is removed when done (a sub-step's bar,
    such as a graph's layers, that should not stay above the result); off a terminal such a bar writes a line at most
    every :data:`SUB_STEP_EVERY_S` seconds and its last step (a 30-layer graph built in a second is one line, not 30).
    """

    SUB_STEP_EVERY_S = 5.0

    def __init__(self, enabled: bool, description: str, total: int, transient: bool = False,
                 data: bool = False) -> None:
        self._progress = None
        self._lines, self._data = False, data
        self._description, self._total, self._done, self._t0 = description, total, 0, time.perf_counter()
        self._every, self._last_line = (self.SUB_STEP_EVERY_S if transient or data else 0.0), self._t0
        self._last_status = self._t0
        if enabled and total > 0:
            from rich.console import Console

            console = Console(stderr=True)
            if not console.is_terminal:
                self._lines = True
                return
            from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)

            counts = (DownloadColumn(), TransferSpeedColumn()) if data else (MofNCompleteColumn(),)
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), *counts, TimeElapsedColumn(),
                                      TimeRemainingColumn(), console=console, transient=transient)
            self._progress.start()
            self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1, note: str = "") -> None:
        """``note`` (e.g. the item and its outcome) is shown on the log line only."""
        if self._progress is not None:  # a step's own status (:meth:`status`) ends with it
            self._progress.update(self._task, advance=n, description=self._description)
        elif self._lines:
            self._done += n
            now = time.perf_counter()
            if self._done < self._total and now - self._last_line < self._every:
                return
            self._last_line = now
            tail = f" ({note})" if note else ""
            done = f"{self._done / 1e6:,.0f}/{self._total / 1e6:,.0f} MB" if self._data else \
                f"{self._done}/{self._total}"
            print(f"{self._description}: {done}, {now - self._t0:.0f} s{tail}", file=sys.stderr, flush=True)

    STATUS_EVERY_S = 10.0  # off a terminal, a step's own progress (:meth:`status`) is written at most this often

    def status(self, text: str) -> None:
        """What the step under way has done so far (one failure's rollouts, which can take minutes): beside the
        description on a terminal; off one, a line at most every :data:`STATUS_EVERY_S` seconds."""
        if self._progress is not None:
            self._progress.update(self._task, description=f"{self._description} · {text}")
        elif self._lines:
            now = time.perf_counter()
            if now - self._last_status >= self.STATUS_EVERY_S:
                self._last_status = now
                print(f"{self._description}: {self._done}/{self._total}, {now - self._t0:.0f} s ({text})",
                      file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._lines = False


def progress_bar(enabled: bool, description: str, total: int, transient: bool = False, data: bool = False) -> Bar:
    """A :class:`Bar` (nothing at all when ``enabled`` is false or ``total`` is 0). ``data``: ``total`` counts bytes
    (sizes and speed on a terminal, megabytes at most every few seconds in a log)."""
    return Bar(enabled, description, total, transient, data)


def tracked(items: Sequence[T], description: str, enabled: bool) -> Iterator[T]:
    """``items`` one by one, the bar advancing after each (and closed however the loop ends)."""
    bar = progress_bar(enabled, description, len(items))
    try:
        for item in items:
            yield item
            bar.advance()
    finally:
        bar.close()
