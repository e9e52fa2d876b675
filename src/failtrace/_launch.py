"""The ``failtrace`` console script: imports the CLI under a Ctrl-C guard, then runs it.

Importing the CLI (typer, rich, failtrace's command modules) takes a few hundred milliseconds, and until
:func:`failtrace.cli.main` runs, Python's own handler turns Ctrl-C into a traceback. This module imports nothing
but the standard library's ``sys``, ``os`` and ``typing``, so the window left is the interpreter's own start-up.
After the command, a Ctrl-C or SIGTERM while Python exits (libraries' exit hooks: Ray stopping its cluster, threads
joined) ends the process at once with one line, instead of Python's ``Exception ignored in atexit callback``
traceback.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

_EXIT_INTERRUPTED = 130  # failtrace.errors.EXIT_INTERRUPTED, not imported: this module must stay import-free
_EXIT_TERMINATED = 143  # 128 + SIGTERM, the CLI's exit code after a SIGTERM


def main() -> None:
    """Run the ``failtrace`` command; a Ctrl-C while the CLI is still importing is one line and exit 130."""
    try:
        from failtrace.cli import main as cli_main
    except KeyboardInterrupt:
        try:
            sys.stderr.write("error: interrupted (while starting; nothing was run)\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # stderr closed: the exit code still says it
            pass
        os._exit(_EXIT_INTERRUPTED)  # no atexit hooks of half-imported modules
    finish(cli_main())


def finish(code: int) -> NoReturn:
    """Exit with the command's ``code``. From here on, SIGINT and SIGTERM end the process with 128 + the signal's
    number, skipping the exit hooks not yet run. The command has returned: its stores are closed and its output
    written (flushed here)."""
    import signal

    def end(signum: int, _frame: object) -> None:
        try:
            sys.stdout.flush()
            if code not in (_EXIT_INTERRUPTED, _EXIT_TERMINATED):  # the command already said it was interrupted
                sys.stderr.write(f"error: interrupted while exiting; the command itself had finished "
                                 f"(its exit code: {code})\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError, RuntimeError):  # a closed stream, a write cut by the signal
            pass
        os._exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, end)
    sys.exit(code)
