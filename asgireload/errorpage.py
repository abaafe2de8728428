"""The ASGI app a worker serves while the user's app fails to load.

Serving a page instead of refusing connections keeps the browser (and any client) pointed at the
server while the developer fixes the code.  It runs inside the worker process, next to the user's
broken app, so it imports only the standard library.
"""

from __future__ import annotations

import html
import ipaddress
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ASGIApp", "displayable", "error_app", "is_loopback_host"]

logger = logging.getLogger("asgireload")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: RFC 6455 allows 125 bytes of close payload, two of which carry the close code.
_MAX_CLOSE_REASON_BYTES = 123
_WS_INTERNAL_ERROR = 1011
_SHOW_ERRORS_OPTION = "--show-errors"
# A dotted name whose last part is capitalised, like an exception class, followed by ":" or the end.
_EXCEPTION_TYPE = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Z][A-Za-z0-9_]*(?=:|\Z)")
_SURROGATE = re.compile("[\ud800-\udfff]")
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_PORT = re.compile(r"(?::[0-9]{0,5})?")

# The script is a constant on purpose: nothing from the failure is ever interpolated into it, so a
# hostile summary or traceback cannot break out of it.  It polls with setTimeout (not setInterval)
# so a slow server never gets overlapping requests, and keeps polling through network errors
# because the server may be between workers.
_POLL_SCRIPT = """
(function () {
  var status = document.getElementById("asgireload-status");
  function poll() {
    fetch(window.location.href, {cache: "no-store", headers: {"Accept": "text/html"}})
      .then(function (response) {
        if (response.headers.get("x-asgireload") !== "error") {
          if (status) { status.textContent = "The app is back, reloading\\u2026"; }
          window.location.reload();
          return;
        }
        setTimeout(poll, 1000);
      })
      .catch(function () { setTimeout(poll, 1000); });
  }
  setTimeout(poll, 1000);
})();
"""

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem;
       color: #1f2328; background: #fff; }
h1 { font-size: 1.5rem; color: #b42318; margin-bottom: 0.5rem; }
.summary { font: 600 1rem/1.4 ui-monospace, monospace; white-space: pre-wrap; word-break: break-word;
           background: #fef3f2; border-left: 4px solid #b42318; padding: 0.75rem 1rem; }
pre { font: 13px/1.45 ui-monospace, monospace; background: #f6f8fa; padding: 1rem; overflow-x: auto; }
code { font-family: ui-monospace, monospace; }
.status { color: #59636e; }
footer { color: #59636e; font-size: 0.85rem; margin-top: 2rem; }
"""


@dataclass(frozen=True, slots=True)
class _Failure:
    """The failure report, normalised once so rendering never trips over a malformed field."""

    app: str
    summary: str
    traceback: str
    files: tuple[str, ...]
    exit_reason: str | None
    generation: int | None

    @classmethod
    def from_mapping(cls, failure: Mapping[str, Any]) -> _Failure:
        if not isinstance(failure, Mapping):  # a null report must still give a page, not a crash
            failure = {}
        app = _text(failure.get("app")).strip() or "the app"
        summary = _text(failure.get("summary")).strip() or "the app failed to load for an unknown reason"
        files_value = failure.get("files")
        files: tuple[str, ...] = ()
        if isinstance(files_value, Iterable) and not isinstance(files_value, (str, bytes, Mapping)):
            files = tuple(text for text in map(_text, files_value) if text)
        generation = failure.get("generation")
        if not isinstance(generation, int) or isinstance(generation, bool):
            generation = None
        return cls(
            app=app,
            summary=summary,
            traceback=_text(failure.get("traceback")).rstrip(),
            files=files,
            exit_reason=_text(failure.get("exit_reason")).strip() or None,
            generation=generation,
        )

    @property
    def exit_sentence(self) -> str | None:
        """How the worker ended, unless the summary says so already."""
        if not self.exit_reason or self.exit_reason.rstrip(".") == self.summary.rstrip("."):
            return None
        return _exit_sentence(self.exit_reason)

    @property
    def exception_type(self) -> str | None:
        """The exception class name at the start of the summary: the one part safe to show anyone."""
        match = _EXCEPTION_TYPE.match(self.summary)
        return match.group(0) if match else None


def _text(value: Any) -> str:
    """Coerce a JSON value to text; the failure dict comes from another process and may be odd."""
    if value is None:
        return ""
    return displayable(value if isinstance(value, str) else str(value))


def displayable(text: str) -> str:
    """Text that encodes as UTF-8, for a page or a message.

    A path that is not UTF-8 reaches Python as a str with surrogate escapes (os.fsdecode); each
    undecodable byte shows as \\xNN, as Python's repr of the bytes would show it.
    """

    def escape(match: re.Match[str]) -> str:
        code = ord(match.group(0))
        return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"

    return _SURROGATE.sub(escape, text)


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
        self._report = _Failure.from_mapping({})
        self._text: dict[str | None, bytes] = {}

    def report(self) -> _Failure:
        current = dict(self._failure) if isinstance(self._failure, Mapping) else {}
        if current != self._seen:
            self._seen = current
            self._report = _Failure.from_mapping(current)
            self._text.clear()
        return self._report

    def text_body(self, hidden: str | None) -> bytes:
        report = self.report()
        body = self._text.get(hidden)
        if body is None:
            body = self._text[hidden] = _render_text(report, hidden=hidden).encode("utf-8", "replace")
        return body


def error_app(
    failure: Mapping[str, Any], *, show_details: bool, only_loopback_hosts: bool = False
) -> ASGIApp:
    """Build the app served while the user's app is broken.

    With ``show_details=False`` (the server is reachable from other machines) the page hides the
    traceback, paths and message text, which can leak source code and secrets. With
    ``only_loopback_hosts`` (the server listens on loopback only) it hides them too from any
    request whose Host is not a loopback name or address (see `is_loopback_host`), and logs once
    why. The page follows later changes to the `failure` mapping.
    """
    page = _Page(failure)
    warned: list[bytes | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        hidden = None if show_details else _hidden_by_bind()
        if hidden is None and only_loopback_hosts and kind in ("http", "websocket"):
            host = _host_of(scope)
            if not is_loopback_host(host):
                hidden = _hidden_by_host(scope)
                if not warned:
                    warned.append(host)
                    _warn_hidden(host, scope)
        if kind == "http":
            await _serve_http(scope, receive, send, page, hidden)
        elif kind == "websocket":
            await _serve_websocket(receive, send, _close_reason(page.report(), hidden=hidden))
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


async def _serve_http(scope: Scope, receive: Receive, send: Send, page: _Page, hidden: str | None) -> None:
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
        body = _render_html(page.report(), hidden=hidden, nonce=nonce).encode("utf-8", "replace")
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
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


def _close_reason(report: _Failure, *, hidden: str | None) -> str:
    if hidden is not None:
        return "app failed to load"
    reason = "app failed to load: " + " ".join(report.summary.split())
    return _truncate_utf8(reason, _MAX_CLOSE_REASON_BYTES)


def _truncate_utf8(text: str, limit: int) -> str:
    """Cut text to at most limit UTF-8 bytes without splitting a character, marking the cut."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    ellipsis = "\u2026"
    room = limit - len(ellipsis.encode("utf-8"))
    return encoded[:room].decode("utf-8", errors="ignore") + ellipsis


def _recovery_sentence(report: _Failure) -> str:
    watched = "these files" if report.files else "the app's source files"
    return (
        f"asgireload is watching {watched} and will load the app again by itself as soon as they are "
        "fixed; there is no need to restart the server."
    )


def _hidden_by_bind() -> str:
    return (
        "The details are in the server's terminal. They are hidden here because the server is "
        f"reachable from other machines; start it with {_SHOW_ERRORS_OPTION} to show them on this page."
    )


def _hidden_by_host(scope: Scope) -> str:
    return (
        "The details are in the server's terminal. They are hidden here because this page was "
        "requested through a name that is not localhost (a defence against DNS rebinding); open "
        f"{_local_url(scope)} to see them."
    )


def _render_text(report: _Failure, *, hidden: str | None) -> str:
    if hidden is not None:
        lines = ["The app failed to load."]
        if report.exception_type:
            lines.append(f"Error type: {report.exception_type}")
        lines += ["", hidden, ""]
        return "\n".join(lines)

    lines = [f"{report.app} failed to load", "", report.summary]
    if report.exit_sentence:
        lines.append(report.exit_sentence)
    if report.files:
        lines += ["", "Files to fix:", *(f"  {path}" for path in report.files)]
    lines += ["", _recovery_sentence(report)]
    if report.traceback:
        lines += ["", report.traceback]
    if report.generation is not None:
        lines += ["", f"(worker generation {report.generation})"]
    lines.append("")
    return "\n".join(lines)


def _exit_sentence(reason: str) -> str:
    """Turn "exited with code 3" into a sentence, without mangling reasons phrased differently."""
    if reason.startswith(("exited", "killed", "was ", "crashed", "timed out", "stopped")):
        return f"The worker {reason.rstrip('.')}."
    if reason[:1].isupper():  # a sentence already
        return reason
    return f"Worker exit: {reason}"


def _render_html(report: _Failure, *, hidden: str | None, nonce: str) -> str:
    def esc(value: str) -> str:
        return html.escape(value, quote=True)

    if hidden is None:
        title = f"{report.app} failed to load"
        parts = [f'<p class="summary">{esc(report.summary)}</p>']
        if report.exit_sentence:
            parts.append(f'<p class="exit">{esc(report.exit_sentence)}</p>')
        if report.files:
            items = "".join(f"<li><code>{esc(path)}</code></li>" for path in report.files)
            parts.append(f"<h2>Files to fix</h2><ul>{items}</ul>")
        parts.append(f"<p>{esc(_recovery_sentence(report))}</p>")
        if report.traceback:
            parts.append(f"<h2>Traceback</h2><pre>{esc(report.traceback)}</pre>")
        footer = "asgireload"
        if report.generation is not None:
            footer += f" \u00b7 worker generation {report.generation}"
    else:
        title = "The app failed to load"
        parts = []
        if report.exception_type:
            parts.append(f'<p class="summary">{esc(report.exception_type)}</p>')
        parts.append(f"<p>{esc(hidden)}</p>")
        parts.append(
            "<p>The server reloads the app by itself when its files change; "
            "there is no need to restart it.</p>"
        )
        footer = "asgireload"

    nonce_attr = esc(nonce)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="robots" content="noindex">',
            f"<title>{esc(title)}</title>",
            f'<style nonce="{nonce_attr}">{_STYLE}</style>',
            "</head>",
            "<body>",
            f"<h1>{esc(title)}</h1>",
            *parts,
            '<p class="status" id="asgireload-status">Waiting for the app to load again\u2026 '
            "this page reloads by itself.</p>",
            "<noscript><p>JavaScript is off, so reload this page yourself once the app is fixed.</p>"
            "</noscript>",
            f"<footer>{esc(footer)}</footer>",
            f'<script nonce="{nonce_attr}">{_POLL_SCRIPT}</script>',
            "</body>",
            "</html>",
            "",
        ]
    )
