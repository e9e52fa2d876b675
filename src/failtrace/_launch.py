"""The ``failtrace`` console script: imports the CLI under a Ctrl-C guard, then runs it.

Importing the CLI (typer, rich, failtrace's command modules) takes a few hundred milliseconds, and until
:func:`failtrace.cli.main` runs, Python's own handler turns Ctrl-C into a traceback. This module imports nothing
but the standard library's ``sys`` and ``os``, so the window left is the interpreter's own start-up.
"""

from __future__ import annotations

import os
import sys

_EXIT_INTERRUPTED = 130  # failtrace.errors.EXIT_INTERRUPTED, not imported: this module must stay import-free


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
    sys.exit(cli_main())
