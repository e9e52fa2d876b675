"""The demo benchmark: every built-in item is judged by the real checker of its kind (IFEval instruction classes,
math-verify, the HumanEval sandbox), shown with a hand-written passing and a hand-written failing completion."""

from __future__ import annotations

import pytest

from failtrace.benchmarks.base import Item
from failtrace.benchmarks.demo import DEMO_SETTINGS, DemoBenchmark, demo_items
from failtrace.benchmarks.registry import BENCHMARK_NAMES, get_benchmark
from failtrace.errors import FailtraceError

PY = "```python\n{}\n```"

# item id -> (a completion the real checker must pass, one it must fail)
COMPLETIONS: dict[str, tuple[str, str]] = {
    "if-capital-lower": ("the capital of france is paris.", "The capital of France is Paris."),
    "if-colors-comma": ("Red blue and yellow.", "Red, blue and yellow."),
    "if-water-quote": ('"Water is made of hydrogen and oxygen."', "Water is made of hydrogen and oxygen."),
    "if-star-options": ("My answer is yes.", "Yes, the sun is a star."),
    "if-cat-forbidden": ("A small feline with soft fur purrs on the sofa.", "A cat is a small animal with soft fur."),
    "math-small-add": ("\\boxed{17}", "\\boxed{18}"),
    "math-small-mul": ("\\boxed{56}", "\\boxed{54}"),
    "py-count-a": (PY.format("def count_a(s):\n    return s.count('a')"),
                   PY.format("def count_a(s):\n    return len(s) % 2 == 0")),
    "py-first-word": (PY.format("def first_word(s):\n    return s.split()[0]"),
                      PY.format("def first_word(s):\n    return s[0]")),
    "py-evens": (PY.format("def evens(xs):\n    return [x for x in xs if x % 2 == 0]"),
                 PY.format("def evens(xs):\n    return [x for x in xs if x % 2]")),
}

ITEMS = demo_items()


def test_every_item_has_a_passing_and_a_failing_completion() -> None:
    assert sorted(COMPLETIONS) == sorted(it.id for it in ITEMS)
    assert len({it.id for it in ITEMS}) == len(ITEMS)
    assert {it.reference["kind"] for it in ITEMS} == {"ifeval", "math", "python"}


@pytest.mark.parametrize("item", ITEMS, ids=[it.id for it in ITEMS])
def test_the_real_checker_passes_and_fails(item: Item) -> None:
    bench = DemoBenchmark()
    good, bad = COMPLETIONS[item.id]
    passed = bench.check(item, good)
    failed = bench.check(item, bad)
    assert passed.status == "pass", passed.reasons
    assert failed.status == "fail"
    assert failed.reasons


def test_checks_go_through_the_real_checkers() -> None:
    """The verdict's details are the ones each real checker writes (IFEval per-instruction results, math-verify's
    extracted answer, the sandbox run), so the demo adds no checking of its own."""
    bench = DemoBenchmark()
    by_kind = {it.reference["kind"]: it for it in ITEMS}
    v = bench.check(by_kind["ifeval"], COMPLETIONS[by_kind["ifeval"].id][1])
    assert [r["instruction_id"] for r in v.details["instructions"]] == by_kind["ifeval"].reference[
        "instruction_id_list"]
    v = bench.check(by_kind["math"], "so \\boxed{7} then \\boxed{" + by_kind["math"].reference["answer"] + "}")
    assert v.status == "pass" and v.details["extracted"] == by_kind["math"].reference["answer"]
    v = bench.check(by_kind["python"], PY.format("import os\nos.system('true')"))
    # the new sandbox: the forbidden call kills the child (seccomp); the parent records the violation
    assert v.status == "fail" and v.details["base"]["violation"] is True


def test_unknown_kind_is_unverifiable() -> None:
    item = Item(id="x", benchmark="demo", prompt="hi", reference={"kind": "poetry"})
    verdict = DemoBenchmark().check(item, "anything")
    assert verdict.status == "unverifiable"
    assert "poetry" in verdict.reasons[0]


def test_registered_and_loads_only_its_builtin_items() -> None:
    """The demo has no data file: ``builtin`` (or ``builtin:demo``) loads its items; a path is refused, not ignored
    (it used to be stored as the run's data source, though nothing was read from it)."""
    assert "demo" in BENCHMARK_NAMES
    bench = get_benchmark("demo")
    assert isinstance(bench, DemoBenchmark)
    assert bench.max_new_tokens == DEMO_SETTINGS.max_new_tokens
    with pytest.raises(FailtraceError, match="no data file .*use --data builtin"):
        bench.load("no/such/file.jsonl")
    report = bench.load("builtin:demo")
    assert [it.id for it in report.items] == [it.id for it in ITEMS]
    assert report.problems == []
    assert [it.id for it in bench.load("builtin", limit=3).items] == [it.id for it in ITEMS[:3]]
    assert all(it.benchmark == "demo" for it in report.items)


def test_demo_command_source_is_the_demo_benchmark() -> None:
    """What ``failtrace demo`` runs (the demo tests of the CLI replace it with toy items): the built-in benchmark,
    its items and its settings, every setting a field of DemoSettings."""
    from failtrace.cli.demo import demo_source

    bench, items, settings = demo_source()
    assert isinstance(bench, DemoBenchmark) and [it.id for it in items] == [it.id for it in ITEMS]
    assert settings == {"max_new_tokens": DEMO_SETTINGS.max_new_tokens, "top_k": DEMO_SETTINGS.top_k,
                        "min_delta": DEMO_SETTINGS.min_delta, "max_positions": DEMO_SETTINGS.max_positions}
