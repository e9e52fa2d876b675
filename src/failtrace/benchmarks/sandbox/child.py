"""The untrusted side: the first code of the sandboxed interpreter, before the completion's own code.

Shipped as source (after ``plain.py``) into ``python -I -S -B -c`` inside the namespaces the runner set up, it
builds its new root, sets the resource limits, drops to the run's own user id (when the host runs as root) and every
capability, installs the seccomp filter and then either runs a whole program (``mode == "run"``) or loads the
candidate function and answers calls sent by the judge over a pipe (``mode == "serve"``). Nothing here decides a
verdict: the code that follows may rewrite any of it and can then only change what it answers, exactly as a function
can. Standard library only.
"""

try:  # inside the package for linters and tests; in the child these names come from plain.py's source before this
    from failtrace.benchmarks.sandbox.plain import NotPlain, decode, digest, encode, receive, send
except ImportError:
    pass

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, PR_SET_PDEATHSIG, SIGKILL = 38, 22, 2, 1, 9


def install_seccomp(program: bytes) -> None:
    """Load a classic-BPF seccomp filter (built by the parent) for this process; it can never be removed."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    class FilterProgram(ctypes.Structure):
        _fields_ = [("length", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = FilterProgram(len(program) // 8, ctypes.addressof(buffer))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, EINVAL, EPERM = 24, 47, 4, 22, 1
CAPABILITY_VERSION_3 = 0x20080522


def drop_capabilities(libc: object, switch_user: object) -> None:
    """Leave the process no capability, before the first line of untrusted code, and check that none is left.

    Root of a user namespace (failtrace not run as root) holds every capability over its own namespaces: with
    CAP_SYS_ADMIN it could clone a read-only bind of the host's Python without the read-only flag and write the
    host's files through it. So the bounding set is emptied (where the process may: a non-root process without a
    user namespace holds no CAP_SETPCAP, and no capability either), the ambient set cleared and no_new_privs set (no
    execve can give any back), then ``switch_user()`` runs (root mode: setuid, which needs CAP_SETUID, clears the
    rest), then effective, permitted and inheritable are set to zero with capset(2). Raises OSError when any
    capability is left."""
    import ctypes

    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err in (EINVAL, EPERM):  # past the kernel's last capability; no CAP_SETPCAP (checked below)
                break
            raise OSError(err, "prctl(PR_CAPBSET_DROP, %d) failed" % cap)
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on kernels before ambient sets: none
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    switch_user()

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    if libc.capset(ctypes.byref(Header(CAPABILITY_VERSION_3, 0)), (Data * 2)()) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    left = (Data * 2)()
    if libc.capget(ctypes.byref(Header(CAPABILITY_VERSION_3, 0)), left) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    if any(d.effective or d.permitted or d.inheritable for d in left):
        raise OSError("capabilities are left before the untrusted code")


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MNT_DETACH = 1, 2, 4, 32, 4096, 2
MS_NOEXEC, MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 8, 1024, 2048, 1 << 21
ST_NOSUID, ST_NODEV, ST_NOEXEC, ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 2, 4, 8, 1024, 2048, 4096  # statvfs f_flag
# what a read-only remount must keep: in a user namespace the host's flags on a copied mount are locked, and a
# remount that drops one (noexec on /dev, noatime, ...) fails with EPERM
_KEPT = ((ST_NOSUID, MS_NOSUID), (ST_NODEV, MS_NODEV), (ST_NOEXEC, MS_NOEXEC), (ST_NOATIME, MS_NOATIME),
         (ST_NODIRATIME, MS_NODIRATIME), (ST_RELATIME, MS_RELATIME))


def kept_flags(path: str) -> int:
    """The mount flags of ``path``'s mount that a remount of a bind of it must repeat (see _KEPT)."""
    import os

    have = os.statvfs(path).f_flag
    out = 0
    for st_flag, ms_flag in _KEPT:
        if have & st_flag:
            out |= ms_flag
    return out


def build_root(spec: dict) -> None:
    """Inside the new mount namespace: tmpfs root, read-only binds, device nodes, a size-capped /work holding the
    input files, root remounted read-only, then pivot_root into it (chroot where the call number is unknown).
    Raw mount(2) through ctypes: no helper binaries needed."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source, target, fstype, flags, data=None):
        enc = [None if v is None else os.fsencode(v) for v in (source, target, fstype, data)]
        if libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "mount %s on %s: %s" % (source, target, os.strerror(err)))

    root, safe = spec["dir"], MS_NOSUID | MS_NODEV
    mount("failtrace-root", root, "tmpfs", safe, "size=1m,mode=0755")
    for path in spec["binds"]:
        os.makedirs(root + path)
        mount(path, root + path, None, MS_BIND)
        mount(None, root + path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | safe | kept_flags(path))
    for path in spec.get("hide", ()):  # answer keys under a bind (policy.answer_keys): an empty folder instead
        if os.path.isdir(root + path):  # (a separate mount below a bind is not in the new root: nothing to hide)
            mount("failtrace-hidden", root + path, "tmpfs", MS_RDONLY | safe, "size=4k,mode=0555")
    for path, target in spec["links"].items():
        os.symlink(target, root + path)
    os.mkdir(root + "/dev")
    for name in spec["devices"]:
        open(root + "/dev/" + name, "w").close()
        mount("/dev/" + name, root + "/dev/" + name, None, MS_BIND)
        # read-only: the node's times and mode stay the host's (a device is still written through a read-only mount)
        mount(None, root + "/dev/" + name, None,
              MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | kept_flags("/dev/" + name))
    os.mkdir(root + "/work")
    mount("failtrace-work", root + "/work", "tmpfs", safe, spec["disk"])
    for name in os.listdir(spec["inputs"]):
        with open(os.path.join(spec["inputs"], name), "rb") as src, open(root + "/work/" + name, "wb") as dst:
            dst.write(src.read())
        if spec["owner"] is not None:
            os.chown(root + "/work/" + name, spec["owner"], spec["owner"])
    if spec["owner"] is not None:
        os.chown(root + "/work", spec["owner"], spec["owner"])
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | safe)
    os.chdir(root)
    number = spec["pivot_root"]
    if number is None:
        os.chroot(".")
        return
    # pivot_root(".", ".") stacks the old root on the new one; detaching it leaves no way back to the host tree,
    # unlike chroot, which a process with CAP_SYS_CHROOT (root of a user namespace) could escape
    if libc.syscall(number, b".", b".") != 0 or libc.umount2(b".", MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "pivot_root: " + os.strerror(err))
    os.chdir("/")


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, even one whose ``__str__`` misbehaves."""
    try:
        text = str(exc)
    except BaseException:
        text = "<unprintable>"
    return "%s: %s" % (type(exc).__name__, text[:500]) if text else type(exc).__name__


def confine(cfg: dict) -> None:
    """New root, limits, user, no capabilities, seccomp: everything that must hold before the first line of untrusted
    code."""
    import os
    import resource

    import sys

    lim = cfg["limits"]
    if cfg["root"]:
        build_root(cfg["root"])
    for name, value in (("RLIMIT_CORE", 0), ("RLIMIT_CPU", lim["cpu_s"]), ("RLIMIT_AS", lim["memory_mb"] << 20),
                        ("RLIMIT_FSIZE", lim["max_output_bytes"]), ("RLIMIT_NOFILE", lim["max_open_files"]),
                        ("RLIMIT_NPROC", cfg["nproc"]), ("RLIMIT_SIGPENDING", lim["max_pending_signals"])):
        if hasattr(resource, name):  # RLIMIT_SIGPENDING is Linux's own
            resource.setrlimit(getattr(resource, name), (value, value))
    os.chdir(cfg["workdir"])
    import ctypes  # (loaded while the interpreter's files are still readable to us)

    def switch_user():
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])

    if sys.platform.startswith("linux"):
        drop_capabilities(ctypes.CDLL(None, use_errno=True), switch_user)
    else:
        switch_user()
    # die with the launcher: the switch of user cleared the parent-death signal (unshare --kill-child's, or
    # setpriv's); the seccomp filter then forbids clearing it again
    if sys.platform.startswith("linux") and ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_PDEATHSIG) failed")
    os.umask(0o077)
    if cfg["seccomp"]:
        install_seccomp(bytes.fromhex(cfg["seccomp"]))


def serve(code: str, cfg: dict) -> None:
    """Load the candidate's module, say ready, then answer each call with its plain-data result."""
    import builtins
    import json
    import os

    stream, out = os.fdopen(cfg["fds"][0], "rb"), cfg["fds"][1]
    module = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec(code, module)
        function = module.get(cfg["entry"])
        if not callable(function):
            raise NameError("the code defines no function %r" % cfg["entry"])
    except BaseException as exc:
        send(out, {"load_error": describe(exc)})
        os._exit(3)
    send(out, {"ready": True})
    while True:
        request = receive(stream, cfg["max_message"])
        if request is None:
            os._exit(0)
        try:
            value = function(*decode(request["args"]), **decode(request["kwargs"]))
            reply = {"value": encode(value)}
            over = request.get("digest_over")  # answer very large values with their digest only
            if over is not None and (over == 0 or len(json.dumps(reply["value"], separators=(",", ":"))) > over):
                reply = {"digest": digest(value)}
        except NotPlain as exc:
            reply = {"not_plain": str(exc)}
        except BaseException as exc:
            reply = {"raised": type(exc).__name__, "message": describe(exc)}
        send(out, reply)


def child_main() -> None:
    """Entry point of the sandboxed interpreter: read the config line, confine, then run or serve."""
    import json
    import sys

    cfg = json.loads(sys.stdin.readline())
    confine(cfg)
    sys.set_int_max_str_digits(0)
    with open(cfg["program"], encoding="utf-8") as fh:
        source = fh.read()
    if cfg["mode"] == "serve":
        try:
            code = compile(source, cfg["program"], "exec")
        except BaseException as exc:
            send(cfg["fds"][1], {"load_error": describe(exc)})
            raise SystemExit(3) from None
        serve(code, cfg)
    sys.argv = [cfg["program"]]
    exec(compile(source, cfg["program"], "exec"), {"__name__": "__main__", "__file__": cfg["program"]})
