"""Run untrusted Python (model-written code) so that nothing it does can decide its own verdict or harm the host.

Public API: :func:`run_tests` (a benchmark's test code against a candidate function: the verdict path),
:func:`run_python` (a whole program; ``ok`` only means exit status 0), :func:`isolation` (the layers this machine
gives, probed once) and :func:`missing_layers` (layers the machine claims but the sandbox did not get).
See docs/SANDBOX.md for the guarantees and how they are tested.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from typing import Any

from failtrace.benchmarks.sandbox.harness import TestRun
from failtrace.benchmarks.sandbox.harness import run_tests as _run_tests
from failtrace.benchmarks.sandbox.policy import Isolation, SandboxLimits, seccomp_filter
from failtrace.benchmarks.sandbox.runner import SandboxResult, run_program
from failtrace.errors import FailtraceError

__all__ = ["Isolation", "SandboxLimits", "SandboxResult", "TestRun", "expected_layers", "isolation",
           "missing_layers", "run_python", "run_tests"]
REQUIRE_ENV = "FAILTRACE_REQUIRE_SANDBOX"
# modules the boot code has not loaded yet: the child can read the standard library after dropping privileges
_PROBE = ("import decimal, fractions, statistics\n"
          "print(statistics.mean([fractions.Fraction(3), 1]) + int(decimal.Decimal(0)))\n")


def _plans() -> list[Isolation]:
    """Strongest first; :func:`isolation` keeps the first that runs a trivial program correctly."""
    seccomp = seccomp_filter() is not None
    root = os.geteuid() == 0
    plans = [Isolation(namespaces=True, user_namespace=not root, filesystem=True, seccomp=seccomp, drop_user=root)]
    if not shutil.which("unshare"):
        plans = []
    return [*plans, Isolation(seccomp=seccomp, drop_user=root), Isolation(drop_user=root), Isolation()]


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """The strongest isolation that works on this machine, probed once per process."""
    for plan in _plans():
        try:
            result = run_program(plan, _PROBE, SandboxLimits(wall_s=20), {})
        except OSError:  # the plan cannot even be set up here (e.g. a chown the user namespace refuses): weaker one
            continue
        if result.ok and result.stdout.strip() == "2":
            return plan
    return Isolation()


@functools.lru_cache(maxsize=1)
def expected_layers() -> dict[str, bool]:
    """The layers this machine claims to support: all of them under FAILTRACE_REQUIRE_SANDBOX=1, else namespaces
    when a bare ``unshare`` of every namespace succeeds and seccomp when the kernel reports it (x86-64 only)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        return dict.fromkeys(Isolation().layers(), True)
    root = os.geteuid() == 0
    unshare = shutil.which("unshare")
    namespaces = False
    if unshare:
        cmd = [unshare, *([] if root else ["--user", "--map-root-user"]), "--mount", "--net", "--pid", "--ipc",
               "--uts", "--fork", "true"]
        try:
            namespaces = subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            namespaces = False
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            kernel_seccomp = any(line.startswith("Seccomp:") for line in fh)
    except OSError:
        kernel_seccomp = False
    claim = Isolation(namespaces=namespaces, user_namespace=namespaces and not root, filesystem=namespaces,
                      seccomp=kernel_seccomp and seccomp_filter() is not None, drop_user=root)
    return claim.layers()


def missing_layers() -> list[str]:
    """Layers the machine claims (see :func:`expected_layers`) but the probed isolation does not have."""
    have = isolation().layers()
    return [name for name, claimed in expected_layers().items() if claimed and not have[name]]


def _required_but_missing() -> list[str]:
    return missing_layers() if os.environ.get(REQUIRE_ENV) == "1" else []


def run_python(program: str, *, limits: SandboxLimits | None = None,
               files: dict[str, bytes] | None = None) -> SandboxResult:
    """Run ``program`` (Python source) in the sandbox, ``files`` placed beside it. Never raises for anything the
    program does; raises FailtraceError when FAILTRACE_REQUIRE_SANDBOX=1 and a layer is missing."""
    if missing := _required_but_missing():
        raise FailtraceError(f"{REQUIRE_ENV}=1 but the sandbox lacks: {', '.join(missing)}")
    return run_program(isolation(), program, limits or SandboxLimits(), dict(files or {}))


def run_tests(candidate_source: str, entry: str, test_source: str, *, limits: SandboxLimits | None = None,
              data: Any = None) -> TestRun:
    """Run trusted ``test_source`` (it calls ``candidate(...)``; ``DATA`` holds ``data``) against the function
    ``entry`` defined by untrusted ``candidate_source``. See :class:`TestRun`; never raises for what the code does."""
    if missing := _required_but_missing():
        return TestRun("unverifiable", f"{REQUIRE_ENV}=1 but the sandbox lacks: {', '.join(missing)}",
                       layers=isolation().layers())
    return _run_tests(isolation(), candidate_source, entry, test_source, limits or SandboxLimits(), data)
