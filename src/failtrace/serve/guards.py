"""The explorer's request guards, outside the API: HEAD answered as GET, the Host check against DNS rebinding, and
the refusal of writes another site's page could send (:mod:`failtrace.serve.app` puts them in front of the routes).
"""

from __future__ import annotations

from typing import Any


class HeadAsGet:
    """ASGI wrapper answering ``HEAD`` on every GET route (uptime checks, ``curl -I``): the request goes on as a GET
    and only the response's status and headers go back, so the API schema lists each route once (FastAPI would
    otherwise answer 405, or document a second HEAD operation per route)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":  # same Content-Length as the GET, no body
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]


def ip_literal(host_header: str) -> bool:
    """Whether a Host header is an IP address and nothing else (``10.0.0.5``, ``10.0.0.5:8765``, ``[fe80::1]:8765``),
    not a name: an IPv6 address in brackets, a port of digits only (``[::1]evil`` and ``1.2.3.4:evil`` are not)."""
    import ipaddress
    import re

    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?|([0-9.]+)(?::\d{1,5})?", host_header.strip())
    if m is None:
        return False
    try:
        address = ipaddress.ip_address(m.group(1) or m.group(2))
    except ValueError:
        return False
    return address.version == (6 if m.group(1) else 4)


def host_checked(app: Any, allowed_hosts: list[str], any_ip: bool = False) -> Any:
    """``app`` behind Starlette's TrustedHostMiddleware (the DNS-rebinding guard), with its refusal said as every
    other error is: one JSON line naming the Host header and what to do, not a bare text "Invalid host header".
    Starlette's check itself decides on names; a request it lets through is marked in its scope, and only an
    unmarked response (the refusal) is replaced. ``any_ip`` (an explorer bound to every address) also lets a Host
    that is an IP address through: Starlette matches names only, and DNS rebinding needs a name (the attacker's
    page sends its own), so an address typed by hand is never one."""
    from fastapi.responses import JSONResponse
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    async def passed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["failtrace.host_ok"] = True
        await app(scope, receive, send)

    checked = TrustedHostMiddleware(passed, allowed_hosts=allowed_hosts)

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await checked(scope, receive, send)
            return
        host = next((v for k, v in scope.get("headers") or [] if k == b"host"), b"")  # the first, as Starlette reads
        if any_ip and ip_literal(host.decode("latin-1")):
            await passed(scope, receive, send)
            return

        async def said(message: dict[str, Any]) -> None:
            if scope.get("failtrace.host_ok"):
                await send(message)
            elif message["type"] == "http.response.body":  # the refusal's body: ours instead, status and all
                host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")[:80]
                names = ", ".join(allowed_hosts) + (", or an IP address" if any_ip else "")
                await JSONResponse({"detail": f"the Host header {host!r} is not a name this explorer answers to "
                                              f"({names}): so a page elsewhere cannot reach it by DNS rebinding; "
                                              + ("open it by this machine's IP address or name, or start failtrace "
                                                 "serve with --host that name" if any_ip else
                                                 "a proxy must send one of these, or start failtrace serve with "
                                                 "--host ADDRESS")},
                                   status_code=400)(scope, receive, send)

        await checked(scope, receive, said)

    return guarded


def cross_site_write(headers: Any) -> tuple[int, str] | None:
    """(status, reason) refusing a write another web page's script could send, else None.

    A page on any site may POST to a loopback explorer (the Host header is then the explorer's own, so the host check
    passes): FastAPI before 0.132 parses a body with *no* Content-Type as JSON, and a ``no-cors`` fetch of a Blob
    sends just that, with no CORS preflight. So a write must say ``Content-Type: application/json`` (which a
    cross-site page can only send after a preflight this server never grants), and a browser's ``Origin`` /
    ``Sec-Fetch-Site`` must be this server's own page: ``Sec-Fetch-Site`` (which a page's script cannot set) says so
    where the browser sends it, which also holds behind a proxy that rewrites the Host header; else the ``Origin``
    must name the Host. Scripts (curl with a JSON Content-Type, requests' ``json=``) send neither header and pass."""
    ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        return 415, "a write must send its body as JSON, with Content-Type: application/json"
    site = headers.get("sec-fetch-site")
    origin = headers.get("origin")
    if site is not None:
        if site.lower() not in ("same-origin", "none"):
            return 403, f"a write from another site's page ({site[:40]}) is refused: use the explorer's own page"
    elif origin is not None and origin.split("://", 1)[-1].lower() != (headers.get("host") or "").lower():
        return 403, f"a write from another origin ({origin[:80]}) is refused: use the explorer's own page"
    return None
