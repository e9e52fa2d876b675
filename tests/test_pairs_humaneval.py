"""HumanEval's prefix-final rule is sound: once it fires, the code the checker runs (and so its verdict) is the same
for the prefix and for every text that starts with it."""

from __future__ import annotations

import pytest

from failtrace.benchmarks.base import Item
from failtrace.benchmarks.humaneval import HumanEvalBenchmark, candidate_code, code_is_final
from failtrace.benchmarks.sandbox import SandboxLimits

PROMPT = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
REF = {"prompt": PROMPT, "entry_point": "add", "test": TEST}

TEXTS = [  # (completion, whether the full text has a closed block defining add)
    ("Here is the code:\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds the numbers.", True),
    ("```python\nimport math\n```\n```python\ndef add(a, b):\n    return a - b\n```\nDone.", True),
    ("```\ndef add(a,b): return a+b\n```", True),
    ("```js\nfunction add(a, b) { return a + b }\n```\n```py\ndef add(a, b):\n  return b + a\n```", True),
    ("def add(a, b):\n    return a + b\n```python\nprint(1)\n```", False),
    ("```python\ndef helper():\n    pass\n```\nand\n```python\n    def add(a, b):\n        return a + b\n```x", True),
    ("````python\ndef add(a, b):\n    return 1\n````\n", True),
    ("```python\ndef adder(a, b):\n    return a + b\n```\nno add here", False),
    ("```python3 title\n\ndef add (a, b):\n    return a+b\n```", True),
]
TAILS = ["", "`", "``", "```", "\n", "python\ndef add(x, y):\n    return 0\n```", "\n```python\ndef add(a, b):\n"
         "    return 0\n```", "\ndef add(a, b): return 42\n", "``python\ndef add(a, b):\n    return 7\n```",
         " and more words", "\n```\n", "```py\n"]


@pytest.mark.parametrize(("text", "closes"), TEXTS)
def test_a_final_prefix_fixes_the_code_the_checker_runs(text: str, closes: bool) -> None:
    fired = [j for j in range(len(text) + 1) if code_is_final(text[:j], "add")]
    for j in fired:
        code = candidate_code(REF, text[:j])
        for tail in TAILS + [text[j:]]:
            assert candidate_code(REF, text[:j] + tail) == code, (text[:j], tail)
    assert bool(fired) == closes  # it fires exactly when a closed defining block exists
    if closes:  # and from the first closing fence on (monotone), not before
        assert fired == list(range(fired[0], len(text) + 1)) and text[:fired[0]].endswith("```")


def test_the_real_checker_gives_the_prefix_the_full_verdict() -> None:
    bench = HumanEvalBenchmark(limits=SandboxLimits(wall_s=5, cpu_s=5, memory_mb=512))
    item = Item(id="Toy/0", benchmark="humaneval", prompt=PROMPT, reference=dict(REF))
    seen = set()
    for text, _ in TEXTS[:2]:
        j = next(j for j in range(len(text) + 1) if bench.prefix_final(item, text[:j]))
        full = bench.check(item, text).status
        assert bench.check(item, text[:j]).status == full
        assert bench.check(item, text[:j] + "\n```python\ndef add(a, b):\n    return 0\n```").status == full
        seen.add(full)
    assert seen == {"pass", "fail"}


def test_the_demo_benchmark_uses_its_checkers_own_prefix_rules() -> None:
    from failtrace.benchmarks.demo import DemoBenchmark, demo_items
    from failtrace.benchmarks.ifeval import IFEvalBenchmark

    bench, strict = DemoBenchmark(), IFEvalBenchmark(mode="strict")
    items = {it.id: it for it in demo_items()}
    code = "Here:\n```python\ndef count_a(s):\n    return 0\n```\nIt counts."
    py = items["py-count-a"]
    fired = [j for j in range(len(code) + 1) if bench.prefix_final(py, code[:j])]
    assert fired and code[:fired[0]].endswith("```") and bench.prefix_decides_fail(py, code) is None
    comma = items["if-colors-comma"]
    for text in ("Red, blue", "Red blue", "Red"):
        assert bench.prefix_decides_fail(comma, text) == strict.prefix_decides_fail(comma, text)
    assert bench.prefix_decides_fail(comma, "Red, blue") is not None and not bench.prefix_final(comma, "a```")
    assert bench.prefix_decides_fail(items["math-small-add"], "\\boxed{3}") is None
