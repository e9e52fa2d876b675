"""Early stopping of rollouts: ask the benchmark whether a completion prefix already decides the verdict (and, for
reusing verdicts, what a verdict depends on).

A benchmark may define two hooks, each optional:

* ``prefix_decides_fail(item, prefix) -> str | None``: a reason when *no* continuation of the text ``prefix`` can
  pass under its checker's own rules (e.g. IFEval strict "no commas" once a comma appears), else None. Sound means:
  if it names a reason, the checker says ``fail`` for every completion that starts with ``prefix``. Such a rollout
  ends without a checker call.
* ``prefix_final(item, prefix) -> bool``: True when the checker reads nothing after ``prefix`` (e.g. HumanEval once
  the fenced block it will run is closed). Sound means: the checker's verdict is the same for ``prefix`` and for
  every completion that starts with it. Such a rollout ends and is checked right away (it may pass).

The text handed to the hook is the decoded token prefix with any trailing U+FFFD removed: a byte-level tokenizer's
prefix may end inside a multi-byte character, which decodes to replacement characters until the character is
complete; without them the decoded prefix is a prefix of the final completion text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from failtrace.benchmarks.base import Benchmark, Item, in_thinking, without_thinking


def prefix_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decoded text of a token prefix that is a prefix of any longer completion's text (see the module docstring)."""
    text = str(tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))
    return text.rstrip("\ufffd")


FAIL = "fail"
FINAL = "final"


class PrefixJudge:
    """The benchmark's prefix rules for one item, or nothing when the benchmark has none."""

    def __init__(self, benchmark: Benchmark, item: Item, tokenizer: Any, enabled: bool = True) -> None:
        self.hook = getattr(benchmark, "prefix_decides_fail", None) if enabled else None
        self.final_hook = getattr(benchmark, "prefix_final", None) if enabled else None
        self.item = item
        self.tokenizer = tokenizer
        self.calls = 0

    @property
    def active(self) -> bool:
        """True when the benchmark gave a rule that can decide a verdict before a rollout ends."""
        return self.hook is not None or self.final_hook is not None

    def final(self, ids: Sequence[int]) -> bool:
        """True when the checker reads nothing after the text of ``ids`` (False also when the rule itself errs)."""
        if self.final_hook is None or not ids:
            return False
        text = prefix_text(self.tokenizer, ids)
        if in_thinking(text):  # the answer has not begun
            return False
        self.calls += 1
        try:
            return bool(self.final_hook(self.item, without_thinking(text)))
        except Exception:  # a rule that cannot decide must never end a rollout
            return False

    def kind(self, ids: Sequence[int]) -> str | None:
        """:data:`FAIL` (every continuation fails), :data:`FINAL` (the verdict is fixed: check now), or None."""
        if self.decided(ids) is not None:
            return FAIL
        return FINAL if self.final(ids) else None

    def decided(self, ids: Sequence[int]) -> str | None:
        """Why every completion starting with ``ids`` fails, or None (also when the rule itself errs)."""
        if self.hook is None or not ids:
            return None
        text = prefix_text(self.tokenizer, ids)
        if in_thinking(text):  # the answer has not begun
            return None
        self.calls += 1
        try:
            reason = self.hook(self.item, without_thinking(text))
        except Exception:  # a rule that cannot decide must never end a rollout
            return None
        return str(reason) if reason else None


def fixed_by_text(benchmark: Benchmark, item: Item, tokenizer: Any, ids: Sequence[int]) -> str | None:
    """Why no continuation of the completion ``ids`` can change its verdict (the benchmark's own rules above), or
    None. A completion cut at the token budget or the window is then a decided failure, not an unbounded one."""
    judge = PrefixJudge(benchmark, item, tokenizer)
    reason = judge.decided(ids)
    if reason is not None:
        return f"its text already fails whatever follows ({reason})"
    return "the checker reads nothing after its text" if judge.final(ids) else None


def verdict_key(benchmark: Benchmark, item: Item, text: str) -> str | None:
    """What the checker's status depends on (the benchmark's ``verdict_key`` hook, else the whole text); None when
    the hook errs (then nothing is reused)."""
    hook = getattr(benchmark, "verdict_key", None)
    text = without_thinking(text)  # what the checker reads (safe_check)
    if hook is None:
        return "text:" + text
    try:
        return "key:" + str(hook(item, text))
    except Exception:  # a key that cannot be computed must never stand in for a check
        return None
