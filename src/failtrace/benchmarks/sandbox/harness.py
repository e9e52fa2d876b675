"""Run benchmark test code against a sandboxed candidate: the judge (trusted) and the child (untrusted) side by side.

Processes: the parent starts the child (namespaces, new root, rlimits, seccomp; it loads the completion and answers
calls) and the judge (a fresh interpreter that runs only the benchmark's test code, with ``candidate`` proxied to
the child over two pipes). The judge's one-line report comes back on a third pipe that the child never holds. The
verdict is then: pass only if the judge reported pass and the child made no forbidden system call.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from failtrace.benchmarks.sandbox import plain
from failtrace.benchmarks.sandbox.policy import Isolation, SandboxLimits, interpreter
from failtrace.benchmarks.sandbox.runner import (CLEAN_ENV, Ending, bound_to_parent, child_config, finish,
                                                 killed_on_error, read_head, run_user, shipped_source, spawn_child,
                                                 stage_dir)

_GRACE_S = 0.5  # after the judge is done, how long the child may take to exit by itself before it is killed
_MAX_REPORT = 512 * 1024 * 1024


@dataclass
class TestRun:
    """The outcome of one test run: ``status`` is pass, fail or unverifiable (the harness could not decide)."""

    __test__ = False  # not a pytest test class, despite the name

    status: str
    reason: str
    calls: int = 0
    value: Any = None  # what the test code left in RESULT (plain data), e.g. canonical outputs
    candidate: str = ""  # how the candidate process ended
    violation: bool = False
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    layers: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def _read_report(fd: int, deadline: float) -> bytes | None:
    """Everything the judge writes on the result pipe until it closes it; None if the deadline passes first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_REPORT:
            return b""


def _spawn_judge(stage: str, cfg: dict[str, Any], pass_fds: tuple[int, ...], err: int) -> subprocess.Popen[bytes]:
    cmd = [*bound_to_parent(), interpreter(), "-I", "-S", "-B", "-c",
           shipped_source("plain.py", "judge.py") + "\njudge_main()\n"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, cwd=stage,
                            env=dict(CLEAN_ENV), pass_fds=pass_fds, start_new_session=True)
    assert proc.stdin is not None
    with contextlib.suppress(OSError):
        proc.stdin.write(json.dumps(cfg).encode() + b"\n")
    with contextlib.suppress(OSError):
        proc.stdin.close()
    return proc


def run_tests(iso: Isolation, candidate_source: str, entry: str, test_source: str, limits: SandboxLimits,
              data: Any = None) -> TestRun:
    """Load ``candidate_source`` in the sandbox and run ``test_source`` in the judge, where ``candidate`` calls the
    function ``entry`` and ``DATA`` is ``data`` (plain data). The tests pass by returning without an exception."""
    with stage_dir(candidate_source, {}) as stage, run_user(iso) as uid:
        started = time.monotonic()  # after the user id is granted: waiting for one is not the candidate's time
        deadline = started + limits.wall_s
        j2c_r, j2c_w = os.pipe()
        c2j_r, c2j_w = os.pipe()
        res_r, res_w = os.pipe()
        out_path, err_path, judge_err = (os.path.join(stage, n) for n in ("stdout", "stderr", "judge.err"))
        try:
            cfg = child_config(iso, stage, limits, "serve", uid) | {"fds": [j2c_r, c2j_w], "entry": entry}
            judge_cfg = {"source": test_source, "data": plain.encode(data), "wall_s": limits.wall_s,
                         "memory_mb": max(2 * limits.memory_mb, 1024), "max_message": limits.max_message_bytes,
                         "to_child": j2c_w, "from_child": c2j_r, "result_fd": res_w}
            with open(out_path, "wb") as out, open(err_path, "wb") as err, open(judge_err, "wb") as jerr:
                child = spawn_child(iso, stage, cfg, (j2c_r, c2j_w), out.fileno(), err.fileno())
                with killed_on_error(child):  # the judge failed to start: the child must not outlive the call
                    judge = _spawn_judge(stage, judge_cfg, (c2j_r, j2c_w, res_w), jerr.fileno())
        finally:
            for fd in (j2c_r, j2c_w, c2j_r, c2j_w, res_w):
                os.close(fd)
        try:
            with killed_on_error(child, judge):  # neither process may outlive the call
                raw = _read_report(res_r, deadline)
        finally:
            os.close(res_r)
        now = time.monotonic()
        # after the report, the child gets a grace period to exit at the end of input; killed then, it "was still
        # running when the tests ended", not out of wall time (unless the wall-time limit came first)
        child_end = finish(child, min(deadline, now + _GRACE_S) if raw is not None else now,
                           grace=raw is not None and now + _GRACE_S < deadline)
        if raw is None:
            child_end.timed_out, child_end.stopped = True, False
        judge_end = finish(judge, min(deadline, time.monotonic() + _GRACE_S) if raw is not None else None)
        run = _decide(raw, child_end, judge_end, limits, read_head(judge_err))
        run.stdout, run.stderr = read_head(out_path), read_head(err_path)
    run.wall_s, run.layers = time.monotonic() - started, iso.layers()
    return run


def _decide(raw: bytes | None, child: Ending, judge: Ending, limits: SandboxLimits, judge_err: str) -> TestRun:
    """Combine the judge's report with how the child ended. Only the judge's pass and a clean child give pass."""
    ended = child.describe(limits)
    if child.violation():
        return TestRun("fail", "the candidate " + ended, candidate=ended, violation=True)
    if raw is None:
        return TestRun("fail", f"the tests did not finish within the {limits.wall_s:g} s wall-time limit",
                       candidate=ended)
    if raw.count(b"\n") > 1:  # the judge writes exactly one line; more means someone else wrote to the pipe
        return TestRun("unverifiable", "the result pipe held more than one report", candidate=ended)
    try:
        report = json.loads(raw)
        verdict, reason, calls = report["verdict"], str(report["reason"]), int(report["calls"])
        value = plain.decode(report["value"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        if raw.strip():
            return TestRun("unverifiable", f"the judge's report was unreadable ({str(exc)[:200]})", candidate=ended)
        tail = judge_err.strip().splitlines()[-1:] or [judge.describe(limits)]
        return TestRun("unverifiable", "the judge ended without a report: " + tail[0][:300], candidate=ended)
    if verdict == "pass":
        return TestRun("pass", "", calls, value, candidate=ended)
    if verdict == "fail":
        if not child.stopped and child.returncode not in (0, 3):  # 0: ended at end of input, 3: did not load
            reason += "; the candidate " + ended
        return TestRun("fail", reason, calls, candidate=ended)
    return TestRun("unverifiable", reason, calls, candidate=ended)
