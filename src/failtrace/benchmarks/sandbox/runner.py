"""Start the sandboxed child (and, for tests, the trusted judge), wait, kill everything, say what happened.

The parent decides only from what it observes: the child's exit status and resource use (from ``wait4``), whether
it ran out of wall time, and the one report line of the judge on a pipe that only the judge holds. A child killed
by SIGSYS made a forbidden system call (seccomp, see ``policy``): that is recorded as a violation here and fails
the run whatever the tests said.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from failtrace.benchmarks.sandbox.policy import (Isolation, SandboxLimits, interpreter, launcher, new_root,
                                                 seccomp_filter)
from failtrace.tempdirs import owned_tempdir, remove_tree

_HERE = Path(__file__).parent
_REPORT_BYTES = 64 * 1024  # how much of stdout/stderr a result keeps
CLEAN_ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


@functools.lru_cache(maxsize=None)
def shipped_source(*names: str) -> str:
    """Source text run by the child or the judge; read once, so a run never mixes two versions of the package."""
    return "\n".join((_HERE / name).read_text(encoding="utf-8") for name in names)


@dataclass
class Ending:
    """How one sandboxed process ended, as the parent saw it."""

    returncode: int | None
    cpu_s: float
    timed_out: bool
    stopped: bool = False  # still running when its job was done; the parent killed it

    def violation(self) -> bool:
        """True when the seccomp filter killed the program (SIGSYS): it tried a forbidden system call."""
        return self.returncode == -signal.SIGSYS

    def describe(self, limits: SandboxLimits) -> str:
        """One sentence saying why the run failed, from its exit status and flags alone (never from its output)."""
        rc = self.returncode
        if self.timed_out:
            return f"did not finish within the {limits.wall_s:g} s wall-time limit and was killed"
        if self.violation():
            return ("made a forbidden system call (a new process or session, exec, network, a signal to another "
                    "process, ptrace, a mount, shared memory or page-cache state) and was killed by the seccomp filter")
        if self.stopped:
            return "was still running when the tests ended and was killed"
        # by CPU time used, not by signal: util-linux 2.38 unshare exits 1 when its child dies of SIGKILL
        if rc != 0 and self.cpu_s >= limits.cpu_s - 0.05:
            return f"used up its CPU-time limit of {limits.cpu_s} s and was killed"
        if rc is not None and rc < 0:
            return f"was killed by {_signal_name(-rc)}"
        return f"exited with status {rc}"


def _signal_name(number: int) -> str:
    """A signal's name, or its number where Python has no name for it: a real-time signal (SIGRTMIN+6 is 40) that
    the code armed with timer_create() killed the child, and signal.Signals(40) raised, so run_tests raised and a
    wrong answer was recorded as unverifiable instead of fail."""
    try:
        return signal.Signals(number).name
    except ValueError:
        low, high = signal.SIGRTMIN, signal.SIGRTMAX
        return f"SIGRTMIN+{number - low}" if low <= number <= high else f"signal {number}"


@functools.cache
def bound_to_parent() -> tuple[str, ...]:
    """The command prefix that gives a process the parent-death signal SIGKILL (util-linux ``setpriv``; it survives
    the exec), so the sandbox's processes die with failtrace even when it is SIGKILLed (a Ray worker killed
    mid-check left a sleeping child and its judge running for ever). Empty where ``setpriv`` is missing. Looked up
    once per process: every check starts two processes."""
    setpriv = shutil.which("setpriv")
    return (setpriv, "--pdeathsig", "KILL") if setpriv else ()


def spawn_child(iso: Isolation, stage: str, cfg: dict[str, Any], pass_fds: tuple[int, ...], out: int,
                err: int) -> subprocess.Popen[bytes]:
    """Start the child: launcher + ``python -I -S -B -c <plain + child>``, config on stdin. ``unshare`` dies with
    failtrace (:func:`bound_to_parent`), and the child with ``unshare`` (it sets its own parent-death signal after
    the switch of user, which clears the one ``unshare --kill-child`` gave it)."""
    cmd = [*bound_to_parent(), *launcher(iso, shutil.which("unshare") or "unshare"), interpreter(), "-I", "-S", "-B",
           "-c",
           shipped_source("plain.py", "child.py") + "\nchild_main()\n"]
    env = {**CLEAN_ENV, "HOME": cfg["workdir"], "TMPDIR": cfg["workdir"]}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=stage, env=env,
                            pass_fds=pass_fds, start_new_session=True)
    assert proc.stdin is not None
    with contextlib.suppress(OSError):  # a child that died at once has closed the pipe
        proc.stdin.write(json.dumps(cfg).encode() + b"\n")
    with contextlib.suppress(OSError):
        proc.stdin.close()
    return proc


def child_config(iso: Isolation, stage: str, limits: SandboxLimits, mode: str, uid: int | None) -> dict[str, Any]:
    """The child's config line; ``uid`` is the user it drops to (:func:`run_user`). Without the filesystem layer
    the child works in the host folder ``in/`` itself, which then belongs to that user."""
    inside = "/work" if iso.filesystem else os.path.join(stage, "in")
    if not iso.filesystem and uid is not None:
        for path in [inside, *(os.path.join(inside, n) for n in os.listdir(inside))]:
            os.chown(path, uid, uid)
    nproc = limits.max_processes if uid is not None else _user_task_count() + limits.max_processes
    sc = seccomp_filter() if iso.seccomp else None
    root = new_root(iso, os.path.join(stage, "root"), os.path.join(stage, "in"), limits, uid)
    return {"root": root, "limits": asdict(limits), "nproc": nproc, "workdir": inside, "uid": uid,
            "mode": mode, "seccomp": sc.hex() if sc else None, "program": "program.py",
            "max_message": limits.max_message_bytes}


# User ids for runs, 64 per failtrace process: 0x70000000 + pid * 64 + slot, for pids below 2**22 (Linux's
# largest pid_max) at most 0x7FFFFFFF. No account owns ids in that range (systemd's table leaves it unassigned): the
# child can read only what every user may. Where the user namespace does not map them (root in a rootless or
# remapped container, usually 0-65535 only), every run drops to ``nobody`` as before.
_UID_BASE, _UID_SLOTS = 0x7000_0000, 64
NOBODY = 65534
_uid_slots: set[int] = set()
_uid_free = threading.Condition()


def _reset_after_fork() -> None:
    """A forked child starts with no run of its own (the parent's slots are not its to free, and a lock held by
    another thread at the fork would never be released); its pid gives it ids of its own."""
    global _uid_free
    _uid_slots.clear()
    _uid_free = threading.Condition()


os.register_at_fork(after_in_child=_reset_after_fork)


@functools.lru_cache(maxsize=1)
def _ids_mapped(first: int, last: int) -> bool:
    """Whether this process's user namespace maps every user and group id in [first, last] (/proc/self/uid_map
    and gid_map: ``inside outside count`` per line; the initial namespace maps all of them)."""
    for name in ("uid_map", "gid_map"):
        try:
            lines = Path(f"/proc/self/{name}").read_text().split("\n")
        except OSError:
            return False
        ranges = [(int(a), int(a) + int(n)) for a, _b, n in (ln.split() for ln in lines if ln.strip())]
        if not any(lo <= first and last < hi for lo, hi in ranges):
            return False
    return True


@contextlib.contextmanager
def run_user(iso: Isolation) -> Iterator[int | None]:
    """The user id one run drops to (None: it drops to none), its own while the run lasts. ``RLIMIT_NPROC`` counts
    a user's threads across the host: with one shared user (``nobody``), a candidate holding every thread it may
    made a concurrent, correct check fail. Ids are unique among live runs of one PID namespace: by pid across
    processes, by slot within one. (With namespaces, a run's processes die with it; in the bare plan, without them
    or seccomp, a daemon the code left behind keeps its id, and the next run of the slot shares it.)"""
    if not iso.drop_user:
        yield None
        return
    base = _UID_BASE + (os.getpid() % (1 << 22)) * _UID_SLOTS
    if not _ids_mapped(base, base + _UID_SLOTS - 1):
        yield NOBODY
        return
    with _uid_free:
        _uid_free.wait_for(lambda: len(_uid_slots) < _UID_SLOTS)
        slot = min(set(range(_UID_SLOTS)) - _uid_slots)
        _uid_slots.add(slot)
    try:
        yield base + slot
    finally:
        with _uid_free:
            _uid_slots.discard(slot)
            _uid_free.notify()


def _user_task_count() -> int:
    """Tasks of this user: RLIMIT_NPROC counts them all, so a limit for the calling user must sit above this."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
    return count


def finish(proc: subprocess.Popen[bytes], deadline: float | None, grace: bool = False) -> Ending:
    """Wait for ``proc`` until ``deadline`` (None: it is no longer needed: kill at once if it still runs; ``grace``:
    the deadline is a grace period after its work, not the wall-time limit); one still running is killed with
    everything it started (:func:`_kill_all`), and its process group in any case."""
    timed_out = stopped = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        left = 0.0 if deadline is None else deadline - time.monotonic()
        if left <= 0:
            timed_out = deadline is not None and not grace
            stopped = not timed_out
            _kill_all(proc.pid)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(min(0.005, left))
    _kill_group(proc.pid)  # reaped: its children (the namespace's first process) ended before it did
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Ending(None if timed_out else proc.returncode, usage.ru_utime + usage.ru_stime, timed_out, stopped)


@contextlib.contextmanager
def killed_on_error(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kill and reap ``procs`` when the block raises (Ctrl-C or any error in this process), then re-raise: a
    sandboxed process must not outlive the call that started it."""
    try:
        yield
    except BaseException:
        for proc in procs:
            finish(proc, None)
        raise


def _kill_all(pid: int) -> None:
    """SIGKILL ``pid``'s children, then its process group. Under ``unshare`` the child is the PID namespace's first
    process, and the whole namespace dies with it, even a process that left the group (seccomp also forbids
    ``setsid``; without seccomp, or before it is loaded, this is what holds). ``unshare --kill-child`` alone does not
    hold: the switch of user clears the child's parent-death signal."""
    for child in _children(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    _kill_group(pid)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    """The live children of ``pid``, from /proc (the ``children`` file, else every process's parent field)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        pass
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = Path(entry.path, "stat").read_bytes()  # bytes: a name set by prctl may not be UTF-8
                    if int(stat[stat.rindex(b")") + 2:].split()[1]) == pid:  # field 4, after "(comm) state"
                        found.append(int(entry.name))
    return found


def read_head(path: str) -> str:
    """The first bytes of a captured stream, as text (bounded: a program may print without limit)."""
    with open(path, "rb") as fh:
        return fh.read(_REPORT_BYTES).decode("utf-8", "replace")


_STAGE_KIND = "failtrace-sandbox-"  # $TMPDIR/failtrace-sandbox-<pid>-*: removed after a kill (failtrace.tempdirs)


@contextlib.contextmanager
def stage_dir(program: str, files: dict[str, bytes]) -> Iterator[str]:
    """A host folder for one run: ``in/`` (copied into the child's /work tmpfs), ``root/``, stdout and stderr."""
    stage = str(owned_tempdir(None, _STAGE_KIND))
    try:
        os.chmod(stage, 0o711)
        os.mkdir(os.path.join(stage, "in"), 0o700)
        os.mkdir(os.path.join(stage, "root"), 0o755)
        for name, data in {"program.py": program.encode("utf-8"), **files}.items():
            if os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"sandbox file names must be plain names, got {name!r}")
            Path(stage, "in", name).write_bytes(data)
        yield stage
    finally:
        remove_tree(stage)


@dataclass
class SandboxResult:
    """How a whole-program run ended. ``ok`` means exit status 0: a fact about the process, not a verdict."""

    status: str  # "ok", "error" (non-zero exit), "timeout", "violation", "crashed"
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    layers: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def run_program(iso: Isolation, program: str, limits: SandboxLimits, files: dict[str, bytes]) -> SandboxResult:
    """Run a whole program under ``iso``; the parent classifies the run from the exit status alone."""
    with stage_dir(program, files) as stage, run_user(iso) as uid:
        started = time.monotonic()  # after the user id is granted: waiting for one is not the program's time
        out_path, err_path = os.path.join(stage, "stdout"), os.path.join(stage, "stderr")
        cfg = child_config(iso, stage, limits, "run", uid)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = spawn_child(iso, stage, cfg, (), out.fileno(), err.fileno())
        with killed_on_error(proc):
            end = finish(proc, started + limits.wall_s)
        stdout, stderr = read_head(out_path), read_head(err_path)
    if end.returncode == 0:
        status, reason = "ok", "exited with status 0"
    else:
        status = ("timeout" if end.timed_out else "violation" if end.violation() else
                  "error" if (end.returncode or 0) > 0 else "crashed")
        reason = end.describe(limits)
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        if status == "error" and lines:
            reason = "raised " + lines[-1].strip()
    return SandboxResult(status, reason, end.returncode, stdout, stderr, time.monotonic() - started, iso.layers())
