"""The bookkeeping of one pair search: the rollouts of a block, a recovery, and the search in progress.

Kept apart from :mod:`failtrace.failures.search` (the algorithm) so that module reads as the search alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    # per position: rollouts cut at the rollout budget that fail there though their text does not fix the verdict
    # (the collection calls such a completion unbounded): said in the reason, since more tokens could decide them
    cut_open: dict[int, int] = field(default_factory=dict)

    def note_cut_open(self, answer: int | None, budget: int) -> None:
        """Say in the reason how many rollouts, where in-order search checks them (before the answer position, if
        any), were cut with the verdict open. Not a status: the checker failed them as cut; said, not hidden."""
        cut = self.res.rollouts_cut_open = sum(c for p, c in self.cut_open.items() if answer is None or p <= answer)
        if cut:
            where = "" if answer is None else " before the recovery"
            many = cut > 1
            self.notes.append(f"; {cut} rollout{'s' if many else ''}{where} {'were' if many else 'was'} cut "
                              f"at the {budget}-token rollout budget with the verdict still open (failing so far; "
                              f"{'their' if many else 'its'} text does not fix it): a larger --rollout-tokens "
                              f"could decide {'them' if many else 'it'}")

    def finish(self, status: str, reason: str, seconds: float) -> PairResult:
        """The result with its status, its reason (plus the notes gathered on the way) and its total time."""
        if status not in PAIR_STATUSES:
            raise ValueError(f"unknown pair status {status!r}")
        self.res.seconds = seconds
        self.res.status, self.res.reason = status, reason + "".join(self.notes)
        return self.res


def fill_pair(res: PairResult, found: Found, row: Any, target: int, n: int, text: Callable[[int], str]) -> None:
    """Write a recovery's pair into ``res``: positions (``n`` prompt tokens), tokens, ranks, and
    Δℓ = ℓ(target) − ℓ(contrast) from ``row``, the next-token logits at the target position."""
    p, contrast = found.row.p, found.row.token
    res.position, res.completion_offset = n + p, p
    res.target_id, res.target_text = target, text(target)
    res.contrast_id, res.contrast_text = contrast, text(contrast)
    res.contrast_source, res.contrast_rank = found.row.source, found.row.rank
    # rank among the model's alternatives: the logits above the contrast's, the target's (when above) not counted
    higher = int((row > row[contrast]).sum()) - int(bool(row[target] > row[contrast]))
    res.contrast_model_rank = higher + 1
    res.target_logit, res.contrast_logit = float(row[target]), float(row[contrast])
    res.delta_logit = res.target_logit - res.contrast_logit
    res.recovered_completion = found.text


def walked_scope(m: int, walk: int, live: int, decided: str | None, max_positions: int, res: PairResult) -> str:
    """Which of the ``m`` stored completion positions a search without a recovery walked, in words for its reason:
    cut where the completion's own prefix decides, capped by ``max_positions``, or all (and then whether a
    continued completion has positions after them that were not searched)."""
    if res.positions_decided:  # no later position can recover either: more --max-positions would not help
        return f"the first {live} of {m} completion positions (from position {live} on, the prefix {decided})"
    if walk < m:
        return f"the first {walk} of {m} completion positions (capped by max-positions {max_positions})"
    longer = int(res.continued_tokens or 0)
    if res.continued == "fail" and longer > m:  # continued to the rollout budget, stopped and still failed
        more = f" and --max-positions {longer}" if longer > max_positions else ""
        return (f"all {m} stored completion positions (the {longer - m} after them, up to the continued "
                f"completion's {longer} tokens, are not searched: a target there is not in the stored answer; "
                f"collect with --max-new-tokens {longer} or more{more} to search them)")
    return f"all {m} completion positions"
