"""The ``failtrace`` command. Each sub-module registers its commands on :data:`app` through ``register(app)``.

The error contract (docs/ERRORS.md): whatever goes wrong, stderr gets exactly one ``error: ...`` line and the exit
code is non-zero; a traceback is never printed. Bad input (:class:`failtrace.errors.FailtraceError`, a bad command
line) exits with 2; an unexpected exception exits with 70 and its traceback goes to a log file named in the line.
"""

from __future__ import annotations

import errno
import inspect
import os
import signal
import sys
import threading
import warnings
from importlib import import_module
from typing import Any

import typer

from failtrace.errors import (EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, FailtraceError, is_disk_full,
                             one_line)

app = typer.Typer(
    name="failtrace",
    help="Explain why a language model got a benchmark item wrong (contrastive AttnLRP attribution).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from failtrace import __version__

        typer.echo(f"failtrace {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                       help="Print failtrace's version and exit.")) -> None:
    """Explain why a language model got a benchmark item wrong (contrastive AttnLRP attribution)."""

def _flags_without_type() -> None:
    """typer 0.29's help prints ``<bool>`` beside every flag (``--review <bool>``), which reads as if the flag took a
    value (``serve --review true`` then fails): show no type for options that take none. Older typer has no such
    method and prints none."""
    core = getattr(typer, "core", None)
    option = getattr(core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "_failtrace", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) and self.metavar is None else shown(self, ctx)

    display_type_rich._failtrace = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_flags_without_type()

# Command modules, each with a ``register(app)`` function. Add a module here to add its commands.
_COMMAND_MODULES = (
    "failtrace.cli.attribute",
    "failtrace.cli.pipeline",
    "failtrace.cli.status",
    "failtrace.cli.export",
    "failtrace.cli.show",
    "failtrace.cli.graph",
    "failtrace.cli.analyse",
    "failtrace.cli.report",
    "failtrace.cli.serve",
    "failtrace.cli.models",
    "failtrace.cli.compare",
    "failtrace.cli.finetune",
)

for _name in _COMMAND_MODULES:
    import_module(_name).register(app)

# ``failtrace --help`` lists the commands by what they are for, in the order of the flow (collect -> pairs -> analyse
# -> report/serve), not in the order their modules register them.
HELP_PANELS: dict[str, tuple[str, ...]] = {
    "Start here": ("demo",),
    "The pipeline, in order": ("collect", "pairs", "analyse", "report", "serve"),
    "Look at a store": ("status", "show", "export", "override"),
    "One prompt, no store": ("attribute", "graph"),
    "Across models and training": ("models", "compare", "finetune", "export-dpo"),
}
_RANK = {name: i for i, name in enumerate(n for names in HELP_PANELS.values() for n in names)}
_PANEL = {name: panel for panel, names in HELP_PANELS.items() for name in names}
app.registered_commands.sort(key=lambda info: _RANK.get(info.name or "", len(_RANK)))

# A docstring wrapped at the code's line length would keep its line breaks in typer's rich help (ragged lines in the
# command list): each command's first paragraph becomes one line, which the help then wraps to the terminal.
for _info in app.registered_commands:
    _info.rich_help_panel = _info.rich_help_panel or _PANEL.get(_info.name or "")
    _doc = inspect.getdoc(_info.callback) or ""
    if _info.help is None and _doc:
        _first, _sep, _rest = _doc.partition("\n\n")
        _info.help = " ".join(_first.split()) + _sep + _rest


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Command-line parsing errors: typer >= 0.22 raises its own (vendored click) classes, older typer click's."""
    types: list[type[BaseException]] = []
    if hasattr(typer, "TyperException"):
        types.append(typer.TyperException)
    try:
        import click

        types.append(click.ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return tuple(types)


def _error(message: str) -> None:
    typer.echo(f"error: {one_line(message)}", err=True)


_RESUMABLE = frozenset({"collect", "pairs", "analyse", "compare", "demo"})  # store writers that skip what is stored


def _store_argument(argv: list[str]) -> str | None:
    """The --store a command line names (its default when it names none); None for demo, whose store is in --out."""
    if next((a for a in argv if not a.startswith("-")), "") == "demo":
        return None
    for i, arg in enumerate(argv):
        if arg in ("--store", "-s") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--store="):
            return arg.split("=", 1)[1]
    from failtrace.store.records import DEFAULT_STORE

    return DEFAULT_STORE


def _interrupted(argv: list[str]) -> None:
    """Say what an interrupted command left behind: it depends on the command."""
    command = next((a for a in argv if not a.startswith("-")), "")
    store = _store_argument(argv)
    if command in _RESUMABLE and store is not None and not os.path.exists(store):
        _error(f"interrupted before anything was stored ({store} was not created); rerun the command")
    elif command in _RESUMABLE:
        _error("interrupted; everything committed to the store so far is kept, rerun the command to resume")
    elif command == "finetune":
        _error("interrupted; the checkpoints saved so far stay in --out; rerun the same command to resume from the "
               "last saved step (other options start again from step 0)")
    else:
        _error("interrupted")


def _usage_error(exc: BaseException, argv: list[str]) -> int:
    """One line for a bad command line, with where to look for the valid options (the sub-command's help when one
    was named: an option missing its value is reported by the group's parser, whose path is plain ``failtrace``)."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # ``failtrace`` alone: the help was already printed
        return 0
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)  # type: ignore[union-attr]
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "failtrace"
    commands = getattr(typer.main.get_command(app), "commands", {})
    if path == "failtrace" and argv and argv[0] in commands:
        path = f"failtrace {argv[0]}"
    _error(f"{message.rstrip().rstrip('.')}; see '{path} --help'")
    code = getattr(exc, "exit_code", EXIT_BAD_INPUT)
    return code if isinstance(code, int) and code else EXIT_BAD_INPUT


_ENVIRONMENT_ERRNOS = {errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM}  # a full disk: is_disk_full


def _unexpected(exc: BaseException, argv: list[str] | None) -> int:
    """An exception nobody anticipated: the traceback goes to a log file, the terminal gets one line."""
    from failtrace.cli.crashlog import write_crash_log

    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # the user's path, not a bug: no crash log
        name = str(exc.filename or "(one of the command's paths)")
        shown = name if len(name) <= 100 else f"{name[:60]}…{name[-30:]}"
        _error(f"the path {shown} is too long for this file system ({exc.strerror}); give a shorter name")
        return EXIT_BAD_INPUT
    log = write_crash_log(exc, argv)
    where = f"details in {log}" if log else "no log file could be written"
    text = one_line(str(exc))[:300] or "(no message)"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        _error(f"out of memory ({text}); try a shorter input, a smaller --batch-size or --memory-budget, "
               f"or --dtype bfloat16; {where}")
        return EXIT_BAD_INPUT
    if isinstance(exc, OSError) and getattr(exc, "filename", None):  # disk full, permissions, a vanished file
        _error(f"cannot access {exc.filename}: {exc.strerror or text}; {where}")
        return EXIT_BAD_INPUT
    if is_disk_full(exc):  # a write to an open file, or DuckDB's own write of the store or its WAL
        cause = getattr(exc, "strerror", None) or text
        _error(f"the disk is full ({cause}); free some space, or write to another folder, and run it again "
               f"(a store's unfinished transaction was not committed); {where}")
        return EXIT_BAD_INPUT
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:  # read-only disk, I/O error, permissions
        _error(f"cannot write or read a file: {exc.strerror or text}; {where}")
        return EXIT_BAD_INPUT
    _error(f"unexpected {type(exc).__name__}: {text}; {where}")
    return EXIT_INTERNAL


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app; every failure becomes one ``error: ...`` line and a non-zero exit code.

    SIGTERM (a job scheduler, ``kill``) unwinds like Ctrl-C, so stores close and snapshot copies are removed; the exit
    code is then 143 (128 + SIGTERM) rather than 130."""
    terminated: list[int] = []

    def on_term(signum: int, _frame: Any) -> None:
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        code = _main(argv)
    finally:
        if previous is not None:
            _flush_outputs()  # what the command printed is out before a SIGTERM during exit could drop it
            signal.signal(signal.SIGTERM, previous)
    return 128 + signal.SIGTERM if terminated and code == EXIT_INTERRUPTED else code


def _main(argv: list[str] | None) -> int:
    if not sys.warnoptions:  # library deprecation chatter is not for the command's users (PYTHONWARNINGS wins)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = list(sys.argv[1:] if argv is None else argv)
    for name in ("stdout", "stderr"):  # started with a closed descriptor (`failtrace status >&-`): Python gives None
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives as long as the process
    try:
        from failtrace.cli.options import refuse_empty_values

        refuse_empty_values(typer.main.get_command(app), args)
        code = app(args=argv, prog_name="failtrace", standalone_mode=False)
        # typer >= 0.22 turns Ctrl-C into Exit(130) and, without standalone mode, *returns* an Exit's code
        # instead of raising it: a returned non-zero code must become the exit code (an interrupted run is no success)
        if isinstance(code, int) and not isinstance(code, bool) and code:
            if code == EXIT_INTERRUPTED:
                _interrupted(args)
            return code
    except FailtraceError as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, typer.Abort):
        _interrupted(args)
        return EXIT_INTERRUPTED
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except SystemExit as exc:  # commands that end with a specific code (e.g. graph's closed-form fallback: 3)
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        _error(str(exc.code))
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. ``failtrace status | head``: the reader left; say nothing more
        _silence_stdout()
        return 1
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into one line
        if "Query interrupted" in str(exc):  # Ctrl-C while DuckDB runs a query: DuckDB raises its own error
            _interrupted(args)
            return EXIT_INTERRUPTED
        if isinstance(exc, _usage_error_types()):
            return _usage_error(exc, list(sys.argv[1:] if argv is None else argv))
        return _unexpected(exc, argv)
    return 0


def _flush_outputs() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed, or the reader left: nothing more can be said there
            pass


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _entry() -> None:
    sys.exit(main())
