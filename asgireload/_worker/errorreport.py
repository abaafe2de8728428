"""What the error page says: the failure, normalised once, as plain text or as HTML.

It runs inside the worker process, next to the user's broken app, so it imports only the
standard library.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: RFC 6455 allows 125 bytes of close payload, two of which carry the close code.
_MAX_CLOSE_REASON_BYTES = 123
SHOW_ERRORS_OPTION = "--show-errors"
# A dotted name whose last part is capitalised, like an exception class, followed by ":" or the end.
_EXCEPTION_TYPE = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Z][A-Za-z0-9_]*(?=:|\Z)")
_SURROGATE = re.compile("[\ud800-\udfff]")

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
class Report:
    """The failure report, normalised once so rendering never trips over a malformed field."""

    app: str
    summary: str
    traceback: str
    files: tuple[str, ...]
    exit_reason: str | None
    generation: int | None

    @classmethod
    def from_mapping(cls, failure: Mapping[str, Any]) -> Report:
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


def close_reason(report: Report, *, hidden: str | None) -> str:
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


def _recovery_sentence(report: Report) -> str:
    watched = "these files" if report.files else "the app's source files"
    return (
        f"asgireload is watching {watched} and will load the app again by itself as soon as they are "
        "fixed; there is no need to restart the server."
    )


def hidden_by_bind() -> str:
    return (
        "The details are in the server's terminal. They are hidden here because the server is "
        f"reachable from other machines; start it with {SHOW_ERRORS_OPTION} to show them on this page."
    )


def render_text(report: Report, *, hidden: str | None) -> str:
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


def render_html(report: Report, *, hidden: str | None, nonce: str, poll: bool = True) -> str:
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
            *([f'<script nonce="{nonce_attr}">{_POLL_SCRIPT}</script>'] if poll else []),
            "</body>",
            "</html>",
            "",
        ]
    )
