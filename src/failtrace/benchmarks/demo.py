"""The built-in demo benchmark: a few items the project wrote itself, judged by the real checkers.

Three kinds of item, each checked by the checker of the benchmark it imitates (nothing is re-implemented here):

* ``ifeval``: an instruction-following prompt in IFEval's format (``instruction_id_list`` + ``kwargs``), judged
  strictly by the official IFEval instruction classes through :class:`~failtrace.benchmarks.ifeval.IFEvalBenchmark`;
* ``math``: an arithmetic question whose answer must be the last ``\\boxed{}``, judged by math-verify through
  :class:`~failtrace.benchmarks.mathbench.MathBenchmark`;
* ``python``: a one-line Python function in HumanEval's format (signature + docstring, our own ``check(candidate)``
  tests), run in the sandbox through :class:`~failtrace.benchmarks.humaneval.HumanEvalBenchmark`.

The items are short (short prompts, answers of a few tokens) so that ``failtrace demo`` stays cheap on a CPU. They
were picked from ~35 candidates by running the bundled SmolLM2-135M-Instruct greedily: it fails 9 of the 10,
and 5 of those failures give clean pairs with these settings (measured outcome in docs/DEMO.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from failtrace.benchmarks.base import Item, LoadReport, Verdict
from failtrace.errors import FailtraceError

NAME = "demo"
KINDS = ("ifeval", "math", "python")
MATH_SUFFIX = "Put only the final number in \\boxed{}."
PYTHON_TEMPLATE = "Complete this Python function. Reply with only the code.\n\n```python\n{code}```"


@dataclass(frozen=True)
class DemoSettings:
    """What ``failtrace demo`` runs with (one generation budget for all kinds: the collection stage has one per run).

    ``max_new_tokens`` bounds every generation and rollout; ``top_k``/``min_delta``/``max_positions`` are the pair
    search's knobs (:class:`failtrace.failures.pairs.PairSettings`).
    """

    max_new_tokens: int = 40
    top_k: int = 10
    min_delta: float = 1.0
    max_positions: int = 12

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEMO_SETTINGS = DemoSettings()


def _ifeval(key: str, prompt: str, ids: list[str], kwargs: list[dict[str, Any]] | None = None) -> Item:
    kwargs = kwargs if kwargs is not None else [{} for _ in ids]
    return Item(id=f"if-{key}", benchmark=NAME, prompt=prompt,
                reference={"kind": "ifeval", "instruction_id_list": ids, "kwargs": kwargs}, meta={"kind": "ifeval"})


MATH_SHOT = [{"role": "user", "content": f"What is 2 + 3? {MATH_SUFFIX}"},
             {"role": "assistant", "content": "\\boxed{5}"}]
PYTHON_SHOT_CODE = 'def inc(x):\n    """Return x plus one."""\n'
PYTHON_SHOT = [{"role": "user", "content": PYTHON_TEMPLATE.format(code=PYTHON_SHOT_CODE)},
               {"role": "assistant", "content": "```python\ndef inc(x):\n    return x + 1\n```"}]


def _math(key: str, question: str, answer: str) -> Item:
    prompt = [*MATH_SHOT, {"role": "user", "content": f"{question} {MATH_SUFFIX}"}]
    return Item(id=f"math-{key}", benchmark=NAME, prompt=prompt, reference={"kind": "math", "answer": answer},
                meta={"kind": "math"})


def _python(key: str, code: str, entry_point: str, asserts: list[str]) -> Item:
    test = "def check(candidate):\n" + "".join(f"    assert {a}\n" for a in asserts)
    prompt = [*PYTHON_SHOT, {"role": "user", "content": PYTHON_TEMPLATE.format(code=code)}]
    return Item(id=f"py-{key}", benchmark=NAME, prompt=prompt,
                reference={"kind": "python", "prompt": code, "entry_point": entry_point, "test": test},
                meta={"kind": "python", "entry_point": entry_point})


def _items() -> list[Item]:
    lc = "change_case:english_lowercase"
    return [
        _ifeval("capital-lower", "What is the capital of France? Answer in one short sentence, all in lowercase "
                                 "letters.", [lc]),
        _ifeval("colors-comma", "List three primary colors. Do not use any commas.", ["punctuation:no_comma"]),
        _ifeval("water-quote", 'Say what water is made of, in one sentence wrapped in double quotes ("like this").',
                ["startend:quotation"]),
        _ifeval("star-options", "Is the sun a star? Answer with one of the following options: ('My answer is yes.', "
                                "'My answer is no.', 'My answer is maybe.')",
                ["detectable_format:constrained_response"]),
        _ifeval("cat-forbidden", "Describe a cat in one sentence without using the word 'cat'.",
                ["keywords:forbidden_words"], [{"forbidden_words": ["cat"]}]),
        _math("small-add", "What is 9 + 8?", "17"),
        _math("small-mul", "What is 7 * 8?", "56"),
        _python("count-a", 'def count_a(s):\n    """Return how many times the letter "a" occurs in s."""\n',
                "count_a", ["candidate('banana') == 3", "candidate('xyz') == 0"]),
        _python("first-word", 'def first_word(s):\n    """Return the first word of the sentence s."""\n',
                "first_word", ["candidate('hello big world') == 'hello'", "candidate('one') == 'one'"]),
        _python("evens", 'def evens(xs):\n    """Return the even numbers of xs, in order."""\n', "evens",
                ["candidate([1, 2, 3, 4]) == [2, 4]", "candidate([5]) == []"]),
    ]


def demo_items() -> list[Item]:
    """The demo's built-in items (fresh objects on every call)."""
    return _items()


class DemoBenchmark:
    """The built-in demo items; ``check`` hands each item to the real checker of its kind."""

    name = NAME
    max_new_tokens = DEMO_SETTINGS.max_new_tokens

    def __init__(self) -> None:
        from failtrace.benchmarks.humaneval import HumanEvalBenchmark
        from failtrace.benchmarks.ifeval import IFEvalBenchmark
        from failtrace.benchmarks.mathbench import MathBenchmark

        self._checkers: dict[str, Any] = {"ifeval": IFEvalBenchmark(mode="strict"), "math": MathBenchmark(),
                                          "python": HumanEvalBenchmark()}

    def load(self, source: str = "builtin", limit: int | None = None) -> LoadReport:
        """The built-in items. The demo has no data file: ``source`` must say so (``builtin``, or ``builtin:demo``
        as ``failtrace demo`` records it), so a path given by mistake is an error, not stored as the run's data."""
        if source.strip().lower().partition(":")[0] != "builtin":
            raise FailtraceError(f"the demo benchmark has no data file (got --data {source!r}): use --data builtin")
        items = demo_items()
        return LoadReport(items[:limit] if limit is not None else items)

    def prefix_decides_fail(self, item: Item, prefix: str) -> str | None:
        """The prefix rule of the item's own checker (sound for the demo because ``check`` delegates to it)."""
        hook = getattr(self._checkers.get(str(item.reference.get("kind"))), "prefix_decides_fail", None)
        return hook(item, prefix) if hook is not None else None

    def prefix_final(self, item: Item, prefix: str) -> bool:
        """The final-prefix rule of the item's own checker (HumanEval: the checked code block is closed)."""
        hook = getattr(self._checkers.get(str(item.reference.get("kind"))), "prefix_final", None)
        return bool(hook(item, prefix)) if hook is not None else False

    def verdict_key(self, item: Item, completion: str) -> str:
        """The verdict key of the item's own checker (the whole text where it has none)."""
        hook = getattr(self._checkers.get(str(item.reference.get("kind"))), "verdict_key", None)
        return str(hook(item, completion)) if hook is not None else completion

    def caveats(self, items: Sequence[Item]) -> list[str]:
        """The python items' checker's caveats (the sandbox), when the chosen items hold any."""
        python = [i for i in items if i.reference.get("kind") == "python"]
        return self._checkers["python"].caveats(python) if python else []

    def checked_span(self, item: Item, completion: str) -> tuple[int, int] | None:
        """The checked part of the item's own checker (HumanEval: the code block); None for the others."""
        hook = getattr(self._checkers.get(str(item.reference.get("kind"))), "checked_span", None)
        return hook(item, completion) if hook is not None else None

    def check(self, item: Item, completion: str) -> Verdict:
        kind = item.reference.get("kind")
        checker = self._checkers.get(str(kind))
        if checker is None:
            reason = f"demo item {item.id} has unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}"
            return Verdict("unverifiable", [reason])
        return checker.check(item, completion)
