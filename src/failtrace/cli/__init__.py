"""The ``failtrace`` command. Each sub-module registers its commands on :data:`app` through ``register(app)``.

Errors caused by the user's input (:class:`failtrace.errors.FailtraceError`) are printed as one line on stderr with
exit code 2, never as a traceback.
"""

from __future__ import annotations

import sys
from importlib import import_module

import typer

from failtrace.errors import FailtraceError

app = typer.Typer(
    name="failtrace",
    help="Explain why a language model got a benchmark item wrong (contrastive AttnLRP attribution).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, each with a ``register(app)`` function. Add a module here to add its commands.
_COMMAND_MODULES = (
    "failtrace.cli.attribute",
    "failtrace.cli.pipeline",
    "failtrace.cli.graph",
    "failtrace.cli.analyse",
    "failtrace.cli.models",
    "failtrace.cli.compare",
)

for _name in _COMMAND_MODULES:
    import_module(_name).register(app)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app, turning user errors into a one-line message and exit code 2."""
    try:
        app(args=argv, standalone_mode=False)
    except FailtraceError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        return 130
    except SystemExit as exc:  # typer/click exit paths (e.g. --help) raise SystemExit with a code
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    except Exception as exc:  # click usage errors arrive as ClickException subclasses
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


def _entry() -> None:
    sys.exit(main())
