"""The ``pairs`` table of the results store: one committed row per (pair run, failure); see docs/PAIRS.md.

A mixin of :class:`failtrace.store.store.ResultsStore` (it uses the store's ``con``, ``_rows`` and ``_transaction``),
kept apart so the store module stays about connections, runs and generations.
"""

from __future__ import annotations

from typing import Any

from failtrace.store.records import now as _now
from failtrace.store.records import storable
from failtrace.store.schema import PAIR_COLUMNS_V3, PAIR_STATUSES


class PairsTable:
    """Reads and writes of the ``pairs`` table (mixed into ResultsStore)."""

    con: Any  # these three are ResultsStore's (annotations only: no attribute is created here)
    _rows: Any
    _transaction: Any

    def done_pair_ids(self, pair_run_id: str) -> set[str]:
        """Failures this pair run already has a pair record for (skipped on resume)."""
        return {r[0] for r in self.con.execute("SELECT item_id FROM pairs WHERE pair_run_id = ?",
                                               [pair_run_id]).fetchall()}

    def write_pair(self, pair_run_id: str, run_id: str, item_id: str, benchmark: str, pair: dict[str, Any]) -> bool:
        """Commit one failure's pair record. Returns False if this pair run already has it."""
        cols = ["status", "reason", "position", "completion_offset", "target_id", "target_text", "contrast_id",
                "contrast_text", "contrast_source", "contrast_rank", "contrast_model_rank", "target_logit",
                "contrast_logit", "delta_logit", "recovered_completion", "rollouts", "checks", "positions_walked",
                "unverifiable_rollouts", "hit_length_limit", "prompt_tokens", "completion_tokens", "seconds",
                "seconds_prefix", "seconds_rollouts", "seconds_check", *(c for c, _ in PAIR_COLUMNS_V3)]
        if pair.get("status") not in PAIR_STATUSES:
            raise ValueError(f"pair status must be one of {PAIR_STATUSES}, got {pair.get('status')!r}")
        with self._transaction():
            if self.con.execute("SELECT count(*) FROM pairs WHERE pair_run_id = ? AND item_id = ?",
                                [pair_run_id, item_id]).fetchone()[0]:
                return False
            names = ["pair_run_id", "run_id", "item_id", "benchmark", *cols, "created_at"]
            pair = {**pair, "reason": storable(pair.get("reason"))}  # it may quote a candidate's text via a checker
            values = [pair_run_id, run_id, item_id, benchmark] + [pair.get(c) for c in cols] + [_now()]
            self.con.execute(f"INSERT INTO pairs ({', '.join(names)}) VALUES ({', '.join('?' * len(values))})",
                             values)
        return True

    def pairs(self, pair_run_id: str | None = None) -> list[dict[str, Any]]:
        """Pair rows (of one pair run), by pair run and item id."""
        if pair_run_id is None:
            return self._rows("SELECT * FROM pairs ORDER BY pair_run_id, item_id")
        return self._rows("SELECT * FROM pairs WHERE pair_run_id = ? ORDER BY item_id", [pair_run_id])
