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

__all__ = ["Isolation", "SandboxLimits", "SandboxResult", "TestRun", "expected_layers", "guards_the_verdict",
           "isolation", "missing_layers", "run_python", "run_tests", "sandbox_note"]
REQUIRE_ENV = "FAILTRACE_REQUIRE_SANDBOX"
UNGUARDED_ENV = "FAILTRACE_UNGUARDED_SANDBOX"  # =1: run model code even where no layer guards the verdict
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
    """The strongest isolation that works on this machine, probed once per process. A plan whose probe fails is
    tried once more before a weaker one: one transient failure (EAGAIN, a slow start under load) kept the whole
    process on the bare plan, which a red-team found running model code as root with no other layer."""
    for plan in _plans():
        for _attempt in range(2):
            try:
                result = run_program(plan, _PROBE, SandboxLimits(wall_s=20), {})
            except OSError:  # the plan cannot be set up here (e.g. a chown the user namespace refuses)
                continue
            if result.ok and result.stdout.strip() == "2":
                return plan
    return Isolation()


def guards_the_verdict(iso: Isolation) -> bool:
    """Whether model code under ``iso`` is kept from the judge: namespaces (a read-only root of its own), or a user id
    of its own, or the system-call filter (no signals to the judge, no ptrace; files failtrace's user owns stay
    writable to it, as docs/SANDBOX.md says). With none of them, the bare plan, the code runs as failtrace's own user
    unfiltered: it could signal or trace the judge, or rewrite its standard library, and forge its verdict."""
    return iso.namespaces or iso.drop_user or iso.seccomp


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
    if os.environ.get(REQUIRE_ENV) == "1":
        return missing_layers()
    if not guards_the_verdict(isolation()) and os.environ.get(UNGUARDED_ENV) != "1":
        return ["no layer keeps model code from the judge (namespaces, a user of its own and seccomp all failed "
                f"here); {UNGUARDED_ENV}=1 runs it anyway, as failtrace's own user"]
    return []


def sandbox_note() -> str | None:
    """One line for a command that will check model code, when the sandbox is weaker than this machine claims
    (:func:`missing_layers`) or cannot guard the verdict at all; None when all is in force."""
    missing = missing_layers()
    if not guards_the_verdict(isolation()):
        if os.environ.get(UNGUARDED_ENV) == "1":
            return (f"the code sandbox has no layer that keeps model code from the judge here ({UNGUARDED_ENV}=1): "
                    "HumanEval verdicts are not protected from the code they judge")
        return ("the code sandbox has no layer that keeps model code from the judge here (no namespaces, user of "
                "its own or seccomp worked): HumanEval items are unverifiable; docs/SANDBOX.md says what each needs")
    if missing:
        return (f"the code sandbox runs without {', '.join(missing)} (this machine claims them; their probe "
                f"failed twice); {REQUIRE_ENV}=1 refuses to run weaker")
    return None


def run_python(program: str, *, limits: SandboxLimits | None = None,
               files: dict[str, bytes] | None = None) -> SandboxResult:
    """Run ``program`` (Python source) in the sandbox, ``files`` placed beside it. Never raises for anything the
    program does; raises FailtraceError when FAILTRACE_REQUIRE_SANDBOX=1 and a layer is missing."""
    if missing := _required_but_missing():
        said = f"{REQUIRE_ENV}=1 but the sandbox lacks" if os.environ.get(REQUIRE_ENV) == "1" else \
            "the sandbox cannot run model code here"
        raise FailtraceError(f"{said}: {', '.join(missing)}")
    return run_program(isolation(), program, limits or SandboxLimits(), dict(files or {}))


def run_tests(candidate_source: str, entry: str, test_source: str, *, limits: SandboxLimits | None = None,
              data: Any = None) -> TestRun:
    """Run trusted ``test_source`` (it calls ``candidate(...)``; ``DATA`` holds ``data``) against the function
    ``entry`` defined by untrusted ``candidate_source``. See :class:`TestRun`; never raises for what the code does."""
    if missing := _required_but_missing():
        said = f"{REQUIRE_ENV}=1 but the sandbox lacks" if os.environ.get(REQUIRE_ENV) == "1" else \
            "the sandbox cannot run model code here"
        return TestRun("unverifiable", f"{said}: {', '.join(missing)}", layers=isolation().layers())
    return _run_tests(isolation(), candidate_source, entry, test_source, limits or SandboxLimits(), data)
