"""Run untrusted Python (model-written code) in a throwaway, locked-down child process.

What is enforced (``SandboxResult.enforced`` lists what this machine actually gave us):

* a separate process: ``sys.executable -I -S -B`` (isolated mode, no site-packages, no bytecode writes), a clean
  minimal environment (nothing inherited), no inherited file descriptors, its own session/process group, which is
  SIGKILLed as a whole when the run ends or the wall-time limit passes;
* where ``unshare`` works (root, or unprivileged user namespaces): a new network namespace (no network at all) and a
  new PID namespace, so every process the code starts dies with it, even ones that left the process group;
* when failtrace runs as root: the code runs as user ``nobody`` (65534), so it cannot touch root's files and
  RLIMIT_NPROC really bounds its processes (root ignores RLIMIT_NPROC). If the interpreter lives under a folder
  ``nobody`` cannot enter (e.g. pyenv under /root), a private mount namespace covers that folder with an empty
  tmpfs and binds back only the interpreter's prefix, which also hides the rest of it from the code;
* resource limits set in the child before any untrusted code runs: address space (memory), CPU seconds, file size
  (which also caps stdout/stderr, written to files), open files, processes, no core dumps;
* inside the interpreter, an audit hook (PEP 578) refuses sockets, process creation (fork, exec, subprocess,
  spawn), signals to other processes, ctypes, raising limits, and any write, delete, rename or chmod outside the
  throwaway working directory. Any refused action fails the run even if the code catches the error;
* a run only counts as finished when the runner prints a random per-run token after the program returned, so
  ``sys.exit(0)`` or ``os._exit(0)`` from the code cannot fake success.

The audit hook is defence in depth (native code could get around it); the OS layers above are what protect the
host. The limits are set by the child itself (first thing, before reading the code) rather than in
``preexec_fn``, which the ``subprocess`` docs warn can deadlock in a threaded parent such as a running model.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SandboxStatus = Literal["ok", "error", "timeout", "memory", "cpu_limit", "output_limit", "early_exit", "blocked",
                        "crashed"]
NOBODY = 65534
_MARKER = "failtrace-sandbox-finished:"
_BLOCK_NOTE = "failtrace-sandbox: blocked "
_REPORT_BYTES = 64 * 1024  # how much of stdout/stderr a result keeps


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one run. ``max_output_bytes`` caps every file the code writes, stdout and stderr included."""

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    max_processes: int = 16
    max_output_bytes: int = 2_000_000
    max_open_files: int = 64


@dataclass
class SandboxResult:
    """How a run ended. ``status == "ok"`` means the program ran to its end without raising."""

    status: SandboxStatus
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    files: dict[str, bytes] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    enforced: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# The child's first code. It runs as a -c string so no file of ours sits in the sandbox's directory. Everything is
# inside _main so the finish token is a local, not a global the program could read.
_RUNNER = r'''
def _main():
    import builtins, json, os, resource, sys, types
    cfg = json.loads(sys.stdin.readline())
    token = cfg.pop("token")
    lim = cfg["limits"]

    def setlim(which, soft, hard=None):
        resource.setrlimit(which, (soft, soft if hard is None else hard))

    setlim(resource.RLIMIT_CORE, 0)
    setlim(resource.RLIMIT_CPU, lim["cpu_s"], lim["cpu_s"] + 1)
    setlim(resource.RLIMIT_AS, lim["memory_mb"] * 1024 * 1024)
    setlim(resource.RLIMIT_FSIZE, lim["max_output_bytes"])
    setlim(resource.RLIMIT_NOFILE, lim["max_open_files"])
    setlim(resource.RLIMIT_NPROC, cfg["nproc"])
    import signal

    def out_of_cpu(signum, frame):  # the soft CPU limit: say so and stop (the hard limit a second later is SIGKILL)
        os.write(2, b"failtrace-sandbox: CPU-time limit reached\n")
        os._exit(7)

    signal.signal(signal.SIGXCPU, out_of_cpu)
    if cfg["drop_to"] is not None:
        os.setgroups([])
        os.setgid(cfg["drop_to"])
        os.setuid(cfg["drop_to"])
    os.umask(0o077)
    workdir = os.path.realpath(cfg["workdir"])
    program_path = os.path.join(workdir, cfg["program"])
    with open(program_path, encoding="utf-8") as fh:
        source = fh.read()
    code = compile(source, program_path, "exec")

    class SandboxViolation(PermissionError):
        pass

    blocked = []
    forbidden = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.kill",
                 "os.killpg", "signal.pthread_kill", "subprocess.Popen", "pty.spawn", "socket.__new__",
                 "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                 "socket.gethostbyname", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function",
                 "ctypes.cdata", "resource.setrlimit", "resource.prlimit", "os.setuid", "sys.remote_exec"}
    # native process creation and foreign calls have no audit events of their own: refuse the modules
    forbidden_imports = {"_posixsubprocess", "_ctypes"}
    # event -> (index of a path it changes, index of that path's dir_fd argument or None)
    writes = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.rename": ((0, 2), (1, 3)),
              "os.link": ((1, 3),), "os.symlink": ((1, 2),), "os.mkdir": ((0, 2),), "os.chmod": ((0, 2),),
              "os.chown": ((0, 3),), "os.chflags": ((0, None),), "os.lchflags": ((0, None),),
              "os.truncate": ((0, None),), "os.utime": ((0, 3),), "os.setxattr": ((0, None),),
              "os.removexattr": ((0, None),), "shutil.rmtree": ((0, 1),), "shutil.copyfile": ((1, None),),
              "shutil.copytree": ((1, None),), "shutil.move": ((0, None), (1, None)), "shutil.chown": ((0, None),)}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    allowed_files = {"/dev/null"}
    state = {"busy": False}

    def resolve(path, dir_fd=None):
        if isinstance(path, int):  # an open descriptor: where does it point?
            return os.path.realpath(os.readlink("/proc/self/fd/%d" % path))
        path = os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
            path = os.path.join(os.readlink("/proc/self/fd/%d" % dir_fd), path)
        return os.path.realpath(path)

    def inside(path, dir_fd=None):
        try:
            real = resolve(path, dir_fd)
        except (OSError, TypeError, ValueError):
            return False
        return real in allowed_files or real == workdir or real.startswith(workdir + os.sep)

    def refuse(what):
        blocked.append(what)
        os.write(2, (cfg["note"] + what + "\n").encode("utf-8", "replace"))
        raise SandboxViolation("sandbox: " + what + " is not allowed")

    def hook(event, args):
        if state["busy"]:
            return
        state["busy"] = True
        try:
            if event in forbidden:
                refuse(event)
            elif event == "import" and args[0] in forbidden_imports:
                refuse("import " + args[0])
            elif event == "open":
                path, mode, flags = args
                if isinstance(path, int):
                    return  # wrapping a descriptor that is already open
                wants_write = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & write_flags)
                if wants_write and not inside(path):
                    refuse("writing " + repr(path))
                # os.open of a directory outside would give a dir_fd for writes the hook cannot see
                if mode is None and not inside(path) and os.path.isdir(path):
                    refuse("opening directory " + repr(path))
            elif event in writes:
                for pi, di in writes[event]:
                    if pi < len(args) and not inside(args[pi], args[di] if di is not None and di < len(args)
                                                     else None):
                        refuse(event + " on " + repr(args[pi]))
        finally:
            state["busy"] = False

    module = types.ModuleType("__main__")
    module.__file__ = program_path
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    sys.argv = [program_path]
    if cfg["audit"]:
        sys.addaudithook(hook)
    status = 0
    try:
        exec(code, module.__dict__)
    except SystemExit as exc:
        os.write(2, ("failtrace-sandbox: SystemExit(" + repr(exc.code) + ") before the program finished\n").encode())
        status = 3
    except MemoryError:
        os.write(2, b"MemoryError\n")
        status = 4
    except SandboxViolation:
        status = 5
    except OSError as exc:
        import errno, traceback
        traceback.print_exc()
        status = 6 if exc.errno == errno.EFBIG else 1
    except BaseException:
        import traceback
        traceback.print_exc()
        status = 1
    if blocked:
        status = 5
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        if status == 0:
            os.write(1, ("\n" + cfg["marker"] + token + "\n").encode())
    except OSError as exc:
        status = 6 if getattr(exc, "errno", None) == 27 else 1
    os._exit(status)


_main()
'''


@dataclass(frozen=True)
class _Plan:
    """How a run is isolated: namespaces, whether to hide unreadable parents of the interpreter, whom to run as."""

    namespaces: tuple[str, ...] = ()
    hide_dirs: tuple[tuple[str, str], ...] = ()  # (hidden ancestor to cover with a tmpfs, path to keep visible)
    drop_to: int | None = None
    user_namespace: bool = False

    def enforced(self) -> list[str]:
        done = ["separate process (-I -S -B)", "clean environment", "no inherited fds",
                "new session, killed as a group",
                "rlimits: memory, cpu, file size/output, open files, processes, no core", "throwaway directory",
                "audit hook: no sockets/processes/ctypes, no writes outside its directory", "finish token"]
        if "--net" in self.namespaces:
            done.append("network namespace (no network)")
        else:
            done.append("NO network namespace: network refused by the audit hook only")
        if "--pid" in self.namespaces:
            done.append("pid namespace")
        if self.hide_dirs:
            done.append("mount namespace hiding " + ", ".join(sorted({h for h, _ in self.hide_dirs})))
        done.append("runs as user nobody" if self.drop_to is not None else
                    "runs as the calling user" + (" (root: RLIMIT_NPROC not enforced)" if os.geteuid() == 0 else ""))
        return done


def _needed_paths() -> list[str]:
    """Folders the sandboxed interpreter must read: its prefix (stdlib) and the venv."""
    paths = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix),
                    os.path.dirname(os.path.realpath(sys.executable))})
    return [p for p in paths if not any(p.startswith(q + os.sep) for q in paths if q != p)]


def _hidden_ancestor(path: str) -> str | None:
    """The outermost folder on ``path`` that other users cannot enter (e.g. /root), or None."""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        try:
            if not os.stat(current).st_mode & 0o001:
                return current
        except OSError:
            return None
    return None


def _command(plan: _Plan, host_dir: str) -> list[str]:
    """The launcher in front of ``python``: unshare, and for hidden folders a shell step that (inside the new mount
    namespace only) covers each hidden folder with a tmpfs and binds back just the interpreter's folders."""
    if not plan.namespaces:
        return []
    unshare = shutil.which("unshare") or "unshare"
    cmd = [unshare, *plan.namespaces]
    if not plan.hide_dirs:
        return cmd
    steps = ["set -e"]
    for i, (_, keep) in enumerate(plan.hide_dirs):
        spare = os.path.join(host_dir, f"keep{i}")
        os.mkdir(spare, 0o700)
        steps.append(f"mount --bind {shlex.quote(keep)} {shlex.quote(spare)}")
    for hidden in dict.fromkeys(h for h, _ in plan.hide_dirs):
        steps.append(f"mount -t tmpfs -o mode=0755,size=64k failtrace-hide {shlex.quote(hidden)}")
    for i, (_, keep) in enumerate(plan.hide_dirs):
        spare = os.path.join(host_dir, f"keep{i}")
        steps += [f"mkdir -p {shlex.quote(keep)}", f"mount --bind {shlex.quote(spare)} {shlex.quote(keep)}"]
    steps.append('exec "$@"')
    return [*cmd, "/bin/sh", "-c", "; ".join(steps), "sandbox-launch"]


def _candidate_plans() -> list[_Plan]:
    """Strongest first; :func:`plan` keeps the first that runs a trivial program correctly."""
    if not shutil.which("unshare"):
        return [_Plan()]
    ns = ("--net", "--pid", "--fork", "--kill-child")
    if os.geteuid() != 0:
        return [_Plan(namespaces=("--map-root-user", *ns), user_namespace=True), _Plan()]
    hides = tuple((h, p) for p in _needed_paths() if (h := _hidden_ancestor(p)) is not None)
    plans = []
    if hides:
        plans.append(_Plan(namespaces=(*ns, "--mount"), hide_dirs=hides, drop_to=NOBODY))
    else:
        plans.append(_Plan(namespaces=ns, drop_to=NOBODY))
    plans += [_Plan(namespaces=ns), _Plan(drop_to=None if hides else NOBODY), _Plan()]
    return plans


@functools.lru_cache(maxsize=1)
def plan() -> _Plan:
    """The isolation this machine supports, probed once per process."""
    for candidate in _candidate_plans():
        result = _run(candidate, "import json, math\nprint(json.dumps(math.sqrt(4)))\n", SandboxLimits(wall_s=20),
                      {}, ())
        if result.ok and result.stdout.strip() == "2.0":
            return candidate
    return _Plan()


def _user_task_count() -> int:
    """Tasks (processes and threads) of this user: RLIMIT_NPROC counts them all, so an unprivileged limit must sit
    above this number."""
    uid = os.getuid()
    count = 0
    if not os.path.isdir("/proc"):
        return 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
    return count


def _read_head(path: str, limit: int) -> tuple[str, bool]:
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    return data[:limit].decode("utf-8", "replace"), len(data) > limit


def _read_tail(path: str, size: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        fh.seek(max(0, end - size))
        return fh.read().decode("utf-8", "replace")


def _collect_files(workdir: str, names: Sequence[str], limit: int) -> dict[str, bytes]:
    """Regular files the program left behind, read without following symlinks, each capped at ``limit`` bytes."""
    found: dict[str, bytes] = {}
    for name in names:
        if os.path.basename(name) != name:
            raise ValueError(f"collect names must be plain file names, got {name!r}")
        try:
            fd = os.open(os.path.join(workdir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as fh:
            if os.fstat(fd).st_mode & 0o170000 == 0o100000:  # S_IFREG
                found[name] = fh.read(limit)
    return found


def _remove_tree(path: str) -> None:
    """Delete the run's directory even if the code chmod-ed parts of it away."""
    def fix(func: Any, p: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=fix)
    else:
        shutil.rmtree(path, onerror=fix)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _wait(proc: subprocess.Popen[bytes], wall_s: float) -> tuple[int | None, float, bool]:
    """Wait up to ``wall_s`` for the child, then SIGKILL its whole group; returns (exit code, CPU seconds used by
    it and its reaped descendants, timed out?). Uses wait4 for the CPU time, which Popen.wait does not report."""
    deadline = time.monotonic() + wall_s
    timed_out = False
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(proc.pid)  # Linux >= 5.3: sleep until exit instead of polling
    try:
        delay = 0.001
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                _kill_group(proc.pid)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(delay, left))
                delay = min(delay * 2, 0.05)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    _kill_group(proc.pid)  # leftovers in the group die now; the PID namespace takes any that left it
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (None if timed_out else proc.returncode), usage.ru_utime + usage.ru_stime, timed_out


def _classify(rc: int | None, timed_out: bool, finished: bool, blocked: list[str], stderr: str,
              limits: SandboxLimits, cpu_used: float = 0.0) -> tuple[SandboxStatus, str]:
    if timed_out:
        return "timeout", f"did not finish within the {limits.wall_s:g} s wall-time limit and was killed"
    if blocked:
        return "blocked", "tried a forbidden action: " + "; ".join(dict.fromkeys(blocked))
    if rc == 0 and finished:
        return "ok", "finished"
    if rc == 4 or "MemoryError" in stderr[-2000:]:
        return "memory", f"ran out of memory (limit {limits.memory_mb} MiB)"
    if rc == 6 or "File too large" in stderr[-2000:]:
        return "output_limit", f"wrote more than the {limits.max_output_bytes} byte output limit"
    if rc == 3:
        return "early_exit", "called sys.exit() before the program finished"
    if rc == 0:
        return "early_exit", "exited with status 0 before the program finished (os._exit or similar)"
    if rc == 7 or (rc not in (0, 1) and cpu_used >= limits.cpu_s):
        return "cpu_limit", f"used up its CPU-time limit of {limits.cpu_s} s"
    if rc == 1:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip() and not ln.startswith(_BLOCK_NOTE)]
        return "error", "raised " + (lines[-1].strip() if lines else "an error")
    if rc in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return "crashed", "killed by SIGKILL (out of memory?)"
    return "crashed", f"exited with status {rc}"


def run_python(program: str, *, limits: SandboxLimits | None = None, files: Mapping[str, bytes] | None = None,
               collect: Sequence[str] = ()) -> SandboxResult:
    """Run ``program`` (Python source) in the sandbox; ``files`` are placed in its directory beforehand and the
    plain files named in ``collect`` are read back afterwards. Never raises for anything the program does."""
    return _run(plan(), program, limits or SandboxLimits(), files or {}, collect)


def _run(iso: _Plan, program: str, limits: SandboxLimits, files: Mapping[str, bytes],
         collect: Sequence[str], *, audit_hook: bool = True) -> SandboxResult:
    """One run under ``iso``. ``audit_hook=False`` exists only so tests can show the OS layers hold on their own."""
    host_dir = tempfile.mkdtemp(prefix="failtrace-sandbox-")
    workdir = os.path.join(host_dir, "work")
    started = time.monotonic()
    try:
        os.chmod(host_dir, 0o711)  # the sandbox user may pass through to work/, but not list or read the rest
        os.mkdir(workdir, 0o700)
        for name, data in {"program.py": program.encode("utf-8"), **dict(files)}.items():
            if os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"sandbox file names must be plain names, got {name!r}")
            with open(os.path.join(workdir, name), "wb") as fh:
                fh.write(data)
            if iso.drop_to is not None:
                os.chown(os.path.join(workdir, name), iso.drop_to, iso.drop_to)
        if iso.drop_to is not None:
            os.chown(workdir, iso.drop_to, iso.drop_to)
        out_path, err_path = os.path.join(host_dir, "stdout"), os.path.join(host_dir, "stderr")
        token = secrets.token_hex(16)
        nproc = limits.max_processes if iso.drop_to is not None else _user_task_count() + limits.max_processes
        cfg = {"token": token, "limits": asdict(limits), "nproc": nproc, "drop_to": iso.drop_to,
               "workdir": workdir, "program": "program.py", "marker": _MARKER, "note": _BLOCK_NOTE, "audit": audit_hook}
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir,
               "TMPDIR": workdir}
        cmd = [*_command(iso, host_dir), sys.executable, "-I", "-S", "-B", "-c", _RUNNER]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=workdir, env=env,
                                    close_fds=True, start_new_session=True)
        assert proc.stdin is not None
        with contextlib.suppress(OSError):  # a child that died at once has closed the pipe
            proc.stdin.write(json.dumps(cfg).encode() + b"\n")
        with contextlib.suppress(OSError):
            proc.stdin.close()
        rc, cpu_used, timed_out = _wait(proc, limits.wall_s)
        wall = time.monotonic() - started
        stdout, _ = _read_head(out_path, _REPORT_BYTES)
        stderr, _ = _read_head(err_path, _REPORT_BYTES)
        stderr_tail = _read_tail(err_path, 4096)
        finished = _read_tail(out_path, len(_MARKER) + 64).endswith(f"{_MARKER}{token}\n")
        if finished:
            stdout = stdout.replace(f"\n{_MARKER}{token}\n", "")
        blocked = [ln[len(_BLOCK_NOTE):] for ln in stderr.splitlines() if ln.startswith(_BLOCK_NOTE)]
        status, reason = _classify(rc, timed_out, finished, blocked, stderr_tail, limits, cpu_used)
        collected = _collect_files(workdir, collect, limits.max_output_bytes)
        return SandboxResult(status=status, reason=reason, returncode=rc, stdout=stdout, stderr=stderr,
                             wall_s=wall, files=collected, blocked=blocked, enforced=iso.enforced())
    finally:
        _remove_tree(host_dir)
