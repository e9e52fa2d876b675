"""MATH (e.g. MATH-500): the answer is the completion's last ``\\boxed{...}``; equivalence is decided by math-verify.

Named ``mathbench`` so it never shadows the standard library's ``math``.
"""

from __future__ import annotations

import functools

import threading
from typing import Any

from failtrace.benchmarks.base import Item, LoadReport, Verdict
from failtrace.benchmarks.loaders import build_items

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_COMMANDS = ("\\boxed", "\\fbox")


def _balanced(text: str, open_at: int) -> str | None:
    """Content of the brace group opening at ``text[open_at] == '{'``; None if it never closes.

    Hand-written because math-verify's extractor falls back to any other number in the text when there is no
    ``\\boxed``; we need exactly the last boxed answer and to say when there is none.
    """
    depth = 0
    i = open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # an escaped brace (\{ or \}) does not open or close a group
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
        i += 1
    return None


def last_boxed(text: str) -> tuple[str | None, str | None]:
    """The last ``\\boxed{...}`` / ``\\fbox{...}`` content (also ``\\boxed 5``) and, when there is none, why."""
    start = max(text.rfind(cmd) for cmd in _COMMANDS)
    # a later "\boxed" inside an unfinished group still counts as last; walk back past commands that are prefixes of
    # longer names such as \boxedx (not a box)
    while start >= 0:
        cmd = next(c for c in _COMMANDS if text.startswith(c, start))
        after = start + len(cmd)
        if after < len(text) and text[after].isalpha():
            start = max(text.rfind(c, 0, start) for c in _COMMANDS)
            continue
        rest = text[after:]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            content = _balanced(text, after + (len(rest) - len(stripped)))
            if content is None:
                return None, f"the last {cmd}{{ is never closed (was the output cut off?)"
            if not content.strip():
                return None, f"the last {cmd}{{}} is empty"
            return content.strip(), None
        if rest[:1] == " " and stripped:  # "\boxed 5": the argument runs to the next space or '$'
            token = stripped.split()[0].split("$")[0]
            if token:
                return token, None
        return None, f"{cmd} is not followed by an answer"
    return None, "no \\boxed{} answer in the completion"


def _gold_answer(reference: dict[str, Any]) -> str | None:
    if reference.get("answer") is not None and str(reference["answer"]).strip():
        return str(reference["answer"]).strip()
    if reference.get("solution"):
        return last_boxed(str(reference["solution"]))[0]
    return None


def _timeouts() -> int | None:
    """math-verify's timeouts use signal.alarm, which only works in the main thread; elsewhere run without one."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def equivalent(gold: str, predicted: str) -> tuple[bool | None, str]:
    """(equal?, how it was decided); None when math-verify cannot parse the reference answer."""
    from math_verify import parse, verify

    if " ".join(gold.split()) == " ".join(predicted.split()):
        return True, "identical text"
    timeout = _timeouts()
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    if len(gold_parsed) < 2:  # no expression, at most the raw string back ("\frac{"): no answer could equal it
        return None, f"math-verify could not parse the reference answer {gold!r}"
    pred_parsed = parse(f"${predicted}$", parsing_timeout=timeout)
    if not pred_parsed:
        return False, f"math-verify could not parse the boxed answer {predicted!r}"
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout)), "math-verify"


@functools.lru_cache(maxsize=4096)
def unreadable_reference(gold: str) -> str | None:
    """Why math-verify cannot read the reference answer ``gold`` (no answer could be judged equal to it), or None.
    Cached: the pair search checks one item's answers many times."""
    from math_verify import parse

    if len(parse(f"${gold}$", parsing_timeout=_timeouts())) < 2:
        return f"math-verify could not parse the reference answer {gold!r}"
    return None


class MathBenchmark:
    """Items ``{problem, solution, answer, ...}`` (MATH, MATH-500); ``answer`` may be missing when ``solution``
    has a boxed answer."""

    name = "math"
    max_new_tokens = 1024

    def load(self, source: str, limit: int | None = None) -> LoadReport:
        return build_items(source, limit, ("problem",), _to_item, default_split="test")

    def check(self, item: Item, completion: str) -> Verdict:
        gold = _gold_answer(item.reference)
        if gold is None:
            return Verdict("unverifiable", ["the item has no reference answer (no 'answer', no boxed 'solution')"])
        predicted, why = last_boxed(completion)
        details: dict[str, Any] = {"gold": gold, "extracted": predicted}
        if predicted is None:  # no answer to judge; but against a reference nothing could match, not even a
            # boxed one, there is no verdict at all (it was a fail here, unverifiable with a boxed answer)
            try:
                unread = unreadable_reference(gold)
            except Exception as exc:  # the LaTeX parser can raise on odd input
                unread = f"math-verify failed on the reference answer: {type(exc).__name__}: {exc}"
            if unread:
                return Verdict("unverifiable", [f"{unread}; {why or 'no boxed answer'}"], details)
            return Verdict("fail", [why or "no boxed answer"], details)
        try:
            same, how = equivalent(gold, predicted)
        except Exception as exc:  # sympy or the LaTeX parser can raise on odd input: the check did not run
            return Verdict("unverifiable", [f"math-verify failed: {type(exc).__name__}: {exc}"], details)
        details["method"] = how
        if same is None:
            return Verdict("unverifiable", [how], details)
        if same:
            return Verdict("pass", [], details)
        reason = f"boxed answer {predicted!r} is not equivalent to the reference {gold!r}"
        if how != "math-verify":
            reason += f" ({how})"
        return Verdict("fail", [reason], details)

    def verdict_key(self, item: Item, completion: str) -> str:
        """What :meth:`check`'s status depends on: the last boxed answer (or that there is none)."""
        answer, _why = last_boxed(completion)
        return "none" if answer is None else f"boxed:{answer}"

    def prefix_decides_fail(self, item: Item, prefix: str) -> str | None:
        """Never decided early: the checker judges the *last* ``\\boxed{}``, so a closed wrong boxed answer can
        always be replaced by a later one (and a missing one can still come). Only the full rollout decides."""
        return None

def _to_item(record: dict[str, Any], where: str) -> Item:
    if not isinstance(record["problem"], str) or not record["problem"].strip():
        raise ValueError("'problem' must be a string with text in it")
    answer = record.get("answer")
    if isinstance(answer, bool) or not (answer is None or isinstance(answer, (str, int))):
        # str() of a float or a list is not the answer as written (1e-05 for 0.00001): no honest verdict on it
        raise ValueError(f"'answer' must be text (or a whole number), got {type(answer).__name__} "
                         f"{repr(answer)[:100]}; write it as a string, as MATH does")
    if _gold_answer(record) is None:
        raise ValueError("no reference answer: needs 'answer', or a 'solution' with a \\boxed{} answer")
    # the first id given (0 is an id: `or` took it for none), else the row's place in the file
    item_id = next((record[k] for k in ("unique_id", "id") if record.get(k) is not None and str(record[k]).strip()),
                   where.replace(" ", "-"))
    meta: dict[str, Any] = {k: record[k] for k in ("subject", "level", "unique_id", "type") if k in record}
    reference = {"answer": record.get("answer"), "solution": record.get("solution")}
    return Item(id=str(item_id), benchmark="math", prompt=f"{record['problem']}\n\n{INSTRUCTION}",
                reference=reference, meta=meta)
