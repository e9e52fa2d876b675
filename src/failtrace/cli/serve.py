"""``failtrace serve``: the local web explorer over a results store (cases table, case pages, graphs, reviews)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from failtrace.errors import FailtraceError
from failtrace.store.store import DEFAULT_STORE

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
GRACE_S = 5  # seconds open requests get to finish once the server is asked to stop


def serve_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store to browse."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default loopback only)."),
    port: int = typer.Option(8765, "--port", help="TCP port (0 = any free port)."),
    review: bool = typer.Option(False, "--review", help="Allow recording reviews and category overrides."),
) -> None:
    """Serve the explorer at http://HOST:PORT (Ctrl-C or SIGTERM stops it, exit 0). Read-only unless --review."""
    import uvicorn

    from failtrace.cli.checks import check_store_path
    from failtrace.serve.app import create_app, require_store

    if not 0 <= port <= 65535:
        raise FailtraceError(f"--port {port} is not a TCP port (0..65535)")
    if not host or any(c in host for c in "/ \t\n"):
        raise FailtraceError(f"--host {host!r} is not an address")
    check_store_path(store, create=False)  # a folder, a dangling link: named as every command names them
    require_store(store)  # a missing store is named before a busy port, and nothing is opened before the bind
    port = _check_bind(host, port)
    anywhere = host in ("0.0.0.0", "::")  # every address: the URL to open here is the loopback one
    app = create_app(store, review=review, allowed_hosts=_host_names(host, anywhere), any_ip=anywhere)
    if not _loopback(host):  # warned only once the address and the store are good: a failure stays one line
        typer.echo(f"warning: binding {host}: anyone who can reach this address can read the store"
                   + (" and write reviews" if review else ""), err=True)
    shown = "127.0.0.1" if anywhere else f"[{host}]" if ":" in host else host
    snapshot = app.state.ft.store.snapshot_note  # a writer holds the file: what is shown is the file as it was now
    typer.echo(f"failtrace explorer on http://{shown}:{port}" + (" (and this machine's other addresses)" if anywhere
                                                                 else "")
               + f"  ({store}, {'review mode' if review else 'read-only'}"
               + (f"; {snapshot}: later writes are not shown until the explorer is started again)" if snapshot
                  else ")"))
    import logging

    logging.getLogger("uvicorn.error").addFilter(_quiet_stop)
    # returns on Ctrl-C or SIGTERM, after open requests, or after GRACE_S with a client still sending (it hung)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=GRACE_S)
    except KeyboardInterrupt:  # a second Ctrl-C during the stop, which uvicorn raises again once it has stopped
        pass
    typer.echo("failtrace explorer stopped")  # the normal way a server ends: exit 0, store closed


def _quiet_stop(record: Any) -> bool:
    """A logging filter for uvicorn's log: a request cut off by the stop (a client still sending after GRACE_S, or a
    second Ctrl-C) is one line, not uvicorn's traceback of the cancelled task."""
    import asyncio
    import logging

    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return False  # the line before it already says what happened
    said = record.getMessage()
    if said.startswith("Traceback") and ("KeyboardInterrupt" in said or "CancelledError" in said):
        return False  # the app's shutdown cut short by a second Ctrl-C (Starlette sends its traceback as text)
    if "timeout graceful shutdown exceeded" in said:
        record.msg, record.args = f"stopped: a request still open after {GRACE_S} s was cut off", ()
        record.levelno, record.levelname = logging.WARNING, "WARNING"  # the stop was asked for: no error
    return True


def _loopback(host: str) -> bool:
    """``localhost``, ``::1`` or any address of 127.0.0.0/8."""
    import ipaddress

    try:
        return host in LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_names(host: str, anywhere: bool) -> list[str]:
    """The Host header names the explorer answers to: the loopback names, the address it is bound to, and bound to
    every address this machine's own names (and any IP address: ``any_ip``). Never every name: that let a page on
    another site reach it through DNS rebinding (its own name resolved to this machine)."""
    import socket

    from failtrace.serve.guards import LOOPBACK_HOSTS

    names = [*LOOPBACK_HOSTS]
    if anywhere:
        names += [socket.gethostname(), socket.getfqdn()]
    elif host not in names:
        names.append(f"[{host}]" if ":" in host else host)
    return list(dict.fromkeys(n.lower() for n in names if n))


def _check_bind(host: str, port: int) -> int:
    """Fail with one clear line (not uvicorn's log) when the address cannot be bound, e.g. the port is in use.
    Returns the port (a free one chosen now for ``--port 0``, so the printed URL is the real one)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise FailtraceError(f"--host {host!r} does not resolve: {exc}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise FailtraceError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
        return int(s.getsockname()[1])


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``failtrace`` app."""
    app.command("serve")(serve_command)
