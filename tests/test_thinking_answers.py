"""With ``--thinking``, every checker reads the answer after the thinking block, as IFEval's own package does: a comma,
a code draft or a tool call inside ``<think>…</think>`` was judged as the answer (an outside review, 8 Dec 2026), and
the pair search's prefix rules decide nothing while the answer has not begun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from failtrace.benchmarks import get_benchmark
from failtrace.benchmarks.base import Item, in_thinking, without_thinking
from failtrace.failures.collect import safe_check

TEXTS = ["<think>\nLet me think, carefully.\n</think>\n\nHello world", "<think>still thinking, no end",
         "  <think>a</think>b</think>c", "<think></think>", "\n<think>x</think>\n\n  answer  \n"]


@pytest.mark.parametrize("text", TEXTS)
def test_the_answer_is_what_ifevals_own_package_reads(text: str) -> None:
    """The independent reference: if_verifiable's strip_thinking (the package failtrace's IFEval checks come from)."""
    from if_verifiable.common import strip_thinking

    assert without_thinking(text).strip() == strip_thinking(text)


@pytest.mark.parametrize("text", ["Hello, world", "", "  spaced  ", "x < y and </thin", "I <think> not",
                                  "Okay, let me think.</think>\n\nHi there", "<b>Hi</b> uses </think> tags"])
def test_a_text_that_opens_no_thinking_block_is_read_unchanged(text: str) -> None:
    """Also one with a `</think>` it never opened: a template that opens the block in the prompt (R1 distills) leaves
    the completion no mark of where thinking starts, so the prefix rules could not wait for the answer (an outside
    review of this change); the checker and the rules read such a text whole, as they did before."""
    assert without_thinking(text) == text


def _ifeval_no_comma() -> Item:
    return Item(id="1", benchmark="ifeval", prompt="Say hi without commas.",
                reference={"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})


def test_a_comma_inside_the_thinking_is_not_the_answers() -> None:
    bench, item = get_benchmark("ifeval"), _ifeval_no_comma()
    assert safe_check(bench, item, "<think>\nHi, then bye.\n</think>\n\nHi there").status == "pass"
    assert safe_check(bench, item, "<think>\nNo commas here\n</think>\n\nHi, there").status == "fail"
    assert safe_check(bench, item, "<think>\nHi there, I was cut at the budget").status == "fail"  # no answer
    assert safe_check(bench, item, "Hi, there").status == "fail"  # without thinking: as before


def test_a_code_draft_inside_the_thinking_is_not_the_answer(tmp_path: Path) -> None:
    """HumanEval ran the first block that defines the function: a wrong draft inside the thinking."""
    problem = {"task_id": "Toy/0", "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
               "entry_point": "add", "canonical_solution": "    return a + b\n",
               "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"}
    data = tmp_path / "he.jsonl"
    data.write_text(json.dumps(problem) + "\n")
    bench = get_benchmark("humaneval")
    (item,) = bench.load(str(data)).items
    draft = "```python\ndef add(a, b):\n    return a - b\n```"
    final = "```python\ndef add(a, b):\n    return a + b\n```"
    assert safe_check(bench, item, f"<think>\nFirst try:\n{draft}\nNo, plus.\n</think>\n\n{final}").status == "pass"
    assert safe_check(bench, item, f"<think>\n{final}\n</think>\n\n{draft}").status == "fail"


def test_prefix_rules_wait_for_the_answer() -> None:
    """IFEval's no-comma rule decides a prefix as soon as it holds a comma; inside the thinking it must not."""
    from failtrace.failures.prefix_rules import PrefixJudge
    from failtrace_testkit.toy import toy_tokenizer

    tok = toy_tokenizer()
    judge = PrefixJudge(get_benchmark("ifeval"), _ifeval_no_comma(), tok)

    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    assert judge.decided(ids("Hi, there")) is not None  # as before
    assert judge.decided(ids("<think>\nHi, then")) is None
    assert judge.decided(ids("<thi")) is None and in_thinking("<thi")
    assert judge.decided(ids("<think>\nHi, then</think>\n\nHi")) is None
    assert judge.decided(ids("<think>\nHi, then</think>\n\nHi, there")) is not None
    # a block the completion did not open: rules and checker read the text whole, so they agree
    cut = "Okay, let me think"
    assert judge.decided(ids(cut)) is not None
    assert safe_check(get_benchmark("ifeval"), _ifeval_no_comma(), cut + ".</think>\n\nHi there").status == "fail"
