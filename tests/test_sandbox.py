"""The code sandbox: hostile programs end as failures with a reason, quickly, and the host is untouched."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from failtrace.benchmarks import sandbox
from failtrace.benchmarks.sandbox import SandboxLimits, run_python

FAST = SandboxLimits(wall_s=3, cpu_s=2, memory_mb=512, max_output_bytes=200_000)


@pytest.fixture()
def canary(tmp_path: Path) -> Path:
    folder = tmp_path / "host"
    folder.mkdir()
    path = folder / "canary.txt"
    path.write_text("alive")
    return path


def _hostile(canary: Path, port: int) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (program, acceptable statuses)."""
    folder = str(canary.parent)
    return {
        "fork bomb": ("import os\nwhile True:\n    os.fork()\n", ("blocked",)),
        "subprocess bomb": ("import subprocess\nwhile True:\n    subprocess.Popen(['sh', '-c', ':'])\n",
                            ("blocked",)),
        "infinite loop": ("while True:\n    pass\n", ("timeout", "cpu_limit")),
        "huge allocation": ("x = bytearray(50 * 1024 ** 3)\n", ("memory",)),
        "list allocation": ("x = [0] * (10 ** 10)\n", ("memory",)),
        "delete canary": (f"import os\nos.remove({str(canary)!r})\n", ("blocked",)),
        "rmtree host folder": (f"import shutil\nshutil.rmtree({folder!r})\n", ("blocked",)),
        "write outside": (f"open({folder + '/evil.txt'!r}, 'w').write('x')\n", ("blocked",)),
        "write via os.open": (f"import os\nos.open({folder + '/evil2.txt'!r}, os.O_CREAT | os.O_WRONLY)\n",
                              ("blocked",)),
        "socket to host": (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
                           ("blocked",)),
        "socket caught": ("import socket\ntry:\n    socket.socket()\nexcept Exception:\n    pass\nprint('fine')\n",
                          ("blocked",)),
        "ctypes": ("import ctypes\nctypes.CDLL(None).fork()\n", ("blocked",)),
        "sys.exit(0) trick": ("import sys\nsys.exit(0)\n", ("early_exit",)),
        "os._exit(0) trick": ("import os\nos._exit(0)\n", ("early_exit",)),
        "huge output": ("while True:\n    print('x' * 100000)\n", ("output_limit",)),
        "kill parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", ("blocked",)),
    }


def test_hostile_programs_fail_with_a_reason_and_leave_the_host_alone(canary: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        for name, (program, statuses) in _hostile(canary, port).items():
            started = time.monotonic()
            result = run_python(program, limits=FAST)
            took = time.monotonic() - started
            assert result.status in statuses, (name, result.status, result.reason, result.stderr[-500:])
            assert not result.ok and result.reason, name
            assert took < FAST.wall_s + 2, (name, took)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()
    assert canary.read_text() == "alive"
    assert sorted(p.name for p in canary.parent.iterdir()) == ["canary.txt"]


def test_reasons_say_what_happened(canary: Path) -> None:
    blocked = run_python(f"import os\nos.remove({str(canary)!r})\n", limits=FAST)
    assert "os.remove" in blocked.reason and str(canary) in blocked.reason
    exited = run_python("import sys\nsys.exit(0)\n", limits=FAST)
    assert "sys.exit" in exited.reason
    slow = run_python("while True:\n    pass\n", limits=SandboxLimits(wall_s=1, cpu_s=5))
    assert slow.status == "timeout" and "1 s wall-time" in slow.reason


def test_cpu_limit() -> None:
    result = run_python("while True:\n    pass\n", limits=SandboxLimits(wall_s=10, cpu_s=1))
    assert result.status == "cpu_limit" and result.wall_s < 5


def test_good_program_runs_and_can_use_its_own_directory() -> None:
    program = ("import os, tempfile\n"
               "open('data.txt', 'w').write('kept')\n"
               "with tempfile.TemporaryDirectory() as d:\n"
               "    open(os.path.join(d, 'f'), 'w').write('1')\n"
               "print(open('in.txt').read(), os.getcwd())\n")
    result = run_python(program, limits=FAST, files={"in.txt": b"hello"}, collect=["data.txt", "absent.txt"])
    assert result.status == "ok", (result.reason, result.stderr)
    text, workdir = result.stdout.split()
    assert text == "hello"
    assert result.files == {"data.txt": b"kept"}
    assert not os.path.exists(workdir)  # the throwaway directory is gone


def test_failing_program_reports_the_exception() -> None:
    result = run_python("def f():\n    return 1\nassert f() == 2, 'f is wrong'\n", limits=FAST)
    assert result.status == "error" and result.reason == "raised AssertionError: f is wrong"
    syntax = run_python("def f(:\n", limits=FAST)
    assert syntax.status == "error" and "SyntaxError" in syntax.reason


def test_nothing_leaks_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FAILTRACE_TEST_SECRET", "hunter2")
    leaked = tmp_path / "leak.txt"
    fd = os.open(leaked, os.O_RDWR | os.O_CREAT)
    os.set_inheritable(fd, True)
    try:
        program = (f"import os\nprint(sorted(os.environ))\n"
                   f"try:\n    os.fstat({fd})\n    print('FD OPEN')\nexcept OSError:\n    print('fd closed')\n")
        result = run_python(program, limits=FAST)
    finally:
        os.close(fd)
    assert result.ok, result.reason
    assert "FAILTRACE_TEST_SECRET" not in result.stdout and "hunter2" not in result.stdout
    assert "fd closed" in result.stdout


def test_sandbox_reports_what_it_enforces() -> None:
    enforced = run_python("pass\n", limits=FAST).enforced
    assert any("audit hook" in e for e in enforced)
    assert any("rlimits" in e for e in enforced)


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count


needs_os_layers = pytest.mark.skipif(
    "--net" not in sandbox.plan().namespaces or (os.geteuid() == 0 and sandbox.plan().drop_to is None),
    reason="this machine gives the sandbox no namespaces or unprivileged user")


@needs_os_layers
def test_os_layers_hold_without_the_audit_hook(canary: Path) -> None:
    """With the in-interpreter guard off, the namespaces, user and limits alone still protect the host."""
    iso = sandbox.plan()
    bomb = ("import _posixsubprocess, os, time\nr, w = os.pipe()\n"
            "_posixsubprocess.fork_exec([b'/bin/sh', b'-c', b'f(){ f | f & }; f'], [b'/bin/sh'], True, (), None,"
            " [b'PATH=/usr/bin:/bin'], -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None,"
            " True)\ntime.sleep(1)\n")
    uid = iso.drop_to if iso.drop_to is not None else os.getuid()
    before = _processes_of(uid)
    result = sandbox._run(iso, bomb, SandboxLimits(wall_s=3, max_processes=16), {}, (), audit_hook=False)
    assert result.wall_s < 5
    assert "Cannot fork" in result.stderr  # RLIMIT_NPROC stopped the bomb
    assert _processes_of(uid) <= before  # and the PID namespace took every process it made
    if iso.drop_to is not None:
        remove = sandbox._run(iso, f"import os\nos.remove({str(canary)!r})\n", FAST, {}, (), audit_hook=False)
        assert remove.status == "error" and "PermissionError" in remove.reason
    net = sandbox._run(iso, "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n", FAST, {},
                       (), audit_hook=False)
    assert net.status == "error" and ("unreachable" in net.reason or "refused" in net.reason)
    assert canary.read_text() == "alive"
