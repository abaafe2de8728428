"""The ASGI app a worker serves while the user's app fails to load (its text: errorreport.py).

Serving a page instead of refusing connections keeps the browser (and any client) pointed at the
server while the developer fixes the code.  It runs inside the worker process, next to the user's
broken app, so it imports only the standard library.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from .errorreport import Report, close_reason, displayable, hidden_by_bind, render_html, render_text

__all__ = ["ASGIApp", "displayable", "error_app", "is_loopback_host"]

logger = logging.getLogger("asgireload")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_WS_INTERNAL_ERROR = 1011
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_PORT = re.compile(r"(?::[0-9]{0,5})?")


def is_loopback_host(host_header: bytes | str | None) -> bool:
    """Whether a Host header names this machine by a loopback name or address.

    `localhost`, `*.localhost`, 127.0.0.0/8 in dotted-quad form and [::1], each with or without a
    port. A page served from any other name may be an attacker's page whose name resolves to
    127.0.0.1 (DNS rebinding), so it must not read what only the developer should. No Host (an
    HTTP/1.0 request) is not loopback; nor are spellings like 0x7f.1 or 127.1 that a browser
    would have normalised.
    """
    if host_header is None:
        return False
    if isinstance(host_header, bytes | bytearray):
        host_header = bytes(host_header).decode("latin-1")
    host = host_header.strip().lower()
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        if not bracket or not _PORT.fullmatch(port):
            return False
        try:
            address = ipaddress.IPv6Address(name)
        except ValueError:
            return False
        mapped = address.ipv4_mapped
        return address.is_loopback or (mapped is not None and mapped.is_loopback)
    name, colon, port = host.partition(":")
    if not _PORT.fullmatch(colon + port):
        return False
    name = name.removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):
        return all(_HOST_LABEL.fullmatch(label) for label in name.split("."))
    try:
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


def _host_of(scope: Scope) -> bytes | None:
    """The request's one Host header; None when it has none, or several (ambiguous)."""
    found = [bytes(value) for name, value in scope.get("headers") or () if bytes(name).lower() == b"host"]
    return found[0] if len(found) == 1 else None


class _Page:
    """The failure as shown, normalised again only when the worker updates the failure it holds."""

    def __init__(self, failure: Mapping[str, Any]) -> None:
        self._failure = failure
        self._seen: dict[str, Any] | None = None
        self._report = Report.from_mapping({})
        self._text: dict[str | None, bytes] = {}

    def report(self) -> Report:
        current = dict(self._failure) if isinstance(self._failure, Mapping) else {}
        if current != self._seen:
            self._seen = current
            self._report = Report.from_mapping(current)
            self._text.clear()
        return self._report

    def text_body(self, hidden: str | None) -> bytes:
        report = self.report()
        body = self._text.get(hidden)
        if body is None:
            body = self._text[hidden] = render_text(report, hidden=hidden).encode("utf-8", "replace")
        return body


def error_app(
    failure: Mapping[str, Any],
    *,
    show_details: bool,
    only_loopback_hosts: bool = False,
    poll: bool | Callable[[Scope], bool] = True,
) -> ASGIApp:
    """Build the app served while the user's app is broken.

    With ``show_details=False`` (the server is reachable from other machines) the page hides the
    traceback, paths and message text, which can leak source code and secrets. With
    ``only_loopback_hosts`` (the server listens on loopback only) it hides them too from any
    request whose Host is not a loopback name or address (see `is_loopback_host`), and logs once
    why. The page follows later changes to the `failure` mapping. With ``poll`` (a bool, or a
    function of the request) its script checks back every second; without, live reload (which
    wraps this app and adds its own script to that response) tells the page instead.
    """
    page = _Page(failure)
    warned: list[bytes | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        hidden = None if show_details else hidden_by_bind()
        if hidden is None and only_loopback_hosts and kind in ("http", "websocket"):
            host = _host_of(scope)
            if not is_loopback_host(host):
                hidden = _hidden_by_host(scope)
                if not warned:
                    warned.append(host)
                    _warn_hidden(host, scope)
        if kind == "http":
            polls = poll(scope) if callable(poll) else poll
            await _serve_http(scope, receive, send, page, hidden, polls)
        elif kind == "websocket":
            await _serve_websocket(receive, send, close_reason(page.report(), hidden=hidden))
        elif kind == "lifespan":
            await _serve_lifespan(receive, send)

    return app


def _local_url(scope: Scope) -> str:
    server = scope.get("server")
    port = server[1] if isinstance(server, tuple | list) and len(server) == 2 else None
    return f"http://localhost:{port}/" if isinstance(port, int) else "http://localhost/"


def _warn_hidden(host: bytes | None, scope: Scope) -> None:
    shown = "a request without a Host header" if host is None else f"a request for Host {_shorten(host)!r}"
    logger.warning(
        "The error page hid its details from %s. While the server listens on loopback, tracebacks "
        "and paths are shown only to requests addressed to localhost or a loopback address, so that "
        "a web page cannot read them through DNS rebinding. Open %s to see them. --show-errors would "
        "show them to every Host, which is no fix for DNS rebinding.",
        shown,
        _local_url(scope),
    )


def _shorten(host: bytes) -> str:
    text = host.decode("latin-1")
    return text if len(text) <= 100 else text[:100] + "\u2026"


async def _serve_http(
    scope: Scope, receive: Receive, send: Send, page: _Page, hidden: str | None, poll: bool
) -> None:
    # Draining the body keeps the connection reusable; a client that left needs no answer.
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return
        if message.get("type") == "http.request" and not message.get("more_body", False):
            break

    headers = [
        (b"cache-control", b"no-store"),
        (b"x-asgireload", b"error"),
        (b"x-content-type-options", b"nosniff"),
    ]
    if _accepts_html(scope):
        # A fresh nonce per response lets the CSP forbid every script except our own poller.
        nonce = secrets.token_urlsafe(16)
        body = render_html(page.report(), hidden=hidden, nonce=nonce, poll=poll).encode("utf-8", "replace")
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; worker-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        headers += [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-security-policy", csp.encode()),
        ]
    else:
        body = page.text_body(hidden)
        headers.append((b"content-type", b"text/plain; charset=utf-8"))
    headers.append((b"content-length", str(len(body)).encode()))

    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _accepts_html(scope: Scope) -> bool:
    """Whether the client lists text/html (with a non-zero q) in any Accept header."""
    for name, value in scope.get("headers") or ():
        if bytes(name).lower() != b"accept":
            continue
        for media_range in bytes(value).decode("latin-1").lower().split(","):
            media_type, *params = (part.strip() for part in media_range.split(";"))
            if media_type != "text/html":
                continue
            if not any(_is_zero_quality(param) for param in params):
                return True
    return False


def _is_zero_quality(param: str) -> bool:
    key, _, value = param.partition("=")
    if key.strip() != "q":
        return False
    try:
        return float(value.strip()) == 0
    except ValueError:
        return False


async def _serve_websocket(receive: Receive, send: Send, reason: str) -> None:
    # Accepting before closing lets the client see the 1011 code and reason instead of a bare 403.
    message = await receive()
    if message.get("type") != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": _WS_INTERNAL_ERROR, "reason": reason})


async def _serve_lifespan(receive: Receive, send: Send) -> None:
    # Claiming a successful startup keeps uvicorn serving the error page instead of exiting.
    while True:
        message = await receive()
        kind = message.get("type")
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _hidden_by_host(scope: Scope) -> str:
    return (
        "The details are in the server's terminal. They are hidden here because this page was "
        "requested through a name that is not localhost (a defence against DNS rebinding); open "
        f"{_local_url(scope)} to see them."
    )
