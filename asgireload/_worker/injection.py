"""Where the live-reload script goes in an HTML response, and in which form: pure functions.

Three questions, answered without I/O so they can be tested on their own:

- Is a response a page a browser shows (`why_not_html`)? A final `text/html` answer, whole (not
  a range, a 204 or a 304), not a download. Other responses pass untouched, without a word.
- May that page get the script, and as what tag (`why_untouched`, `placement`)? Not if it is
  compressed, in a charset that does not keep ASCII as it is, or marked `no-transform`; and only
  in a form its Content-Security-Policy allows: the nonce the policy names, else an external
  script from the same origin if 'self' may run. Each refusal has a reason, for the log.
- Where in the body (`BodyInjector`)? Where its first real `</body>` end tag begins, as a browser
  reads it (never inside a script, a comment, an attribute...: see htmlscan.py), or at the end
  if that is a place for a new element; else nowhere, with the reason.
"""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Iterable, Sequence

from .htmlscan import UNSAFE_CHARSETS, HtmlScanner

Headers = Sequence[tuple[bytes, bytes]]

# Statuses whose body is never a whole page (or is not shown): no content, partial, not modified.
_SKIPPED_STATUSES = frozenset({204, 205, 206, 304})
_SAME_ORIGIN = frozenset({"'self'", "*", "http:"})
_NONCE = re.compile(r"'nonce-([A-Za-z0-9+/_=-]+)'", re.IGNORECASE)  # keywords ignore case; values not


@dataclasses.dataclass(frozen=True)
class Placement:
    """How the script may be added: with this nonce (or none), and whether a SharedWorker may run."""

    nonce: str | None
    shared_worker: bool


# Sec-Fetch-Dest values of a navigation that shows a whole page; no header: an older client.
_PAGE_DESTINATIONS = frozenset({"document", "iframe", "frame"})
# Headers of requests for a fragment that a page script puts into the page already loaded.
_FRAGMENT_HEADERS = (b"hx-request", b"turbo-frame")


def why_not_navigation(headers: Headers) -> str | None:
    """Why a request does not load a whole page (None: it does).

    A fetch(), an htmx swap or a Turbo frame gets HTML to put into a page that has the script
    already; a second copy would only add a second stream and a second reload.
    """
    for name in _FRAGMENT_HEADERS:
        if header(headers, name):
            return f"a fragment ({name.decode()} header)"
    destinations = header(headers, b"sec-fetch-dest")
    if destinations and any(d.strip().lower() not in _PAGE_DESTINATIONS for d in destinations):
        return f"not a page load (Sec-Fetch-Dest {destinations[0].strip()})"
    return None


def header(headers: Headers, name: bytes) -> list[str]:
    """Every value of one header (names compared case-insensitively), as text."""
    return [bytes(v).decode("latin-1") for k, v in headers if bytes(k).lower() == name]


def parse_policy(text: str) -> dict[str, list[str]]:
    """One serialized CSP policy as {directive: sources}; the first of a repeated directive wins."""
    directives: dict[str, list[str]] = {}
    for part in text.split(";"):
        tokens = part.split()
        if tokens:
            directives.setdefault(tokens[0].lower(), tokens[1:])
    return directives


def _sources(policy: dict[str, list[str]], *names: str) -> list[str] | None:
    """The sources of the first directive present among `names` (the CSP fallback chain)."""
    for name in names:
        if name in policy:
            return [s.lower() if not s.lower().startswith("'nonce-") else s for s in policy[name]]
    return None


def _allows_same_origin(sources: list[str] | None) -> bool:
    if sources is None:
        return True
    if "'strict-dynamic'" in (s.lower() for s in sources):
        return False  # 'self' and hosts are ignored next to it: only nonces and hashes count
    return any(s.lower() in _SAME_ORIGIN for s in sources)


def placement(policies: Iterable[str]) -> tuple[Placement | None, str]:
    """How the script may be added under these Content-Security-Policy header values.

    Every policy must allow it (browsers enforce each one). Returns the placement, or None and a
    short reason saying which directive blocks it.
    """
    nonce: str | None = None
    shared_worker = True
    for value in policies:
        for text in value.split(","):  # several policies may share one header line
            policy = parse_policy(text)
            if not policy:
                continue
            sandbox = policy.get("sandbox")
            if sandbox is not None and not {"allow-scripts", "allow-same-origin"} <= {
                s.lower() for s in sandbox
            }:
                return None, "its sandbox lacks allow-scripts or allow-same-origin"
            scripts = _sources(policy, "script-src-elem", "script-src", "default-src")
            if scripts is not None:
                nonces = [m.group(1) for s in scripts if (m := _NONCE.fullmatch(s))]
                if nonces:
                    if nonce is not None and nonce not in nonces:
                        return None, "two policies require different nonces for scripts"
                    nonce = nonce or nonces[0]
                elif not _allows_same_origin(scripts):
                    return None, "its script-src allows neither a nonce nor 'self'"
            if not _allows_same_origin(_sources(policy, "connect-src", "default-src")):
                return None, "its connect-src does not allow 'self'"
            workers = _sources(policy, "worker-src", "child-src", "script-src", "default-src")
            shared_worker = shared_worker and _allows_same_origin(workers)
    return Placement(nonce, shared_worker), ""


def script_tag(placement: Placement, attributes: dict[str, str], src: str) -> bytes:
    """The one tag injected: an external script, so that a policy allowing 'self' lets it run."""
    attrs = [f'src="{html.escape(src)}"', "async"]
    if placement.nonce is not None:
        attrs.append(f'nonce="{html.escape(placement.nonce)}"')
    attrs += [f'data-{name}="{html.escape(value)}"' for name, value in attributes.items()]
    attrs.append(f'data-worker="{int(placement.shared_worker)}"')
    return f"<script {' '.join(attrs)}></script>".encode("ascii", "xmlcharrefreplace")


def why_not_html(status: int, headers: Headers) -> str | None:
    """Why a response is not a page that a browser shows (None: it is one)."""
    if status < 200 or status in _SKIPPED_STATUSES:
        return f"status {status}"
    content_types = header(headers, b"content-type")
    if len(content_types) != 1:
        return "no single content-type"
    if content_types[0].split(";")[0].strip().lower() != "text/html":
        return "not text/html"
    for disposition in header(headers, b"content-disposition"):
        kind = disposition.split(";")[0].strip().lower()
        if kind != "inline":  # RFC 6266: a type it does not know is an attachment too
            return f"a download (Content-Disposition: {kind})"
    if header(headers, b"content-range"):
        return "a range"
    return None


def why_untouched(headers: Headers) -> str | None:
    """Why a page must pass as it is, bytes and headers (None: it may get the script)."""
    _media_type, *params = (p.strip() for p in header(headers, b"content-type")[0].split(";"))
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and UNSAFE_CHARSETS.search(value.encode("latin-1")):
            return f"its Content-Type names charset {value.strip()}"
    for coding in header(headers, b"content-encoding"):
        if coding.strip().lower() not in ("", "identity"):
            return f"it is compressed (Content-Encoding: {coding.strip()})"
    for cache_control in header(headers, b"cache-control"):
        if "no-transform" in (d.split("=")[0].strip().lower() for d in cache_control.split(",")):
            return "its Cache-Control says no-transform"
    lengths = header(headers, b"content-length")
    if lengths and not fixed_headers(headers, 0)[1]:
        return f"its Content-Length is not a number ({lengths[0]!r})"
    return None


def fixed_headers(headers: Headers, added: int) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The headers after `added` bytes go into the body: Content-Length grown, validators dropped.

    ETag and Last-Modified would let the browser revalidate the page to a 304 and show the copy
    injected by an older generation, whose script then asks for the reload that cannot come.
    Returns the headers and False if a Content-Length could not be understood (leave it alone).
    """
    result: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lowered = bytes(name).lower()
        if lowered in (b"etag", b"last-modified"):
            continue
        if lowered == b"content-length":
            try:
                length = int(bytes(value).strip())
            except ValueError:
                return [], False
            if length < 0:
                return [], False
            value = str(length + added).encode()
        result.append((name, value))
    return result, True


class BodyInjector:
    """Puts `snippet` where the body's first real `</body>` end tag begins (see htmlscan.py), or at
    its end if that is a place for a new element; else nowhere, and `why_not` says why.

    Streaming (`hold_all` False), each chunk goes out at once, less a short tail that may begin the
    tag (at most `</body` and one byte more); the tail goes out with the next chunk, or by itself
    (`release`) if that is slow to come. With `hold_all` (the response has a Content-Length, which
    must be right before the first byte goes), nothing goes out until it is decided (`done`).
    """

    def __init__(self, snippet: bytes, *, hold_all: bool = False) -> None:
        self.snippet = snippet
        self.hold_all = hold_all
        self.done = False
        self.inserted = False
        self.why_not: str | None = None
        self._scanner = HtmlScanner()
        self._held = b""
        self._held_from = 0  # the position in the body of the first held byte

    @property
    def holding(self) -> bool:
        """Whether bytes of the body are held back, waiting for the next chunk."""
        return bool(self._held)

    def release(self) -> bytes:
        """The held-back bytes, to send now; a `</body>` they may begin is given up."""
        held, self._held = self._held, b""
        self._held_from += len(held)
        self._scanner.usable_from = self._held_from
        return held

    def feed(self, chunk: bytes, *, last: bool) -> bytes:
        """The bytes to send for this chunk (the last one: `last`)."""
        if self.done:
            return chunk
        self._held += chunk
        found = self._scanner.feed(chunk)
        if found is not None:
            return self._finish(found - self._held_from)
        if last:
            self.why_not = self._scanner.why_not_at_end()
            return self._finish(len(self._held) if self.why_not is None else None)
        if self._scanner.unsafe is not None:
            self.why_not = self._scanner.unsafe
            return self._finish(None)
        if self.hold_all:
            return b""
        candidate = self._scanner.candidate
        if candidate is None:
            return self.release()
        keep = candidate - self._held_from
        sent, self._held = self._held[:keep], self._held[keep:]
        self._held_from = candidate
        return sent

    def _finish(self, at: int | None) -> bytes:
        """Everything held, with the snippet at `at` (None: without it)."""
        self.done, self.inserted = True, at is not None
        held, self._held = self._held, b""
        return held if at is None else held[:at] + self.snippet + held[at:]
