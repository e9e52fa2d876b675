"""MATH: last-\\boxed extraction and math-verify equivalence."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from failtrace.benchmarks import Item, get_benchmark
from failtrace.benchmarks.mathbench import INSTRUCTION, MathBenchmark, last_boxed


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{42}.", "42"),
    ("first \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\fbox{x^{2}+1}", "x^{2}+1"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),          # escaped braces do not close the group
    ("$\\boxed 7$", "7"),
    ("\\boxed{ \\left( 3, \\frac{\\pi}{2} \\right) }", "\\left( 3, \\frac{\\pi}{2} \\right)"),
])
def test_last_boxed(text: str, expected: str) -> None:
    assert last_boxed(text) == (expected, None)


@pytest.mark.parametrize("text, why", [
    ("the answer is 5", "no \\boxed{} answer"),
    ("\\boxed{3} and finally \\boxed{\\frac{1}{", "never closed"),
    ("\\boxed{}", "empty"),
])
def test_no_usable_boxed(text: str, why: str) -> None:
    content, reason = last_boxed(text)
    assert content is None and reason is not None and why in reason


def _item(answer: str, solution: str | None = None) -> Item:
    return Item(id="m", benchmark="math", prompt="?", reference={"answer": answer, "solution": solution})


def test_equivalent_forms_pass_and_wrong_answers_fail() -> None:
    bench = MathBenchmark()
    assert bench.check(_item("\\frac{1}{2}"), "Thus \\boxed{0.5}").status == "pass"
    assert bench.check(_item("\\frac{\\sqrt{3}}{2}"), "\\boxed{\\sqrt{3}/2}").status == "pass"
    assert bench.check(_item("\\left( 3, \\frac{\\pi}{2} \\right)"), "\\boxed{(3, \\pi/2)}").status == "pass"
    wrong = bench.check(_item("10"), "I think \\boxed{11}")
    assert wrong.status == "fail" and "'11'" in wrong.reasons[0] and "'10'" in wrong.reasons[0]
    assert wrong.details["extracted"] == "11"


def test_only_the_last_box_counts() -> None:
    completion = "maybe \\boxed{4}? no: \\boxed{5}"
    verdict = MathBenchmark().check(_item("4"), completion)
    last = completion.rsplit("\\boxed{", 1)[1].split("}", 1)[0]  # the last box's content, read off by hand
    assert last == "5" and verdict.status == "fail"
    assert verdict.details["extracted"] == last and verdict.details["gold"] == "4"
    assert f"{last!r}" in verdict.reasons[0]


def test_missing_box_fails_with_reason() -> None:
    verdict = MathBenchmark().check(_item("4"), "The answer is 4.")
    assert verdict.status == "fail" and "no \\boxed{}" in verdict.reasons[0]


def test_reference_from_solution_and_unparseable_gold() -> None:
    bench = MathBenchmark()
    assert bench.check(_item("", "So we get \\boxed{12}."), "\\boxed{12}").status == "pass"
    odd = bench.check(_item("\\text{}"), "\\boxed{3}")
    assert odd.status == "unverifiable" and "reference answer" in odd.reasons[0]


def test_check_works_off_the_main_thread() -> None:
    results = []
    thread = threading.Thread(target=lambda: results.append(MathBenchmark().check(_item("\\frac{2}{4}"),
                                                                                    "\\boxed{\\frac12}")))
    thread.start()
    thread.join()
    assert results[0].status == "pass"


def test_load_builds_prompt_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    rows = [{"problem": "Compute $1+1$.", "solution": "$\\boxed{2}$", "answer": "2", "subject": "Algebra",
             "level": 1, "unique_id": "test/algebra/1.json"},
            {"problem": "No answer here.", "solution": "none"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    report = get_benchmark("math").load(str(path))
    item = report.items[0]
    assert item.id == "test/algebra/1.json"
    assert item.prompt.startswith("Compute $1+1$.") and item.prompt.endswith(INSTRUCTION)
    assert item.meta == {"subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"}
    assert "line 2" in report.problems[0] and "no reference answer" in report.problems[0]


# ---- real MATH-500 problems with known right and wrong answers --------------------------------------------------

DATA = Path(__file__).parent / "data" / "math500_answers.jsonl"


def test_real_math500_problems_right_and_wrong_answers() -> None:
    """13 real MATH-500 problems (tests/data, copied with their solutions): each official solution, used as the
    completion, passes; answers a grader counts right in other forms (fractions, degrees, reordered roots and
    sums, ``x = 5``, equivalent radicals) pass; wrong answers (near misses, swapped tuples, extra or missing roots)
    fail, with the extracted answer in the details."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    bench = MathBenchmark()
    items = {it.id: it for it in bench.load(str(DATA)).items}
    assert len(items) == len(rows) >= 12
    checked = {"pass": 0, "fail": 0}
    for row in rows:
        item = items[row["unique_id"]]
        assert bench.check(item, row["solution"]).status == "pass", row["unique_id"]
        for answers, status in ((row["right"], "pass"), (row["wrong"], "fail")):
            for ans in answers:
                verdict = bench.check(item, f"Let me work it out step by step. So the answer is $\\boxed{{{ans}}}$.")
                assert verdict.status == status, (row["unique_id"], ans, verdict.reasons)
                assert verdict.details["extracted"] == ans
                checked[status] += 1
        unboxed = bench.check(item, f"The answer is {row['answer']}.")  # right, but not in the required box
        assert unboxed.status == "fail" and "no \\boxed{}" in unboxed.reasons[0]
    assert checked["pass"] >= 30 and checked["fail"] >= 30, checked


@pytest.mark.parametrize(("record", "said"), [
    ({"problem": "", "answer": "4"}, "'problem' must be a string with text in it"),
    ({"problem": "   \n", "answer": "4"}, "'problem' must be a string with text in it"),
    ({"problem": "x?", "answer": 1e-05}, "'answer' must be text (or a whole number), got float 1e-05"),
    ({"problem": "x?", "answer": True}, "'answer' must be text (or a whole number), got bool True"),
    ({"problem": "x?", "answer": ["4"]}, "'answer' must be text (or a whole number), got list ['4']"),
    ({"problem": "x?", "answer": {"v": 4}}, "'answer' must be text (or a whole number), got dict {'v': 4}"),
    ({"problem": "x?", "answer": "   "}, "no reference answer"),
])
def test_a_problem_or_answer_no_check_could_use_is_named(tmp_path: Path, record: dict[str, object], said: str) -> None:
    """These were stored as items: str() of a float is not the answer as written (1e-05 for 0.00001, so a right
    \\boxed{0.00001} failed), of True or a dict no answer could equal; an empty problem was asked as the instruction
    alone; a blank answer made an item that could never pass."""
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2", "unique_id": "ok"}) + "\n"
                    + json.dumps(record | {"unique_id": "bad"}) + "\n")
    report = MathBenchmark().load(str(path))
    assert [i.id for i in report.items] == ["ok"] and len(report.problems) == 1
    assert report.problems[0].startswith("line 2: " + said), report.problems[0]
    whole = tmp_path / "w.jsonl"  # a whole number is its digits, exactly
    whole.write_text(json.dumps({"problem": "2+2?", "answer": 4, "unique_id": "w"}) + "\n")
    assert MathBenchmark().check(MathBenchmark().load(str(whole)).items[0], "\\boxed{4}").status == "pass"


def test_a_reference_answer_math_verify_cannot_read_is_unverifiable_not_a_failure() -> None:
    """math-verify hands "\\frac{" back as a bare string: every answer, even the right-looking one, was judged
    fail, and the item went to the pair search as a real failure."""
    verdict = MathBenchmark().check(_item("\\frac{"), "\\boxed{4}")
    assert verdict.status == "unverifiable" and "could not parse the reference answer" in verdict.reasons[0]
    # an answer without \boxed{} was still a "fail" against it (nothing could match it, not even a boxed answer)
    bare = MathBenchmark().check(_item("\\frac{"), "I think it is four.")
    assert bare.status == "unverifiable" and bare.reasons == [
        "math-verify could not parse the reference answer '\\\\frac{'; no \\boxed{} answer in the completion"]
    assert MathBenchmark().check(_item("4"), "I think it is four.").status == "fail"  # a readable reference: fail
