"""The contract every benchmark implements: load items, build the prompt, check a completion.

A benchmark's ``check`` uses that benchmark's real checker (IFEval's instruction checks, math-verify, HumanEval tests
in a sandbox, the expected agent action). A check that cannot run returns ``unverifiable`` with the reason: it never
counts as a pass or a fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

VerdictStatus = Literal["pass", "fail", "unverifiable"]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def without_thinking(text: str) -> str:
    """The answer a checker reads: for a completion that opens a thinking block (``--thinking``: it starts with
    ``<think>``), the text after the first ``</think>``, or nothing while the block is open, as IFEval's own package
    reads such an answer (if_verifiable's ``strip_thinking``); any other text unchanged. Every check goes through
    it, so a comma, a code draft or a tool call inside the thinking is never judged as the answer.

    Only a block the completion opens: a template that opens it in the prompt (DeepSeek-R1 distills; failtrace
    refuses ``--thinking`` there) leaves the completion no mark of where its thinking starts, and the pair search's
    prefix rules (:func:`in_thinking`) could not tell; such a text is judged whole, as before, and so is an answer
    that merely mentions ``</think>``."""
    if not text.lstrip().startswith(THINK_OPEN):
        return text
    return text.split(THINK_CLOSE, 1)[1].lstrip() if THINK_CLOSE in text else ""


def in_thinking(prefix: str) -> bool:
    """Whether a completion's prefix may still be inside a thinking block (opened and not closed, or a start of
    ``<think>`` itself): the answer has not begun, so no prefix rule may decide on it."""
    head = prefix.lstrip()
    if head.startswith(THINK_OPEN):
        return THINK_CLOSE not in head
    return bool(head) and THINK_OPEN.startswith(head)


@dataclass
class Item:
    """One benchmark item. ``prompt`` is what the model sees: plain text or chat messages (``{role, content}``)."""

    id: str
    benchmark: str
    prompt: str | list[dict[str, str]]
    reference: dict[str, Any] = field(default_factory=dict)  # whatever the checker needs (kwargs, answer, tests...)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "benchmark": self.benchmark, "prompt": self.prompt, "reference": self.reference,
                "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        return cls(id=str(d["id"]), benchmark=d["benchmark"], prompt=d["prompt"],
                   reference=dict(d.get("reference", {})), meta=dict(d.get("meta", {})))


@dataclass
class Verdict:
    """The checker's answer for one completion, with human-readable reasons (e.g. which instruction failed)."""

    status: VerdictStatus
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reasons": self.reasons, "details": self.details}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(status=d["status"], reasons=list(d.get("reasons", [])), details=dict(d.get("details", {})))


@dataclass
class LoadReport:
    """Items that loaded and the problems met on the way (bad lines are reported with line numbers and skipped)."""

    items: list[Item]
    problems: list[str] = field(default_factory=list)


class Benchmark(Protocol):
    """What collection and pair-finding need from a benchmark."""

    name: str
    max_new_tokens: int  # default generation budget for this benchmark

    def load(self, source: str, limit: int | None = None) -> LoadReport:
        """Items from a local JSON/JSONL/Parquet file, or a hub dataset id where the hub is reachable."""
        ...

    def check(self, item: Item, completion: str) -> Verdict:
        """Judge the model's completion for ``item`` with the benchmark's real checker."""
        ...

    # Optional hooks (looked up with getattr, so a benchmark without them is still a Benchmark):
    # prefix_decides_fail / prefix_final (failures/prefix_rules.py: early stopping of rollouts) and
    # verdict_key(item, completion) -> str: the part of the completion the verdict's *status* depends on (equal keys,
    # equal status), so the pair search checks each distinct key once per failure (failures/search.py);
    # checker_options() -> dict: the constructor options that change verdicts (IFEval's loose mode). A collection
    # run records them and the pair search rebuilds the same checker from them (see checker_options below).
    # checked_span(item, completion) -> (start, end) | None: the characters the checker reads when it reads only
    # part of the completion (HumanEval: the code block), else None (see checked_span below).


def caveats(benchmark: Any, items: Sequence[Item]) -> list[str]:
    """What a reader of ``benchmark``'s verdicts on exactly these ``items`` should know (warnings about the chosen
    items, not the whole file: ``--item`` and ``--limit`` pick first); a benchmark may say nothing."""
    hook = getattr(benchmark, "caveats", None)
    return list(hook(items)) if callable(hook) else []


def checked_span(benchmark: Any, item: Item, completion: str) -> tuple[int, int] | None:
    """The characters ``[start, end)`` of ``completion`` that ``benchmark``'s checker reads, where it reads only a part
    (a code block in a chat answer); None when it reads the whole text or the benchmark does not say."""
    hook = getattr(benchmark, "checked_span", None)
    span = hook(item, completion) if callable(hook) else None
    return None if span is None else (int(span[0]), int(span[1]))


def checker_options(benchmark: Any) -> dict[str, Any]:
    """The options ``benchmark`` was built with that change its verdicts (empty for the defaults), so the run that
    stores its verdicts records them and every later re-check (``failtrace pairs``) uses the same checker."""
    hook = getattr(benchmark, "checker_options", None)
    return dict(hook()) if callable(hook) else {}


