"""The ASGI app a worker serves while the user's app fails to load.

Serving a page instead of refusing connections keeps the browser (and any client) pointed at the
server while the developer fixes the code.  It runs inside the worker process, next to the user's
broken app, so it imports only the standard library.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ASGIApp", "error_app"]

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
    def exception_type(self) -> str | None:
        """The exception class name at the start of the summary: the one part safe to show anyone."""
        match = _EXCEPTION_TYPE.match(self.summary)
        return match.group(0) if match else None


def _text(value: Any) -> str:
    """Coerce a JSON value to text; the failure dict comes from another process and may be odd."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def error_app(failure: Mapping[str, Any], *, show_details: bool) -> ASGIApp:
    """Build the app served while the user's app is broken.

    With ``show_details=False`` (the server is reachable from other machines) the page hides the
    traceback, paths and message text, which can leak source code and secrets.
    """
    report = _Failure.from_mapping(failure)
    text_body = _render_text(report, show_details=show_details).encode("utf-8")
    ws_reason = _close_reason(report, show_details=show_details)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "http":
            await _serve_http(scope, receive, send, report, text_body, show_details=show_details)
        elif kind == "websocket":
            await _serve_websocket(receive, send, ws_reason)
        elif kind == "lifespan":
            await _serve_lifespan(receive, send)

    return app


async def _serve_http(
    scope: Scope,
    receive: Receive,
    send: Send,
    report: _Failure,
    text_body: bytes,
    *,
    show_details: bool,
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
        body = _render_html(report, show_details=show_details, nonce=nonce).encode("utf-8")
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        headers += [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-security-policy", csp.encode()),
        ]
    else:
        body = text_body
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


def _close_reason(report: _Failure, *, show_details: bool) -> str:
    if not show_details:
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


def _hidden_details_sentence() -> str:
    return (
        "The details are in the server's terminal. They are hidden here because the server is "
        f"reachable from other machines; start it with {_SHOW_ERRORS_OPTION} to show them on this page."
    )


def _render_text(report: _Failure, *, show_details: bool) -> str:
    if not show_details:
        lines = ["The app failed to load."]
        if report.exception_type:
            lines.append(f"Error type: {report.exception_type}")
        lines += ["", _hidden_details_sentence(), ""]
        return "\n".join(lines)

    lines = [f"{report.app} failed to load", "", report.summary]
    if report.exit_reason:
        lines.append(_exit_sentence(report.exit_reason))
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
    return f"Worker exit: {reason}"


def _render_html(report: _Failure, *, show_details: bool, nonce: str) -> str:
    def esc(value: str) -> str:
        return html.escape(value, quote=True)

    if show_details:
        title = f"{report.app} failed to load"
        parts = [f'<p class="summary">{esc(report.summary)}</p>']
        if report.exit_reason:
            parts.append(f'<p class="exit">{esc(_exit_sentence(report.exit_reason))}</p>')
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
        parts.append(f"<p>{esc(_hidden_details_sentence())}</p>")
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
