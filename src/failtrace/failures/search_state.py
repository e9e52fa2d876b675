"""The bookkeeping of one pair search: the rollouts of a block, a recovery, and the counters that end in a result.

Kept apart from :mod:`failtrace.failures.search` (the algorithm) so that module reads as the search alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from failtrace.failures.pair_types import PairResult
from failtrace.store.schema import PAIR_STATUSES


@dataclass
class Row:
    """One rollout of a block: completion offset, forced token, its source (model or sibling) and rank there."""

    p: int
    token: int
    source: str
    rank: int


@dataclass
class Found:
    """A recovering rollout: its row and the recovered completion's text."""

    row: Row
    text: str
    cut: bool = False  # the recovering rollout reached the budget without stopping


@dataclass
class SearchState:
    """Mutable counters of one search, copied into its :class:`PairResult` once the status is known."""

    rollouts: int = 0
    checks: int = 0
    unverifiable: int = 0
    tokens: int = 0
    stopped: int = 0
    final: int = 0
    positions: int = 0
    seconds_rollouts: float = 0.0
    seconds_check: float = 0.0
    notes: list[str] = field(default_factory=list)  # appended to the reason
    verdicts: dict[str, str] = field(default_factory=dict)  # verdict key -> status, this failure's checks so far
    reused: int = 0  # checks answered from ``verdicts`` (no checker call)

    def finish(self, res: PairResult, status: str, reason: str, seconds: float) -> PairResult:
        """``res`` with its status, reason (plus the notes gathered on the way) and this search's counters."""
        if status not in PAIR_STATUSES:
            raise ValueError(f"unknown pair status {status!r}")
        res.rollouts, res.checks, res.unverifiable_rollouts = self.rollouts, self.checks, self.unverifiable
        res.seconds_rollouts, res.seconds_check = self.seconds_rollouts, self.seconds_check
        res.tokens_decoded, res.rollouts_stopped, res.rollouts_final = self.tokens, self.stopped, self.final
        res.positions_rolled, res.checks_reused = self.positions, self.reused
        res.seconds = seconds
        res.status, res.reason = status, reason + "".join(self.notes)
        return res
