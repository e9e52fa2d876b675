"""The ``runs`` table of the results store: one row per stage run (collect, pairs, analyse, compare), keyed by an id
that hashes what changes its results; see docs/ARCHITECTURE.md.

A mixin of :class:`failtrace.store.store.ResultsStore` (it uses the store's ``con``, ``path``, ``_rows`` and
``_transaction``), kept apart as the ``pairs`` table is, so the store module stays about connections and generations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from failtrace.errors import FailtraceError
from failtrace.store.records import RunRecord, loads, pick_run_id
from failtrace.store.records import dumps as _dumps
from failtrace.store.records import now as _now


class RunsTable:
    """Reads and writes of the ``runs`` table (mixed into ResultsStore)."""

    con: Any  # these four are ResultsStore's (annotations only: no attribute is created here)
    path: Any
    _rows: Any
    _transaction: Any

    def ensure_run(self, run: RunRecord) -> bool:
        """Record ``run`` unless a run with its id exists. Returns True when it was new."""
        with self._transaction():
            exists = self.con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run.run_id]).fetchone()[0]
            if exists:
                return False
            self.con.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run.run_id, run.stage, run.parent_run_id, run.benchmark, run.model, run.model_source, run.revision,
                 run.dtype, run.device, run.seed, _dumps(run.versions), _dumps(run.settings), run.data, _now()],
            )
        return True

    def append_run_setting(self, run_id: str, key: str, entry: Any) -> None:
        """Append ``entry`` to the list ``settings[key]`` of run ``run_id`` (e.g. the Ray workers of each call).

        What is recorded never changes the run's id nor its results: a rerun of the same run adds its own entry.
        """
        self._update_settings(run_id, lambda settings: {**settings, key: [*settings.get(key, []), entry]})

    def set_run_setting(self, run_id: str, key: str, value: Any) -> None:
        """Set ``settings[key]`` of run ``run_id`` to ``value`` (a record about the run, never part of its id)."""
        self._update_settings(run_id, lambda settings: {**settings, key: value})

    def _update_settings(self, run_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Replace run ``run_id``'s settings by ``change(settings)``, read and written in one transaction."""
        with self._transaction():
            row = self.con.execute("SELECT settings FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if row is None:
                raise FailtraceError(f"no run {run_id!r} in {self.path}")
            settings = loads(row[0], f"runs.settings of run {run_id}", self.path) if row[0] else {}
            self.con.execute("UPDATE runs SET settings = ? WHERE run_id = ?", [_dumps(change(settings)), run_id])

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id, or None."""
        rows = self._rows("SELECT * FROM runs WHERE run_id = ?", [run_id])
        return RunRecord.from_dict(rows[0]) if rows else None

    def runs(self, stage: str | None = None) -> list[RunRecord]:
        """All runs (of one stage), oldest first."""
        if stage is None:
            rows = self._rows("SELECT * FROM runs ORDER BY created_at, run_id")
        else:
            rows = self._rows("SELECT * FROM runs WHERE stage = ? ORDER BY created_at, run_id", [stage])
        return [RunRecord.from_dict(r) for r in rows]

    def select_runs(self, stage: str, run_ids: Sequence[str] | None, benchmark: str | None, noun: str,
                    first: str) -> list[RunRecord]:
        """Runs of ``stage`` (all, those named, or of one benchmark); an id may be a unique prefix of one (as the
        report prints them). An unknown or ambiguous id or an empty choice is an error naming ``noun`` ("collection
        run", "pair run"), the ids there are, and the command to run ``first``."""
        runs = self.runs(stage)
        if run_ids:
            ids = [r.run_id for r in runs]
            chosen = {pick_run_id(ids, run_id, noun, self.path) for run_id in run_ids}
            runs = [r for r in runs if r.run_id in chosen]
        if benchmark is not None:
            runs = [r for r in runs if r.benchmark == benchmark]
            if not runs:
                self.require_benchmark(benchmark)  # no run of it at all: a typo, or collect it first
        if not runs:
            raise FailtraceError(f"no {noun}s{' for ' + benchmark if benchmark else ''} in {self.path}; run "
                                 f"`{first}` first")
        return runs

    def require_benchmark(self, benchmark: str) -> None:
        """Refuse a ``benchmark`` the store has no run of (one line naming those it has): ``report`` and ``show``
        read an unknown name as a typo, not as an empty selection."""
        have = [r[0] for r in self.con.execute("SELECT DISTINCT benchmark FROM runs ORDER BY 1").fetchall()]
        if benchmark not in have:
            raise FailtraceError(f"no runs for benchmark {benchmark!r} in {self.path}; "
                                 + (f"benchmarks there: {', '.join(have)}" if have else "the store has no runs yet"))
