"""The trusted side: runs the benchmark's test code in its own fresh interpreter, never the completion's code.

``candidate`` in the test code is a proxy: each call sends its arguments (plain data) to the sandboxed child, which
calls the real function and sends back the result as plain data. Comparisons, ``assert``, ``abs`` and every other
builtin the tests use therefore run here, on values rebuilt from JSON, in an interpreter the completion never
touched. The verdict goes to the parent on a pipe only this process holds. Shipped as source after ``plain.py``
into ``python -I -S -B -c``; standard library only.
"""

try:  # inside the package for linters and tests; in the judge these names come from plain.py's source before this
    from failtrace.benchmarks.sandbox.plain import NotPlain, decode, encode, receive, send
except ImportError:
    pass


PR_SET_DUMPABLE = 4


class CandidateGone(Exception):
    """The candidate process stopped answering (it exited, crashed or was killed)."""


class CandidateError(Exception):
    """The candidate raised an exception that is not a builtin one, or returned something that is not plain data."""


class Digest:
    """What a call with ``digest_over`` returns for a value too large to send: the SHA-256 of its canonical form."""

    def __init__(self, hexdigest):
        self.hex = hexdigest

    def __repr__(self):
        return "<large output, sha256 %s>" % self.hex[:12]


class HarnessError(Exception):
    """The test code passed the candidate something this harness cannot send (not plain data)."""


def make_proxy(to_child: int, stream: object, limit: int, counter: list) -> tuple:
    """``call(args, kwargs, digest_over)`` and a ``candidate(*args, **kwargs)`` wrapper around it."""
    import builtins

    def call(args, kwargs=None, digest_over=None):
        """One call of the candidate; with ``digest_over`` (bytes), larger answers come back as a Digest."""
        try:
            request = {"args": encode(list(args)), "kwargs": encode(dict(kwargs or {})), "digest_over": digest_over}
        except NotPlain as exc:
            raise HarnessError("cannot send the arguments to the candidate: %s" % exc) from None
        counter[0] += 1
        try:
            send(to_child, request)
            reply = receive(stream, limit)
        except (OSError, ValueError, RecursionError) as exc:
            raise CandidateError("call %d: unreadable answer (%s)" % (counter[0], exc)) from None
        if reply is None:
            raise CandidateGone("the candidate process ended during call %d" % counter[0])
        if "value" in reply:
            try:
                return decode(reply["value"])
            except (ValueError, TypeError, RecursionError) as exc:
                raise CandidateError("call %d: unreadable answer (%s)" % (counter[0], exc)) from None
        if digest_over is not None and type(reply.get("digest")) is str:
            return Digest(reply["digest"])
        if "not_plain" in reply:
            raise CandidateError("call %d returned something that is not plain data: %.200s"
                                 % (counter[0], reply["not_plain"]))
        name, message = str(reply.get("raised")), str(reply.get("message", ""))[:500]
        kind = builtins.__dict__.get(name)
        if isinstance(kind, type) and issubclass(kind, Exception) and not issubclass(kind, AssertionError):
            try:
                error = kind("the candidate raised " + message)
            except Exception:  # a builtin that wants other arguments (UnicodeDecodeError, ...)
                error = None
            if error is not None:
                raise error
        raise CandidateError("call %d: the candidate raised %s" % (counter[0], message or name))

    def candidate(*args, **kwargs):
        return call(args, kwargs)

    return call, candidate


def failure_reason(exc: BaseException, source: str, lineno: int | None = None) -> str:
    """A one-line reason for an exception raised while the tests ran, naming the failing test line (``lineno``: an
    assertion that failed softly, with no traceback of its own)."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<tests>"]
    where = ""
    number = (frames[-1].lineno or 0) if frames else (lineno or 0)
    if number:
        lines = source.splitlines()
        text = lines[number - 1].strip() if 0 < number <= len(lines) else ""
        where = " at test line %d: %s" % (number, text[:200])
    detail = str(exc)[:300]
    return "%s%s%s" % (type(exc).__name__, (": " + detail) if detail else "", where)


def soften_asserts(source: str) -> object:
    """The test code compiled with every ``assert`` made soft: a failing one (or one whose expression raises) is
    recorded by ``__ft_failed__(lineno, message, exception)`` and the tests go on. So the candidate is called with
    the same inputs in the same order whether its answers are right or wrong, and cannot learn from which calls
    come (a red-team's candidate learned each answer that way across checks, through the host's page cache). The
    verdict is the first failure, as before. ``__ft_passthrough__`` (the candidate's process is gone, a harness
    error) still ends the tests. An assert inside a ``try`` whose handler catches ``AssertionError`` (or
    ``Exception``, ``BaseException``, a bare ``except``) is left alone: the test code handles it itself. Line numbers
    are the source's own."""
    import ast

    catching = {"AssertionError", "Exception", "BaseException"}

    def catches_assert(handler):  # `except:`, or a type (or tuple of types) an AssertionError is an instance of
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        return handler.type is None or any(isinstance(k, ast.Name) and k.id in catching for k in kinds)

    class Soften(ast.NodeTransformer):
        guarded = 0  # inside the body of a try that catches AssertionError: its asserts mean what they say there

        def visit_Try(self, node):
            if not any(catches_assert(h) for h in node.handlers):
                return self.generic_visit(node)
            self.guarded += 1
            node.body = [self.visit(n) for n in node.body]
            self.guarded -= 1
            for name in ("handlers", "orelse", "finalbody"):
                setattr(node, name, [self.visit(n) for n in getattr(node, name)])
            return node

        def visit_Assert(self, node):
            if self.guarded:  # the test catches it itself (``except AssertionError: ...``): left as it is
                return node
            def call(message, error):
                return ast.Expr(ast.Call(ast.Name("__ft_failed__", ast.Load()),
                                         [ast.Constant(node.lineno), message, error], []))

            check = ast.If(ast.UnaryOp(ast.Not(), node.test),
                           [call(node.msg or ast.Constant(None), ast.Constant(None))], [])
            guarded = ast.Try(
                body=[check],
                handlers=[ast.ExceptHandler(ast.Name("__ft_passthrough__", ast.Load()), None, [ast.Raise()]),
                          ast.ExceptHandler(ast.Name("BaseException", ast.Load()), "__ft_error",
                                            [call(ast.Constant(None), ast.Name("__ft_error", ast.Load()))])],
                orelse=[], finalbody=[])
            return ast.fix_missing_locations(ast.copy_location(guarded, node))

    tree = Soften().visit(ast.parse(source, "<tests>"))
    return compile(ast.fix_missing_locations(tree), "<tests>", "exec")


def judge_main() -> None:
    """Read the config line, wait for the candidate to load, run the tests, report one line on the result pipe."""
    import json
    import os
    import resource
    import signal
    import sys
    import traceback  # here, not at the first failure: its import delay told a candidate its answer was wrong

    cfg = json.loads(sys.stdin.readline())
    try:  # not dumpable: a same-user process (degraded mode) cannot open our /proc files (fds, memory)
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        pass
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_mb"] << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.set_int_max_str_digits(0)
    stream, result = os.fdopen(cfg["from_child"], "rb"), cfg["result_fd"]
    counter = [0]
    reserve = [bytearray(8 << 20)]  # given back to report after the tests ran out of memory (huge answers kept)

    def report(verdict, reason="", value=None):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # the alarm's report would be a second line
        send(result, {"verdict": verdict, "reason": reason, "calls": counter[0], "value": value})
        os._exit(0)

    try:  # before the candidate's first word: test code that does not compile (a benchmark item whose own prompt
        # is not Python) has no verdict on any answer; the candidate, built on that prompt, would fail to load
        tests = soften_asserts(cfg["source"])
    except (SyntaxError, ValueError) as exc:
        report("error", "the test code does not compile: %s" % failure_reason(exc, cfg["source"],
                                                                             getattr(exc, "lineno", None)))
    try:
        hello = receive(stream, cfg["max_message"])
    except (ValueError, RecursionError) as exc:
        hello = {"load_error": "unreadable first message (%s)" % exc}
    if hello is None or "ready" not in hello:
        report("fail", "the candidate did not load: %.500s" % (
            "its process ended first" if hello is None else hello.get("load_error", "no ready message")))
    call, candidate = make_proxy(cfg["to_child"], stream, cfg["max_message"], counter)
    failed = []  # (calls made before it, exception, line) of the first soft assertion that failed: the verdict's
    # reason, worded only when the tests end, so a wrong answer costs the next call no more time than a right one

    def ft_failed(lineno, message, error):
        if not failed:  # only the first is the verdict's reason
            if error is None:
                error = AssertionError() if message is None else AssertionError(message)
            failed.append((counter[0], error, lineno))

    def fail_with(calls, error, lineno=None):  # before any call the tests themselves are broken (a NameError, an
        # empty file): the candidate, in another process, cannot cause that, so there is no verdict on the answer
        reserve.clear()  # memory to word the reason in: the tests may have kept huge answers (their frames' locals
        traceback.clear_frames(error.__traceback__)  # go too; the line numbers stay)
        try:
            reason = failure_reason(error, cfg["source"], lineno)
        except MemoryError:
            reason = "%s (out of memory while wording its reason)" % type(error).__name__
        early = calls == 0
        report("error" if early else "fail", ("the tests raised before calling the candidate: " if early else "")
               + reason)

    def out_of_time(_signum, _frame):  # just before the parent's wall clock, the same moment whether or not a
        # failure was seen (the pipe closing earlier only after a wrong answer told a waiting candidate so)
        if failed:
            fail_with(*failed[0])
        report("fail", "the tests did not finish within the %g s wall-time limit (stopped by the judge after %d "
               "calls)" % (float(cfg["wall_s"]), counter[0]))

    if cfg.get("wall_s"):
        signal.signal(signal.SIGALRM, out_of_time)
        signal.setitimer(signal.ITIMER_REAL, max(0.2, float(cfg["wall_s"]) - 1.0))
    scope = {"__name__": "__tests__", "candidate": candidate, "candidate_call": call, "Digest": Digest,
             "DATA": decode(cfg["data"]), "__ft_failed__": ft_failed,
             "CandidateGone": CandidateGone, "__ft_passthrough__": (CandidateGone, HarnessError)}
    try:
        exec(tests, scope)
    except HarnessError as exc:
        if failed:  # an assertion failed before the harness could not go on: the answer's verdict stands
            fail_with(*failed[0])
        report("error", str(exc))
    except CandidateGone as exc:
        if failed:  # an earlier assertion failed first: its reason is the verdict's
            fail_with(*failed[0])
        report("fail", str(exc))
    except BaseException as exc:  # anything else the test code raised (a MemoryError too: fail_with frees memory)
        fail_with(*(failed[0] if failed else (counter[0], exc)))
    if failed:
        fail_with(*failed[0])
    if counter[0] == 0:
        report("error", "the tests never called the candidate")
    try:
        value = encode(scope.get("RESULT"))
    except NotPlain as exc:
        report("error", "the test code's RESULT is not plain data: %s" % exc)
    report("pass", "", value)
