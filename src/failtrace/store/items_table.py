"""The ``items``, ``run_items``, ``generations`` and ``verdicts`` tables of the results store: what a collection run
read and what the model wrote for each item, with the benchmark checker's verdict.

A mixin of :class:`failtrace.store.store.ResultsStore` (it uses the store's ``con``, ``path``, ``_rows`` and
``_transaction``), kept apart as the ``runs`` and ``pairs`` tables are, so the store module stays about connections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from failtrace.benchmarks.base import Item, Verdict
from failtrace.errors import FailtraceError
from failtrace.store.records import GenerationRecord, content_hash, parse_json_columns, storable
from failtrace.store.records import dumps as _dumps
from failtrace.store.records import now as _now


class ItemsTable:
    """Reads and writes of items, generations and verdicts (mixed into ResultsStore); each write commits one unit."""

    con: Any  # these four are ResultsStore's (annotations only: no attribute is created here)
    path: Any
    _rows: Any
    _transaction: Any

    def check_items(self, benchmark: str, items: Sequence[Item]) -> dict[str, str]:
        """Refuse ``items`` whose ids repeat, or that a store holds under the same id with other content (two
        datasets would otherwise mix silently); returns the stored content hashes (id -> hash) of ``benchmark``.
        Called before a run is recorded, so that a refusal leaves the store as it was."""
        seen: set[str] = set()
        for it in items:
            if it.id in seen:
                raise FailtraceError(f"item id {it.id!r} appears more than once in the {benchmark} data; ids must "
                                     f"be unique")
            seen.add(it.id)
        stored = dict(self.con.execute("SELECT item_id, content_hash FROM items WHERE benchmark = ?",
                                       [benchmark]).fetchall())
        clashes = [it.id for it in items if it.id in stored and stored[it.id] != content_hash(it)]
        if clashes:
            raise FailtraceError(
                f"{len(clashes)} {benchmark} item(s) are already in {self.path} with different content (first: "
                f"{clashes[0]!r}); the data changed since they were collected, or this failtrace reads it differently"
                + (" (a trace file's reply steps, since 5 Dec 2026)" if benchmark == "traces" else "")
                + ". Use a new --store for the new data."
            )
        return stored

    def add_items(self, run_id: str, benchmark: str, items: list[Item], checked: dict[str, str] | None = None) -> None:
        """Store ``items`` (once per benchmark and id) and note that run ``run_id`` covers them, in one transaction;
        checked first (:meth:`check_items`), unless ``checked`` is what that check just returned."""
        stored = self.check_items(benchmark, items) if checked is None else checked
        ordinal0 = self.con.execute("SELECT coalesce(max(ordinal) + 1, 0) FROM run_items WHERE run_id = ?",
                                    [run_id]).fetchone()[0]
        covered = {r[0] for r in self.con.execute("SELECT item_id FROM run_items WHERE run_id = ?",
                                                  [run_id]).fetchall()}
        new_items = [it for it in items if it.id not in stored]
        new_links = [it for it in items if it.id not in covered]
        with self._transaction():
            if new_items:
                self.con.executemany(
                    "INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?, ?)",
                    [[benchmark, it.id, _dumps(it.prompt), _dumps(it.reference), _dumps(it.meta), content_hash(it)]
                     for it in new_items],
                )
            if new_links:
                self.con.executemany("INSERT OR IGNORE INTO run_items VALUES (?, ?, ?)",
                                     [[run_id, it.id, ordinal0 + i] for i, it in enumerate(new_links)])

    def get_item(self, benchmark: str, item_id: str) -> Item:
        """The stored item (prompt and reference), as the benchmark's checker reads it."""
        item = read_item(self.con, benchmark, item_id, self.path)
        if item is None:
            raise FailtraceError(f"item {item_id!r} of benchmark {benchmark} is not in {self.path}")
        return item

    def run_item_ids(self, run_id: str) -> list[str]:
        """The items of a run, in the order it took them."""
        return [r[0] for r in self.con.execute("SELECT item_id FROM run_items WHERE run_id = ? ORDER BY ordinal",
                                               [run_id]).fetchall()]

    def done_item_ids(self, run_id: str) -> set[str]:
        """Items of ``run_id`` whose generation and verdict are committed (skipped by a rerun)."""
        return {r[0] for r in self.con.execute("SELECT item_id FROM generations WHERE run_id = ?", [run_id]).fetchall()}

    def write_result(self, run_id: str, item: Item, gen: GenerationRecord, verdict: Verdict,
                     verdict_seconds: float = 0.0) -> bool:
        """Commit one item's generation and verdict together. Returns False if they were already stored."""
        with self._transaction():
            if self.con.execute("SELECT count(*) FROM generations WHERE run_id = ? AND item_id = ?",
                                [run_id, item.id]).fetchone()[0]:
                return False
            self.con.execute(
                "INSERT INTO generations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, item.id, item.benchmark, list(gen.prompt_ids), len(gen.prompt_ids), gen.completion,
                 list(gen.token_ids), gen.n_tokens, gen.finish_reason, gen.seconds, _now()],
            )
            self.con.execute(
                "INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?)",
                [run_id, item.id, verdict.status, _dumps(storable(verdict.reasons)), _dumps(storable(verdict.details)),
                 verdict_seconds],
            )
        return True

    def results(self, run_id: str, status: str | None = None) -> list[dict[str, Any]]:
        """Generation + verdict rows of a run (optionally only one verdict status), in the run's item order."""
        sql = ("SELECT g.*, v.status, v.reasons, v.details, ri.ordinal FROM generations g "
               "JOIN verdicts v USING (run_id, item_id) "
               "LEFT JOIN run_items ri USING (run_id, item_id) WHERE g.run_id = ?")
        params: list[Any] = [run_id]
        if status is not None:
            sql += " AND v.status = ?"
            params.append(status)
        return self._rows(sql + " ORDER BY ri.ordinal NULLS LAST, g.item_id", params)


def read_item(con: Any, benchmark: str, item_id: str, store: Any = None) -> Item | None:
    """The stored item (prompt and reference) read through any connection or cursor (the explorer's per-request
    cursors too), or None; ``store`` names the store in the message of a damaged JSON column."""
    cur = con.execute("SELECT * FROM items WHERE benchmark = ? AND item_id = ?", [benchmark, item_id])
    row = cur.fetchone()
    if row is None:
        return None
    r = parse_json_columns(dict(zip([d[0] for d in cur.description], row)), store)
    return Item(id=r["item_id"], benchmark=benchmark, prompt=r["prompt"], reference=r["reference"] or {},
                meta=r["meta"] or {})
