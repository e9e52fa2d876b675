"""Stored case rows of the wrong shape: JSON that parses but is not what failtrace wrote (a list for an object, an
array of another length, an unknown category) is a damaged store, said in one line, as text that is not JSON is."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from failtrace.cases.record import CATEGORIES, PATTERNS, Case
from failtrace.errors import FailtraceError

if TYPE_CHECKING:
    from failtrace.store.store import ResultsStore


@contextlib.contextmanager
def shaped(store: ResultsStore, where: str) -> Iterator[None]:
    """A stored value of the wrong shape (JSON that parses but is not what failtrace wrote: a list for an object, a
    list of other length) is a damaged store, said in one line like text that is not JSON, not a crash."""
    try:
        yield
    except (TypeError, AttributeError, ValueError, KeyError, IndexError) as exc:
        raise FailtraceError(f"results store {store.path} holds a value of the wrong shape in {where} "
                             f"({type(exc).__name__}: {str(exc)[:160]}); it is damaged or was edited by hand; restore "
                             "it from a copy, or analyse again into another --store") from None


def check_shapes(case: Case) -> None:
    """What every view relies on: one value per token in each per-token array, a known category and pattern."""
    n = len(case.token_ids)
    if len(case.special_mask or [False] * n) != n or len(case.tokens or [""] * n) != n:
        raise ValueError(f"{len(case.tokens)} tokens and {len(case.special_mask)} special flags for {n} token ids")
    for name, m in case.methods.items():  # a method with no value per token stores none (show then says so)
        if m.input_relevance and len(m.input_relevance) != n:
            raise ValueError(f"method {name} has {len(m.input_relevance)} relevance values for {n} tokens")
        if (m.flip_tops or m.flip_top_texts) and not m.tops_recorded:
            raise ValueError(f"method {name} has {len(m.flip_tops)} top tokens and {len(m.flip_top_texts)} texts after "
                             f"masking for {len(m.flip_curve)} curve points")
    if case.category is not None and case.category not in CATEGORIES:
        raise ValueError(f"category {case.category!r} is none of {', '.join(CATEGORIES)}")
    if case.pattern is not None and case.pattern not in PATTERNS:
        raise ValueError(f"pattern {case.pattern!r} is none of {', '.join(PATTERNS)}")
