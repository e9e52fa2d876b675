"""The bookkeeping of one pair search: the rollouts of a block, a recovery, and the search in progress.

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
    """One search in progress: its result, whose counters (rollouts, checks, tokens, seconds) it adds to as it goes,
    the notes that end up in the reason, and the verdicts already known."""

    res: PairResult
    notes: list[str] = field(default_factory=list)  # appended to the reason
    verdicts: dict[str, str] = field(default_factory=dict)  # verdict key -> status, this failure's checks so far

    def finish(self, status: str, reason: str, seconds: float) -> PairResult:
        """The result with its status, its reason (plus the notes gathered on the way) and its total time."""
        if status not in PAIR_STATUSES:
            raise ValueError(f"unknown pair status {status!r}")
        self.res.seconds = seconds
        self.res.status, self.res.reason = status, reason + "".join(self.notes)
        return self.res
