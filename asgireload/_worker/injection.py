"""Where the live-reload script goes in an HTML response, and in which form: pure functions.

Two questions, answered without I/O so they can be tested on their own:

- May a response get the script, and as what tag? Only a complete `text/html` answer in an
  encoding that keeps ASCII as it is, not compressed, not a range, not a HEAD or a 304; and only
  in a form its Content-Security-Policy allows: the nonce the policy names, else an external
  script from the same origin if 'self' may run, else not at all (with the reason, for the log).
- Where in the body? Before the first `</body>`, found while the body streams past (a tag split
  across two chunks is found too), or at the very end if there is none.
"""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Iterable, Sequence

Headers = Sequence[tuple[bytes, bytes]]

BODY_END = b"</body>"
# Statuses whose body is never a whole page (or is not shown): no content, partial, not modified.
_SKIPPED_STATUSES = frozenset({204, 205, 206, 304})
# Charsets that write ASCII as one byte each, so inserting ASCII bytes keeps the text valid.
_WIDE_CHARSETS = re.compile(r"utf-?(16|32)|ucs-?[24]|utf-?7", re.IGNORECASE)
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
    """Why a response is not a page to inject into (None: it is one)."""
    if status < 200 or status in _SKIPPED_STATUSES:
        return f"status {status}"
    content_types = header(headers, b"content-type")
    if len(content_types) != 1:
        return "no single content-type"
    media_type, *params = (p.strip() for p in content_types[0].split(";"))
    if media_type.lower() != "text/html":
        return "not text/html"
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and _WIDE_CHARSETS.search(value):
            return f"charset {value.strip()}"
    if any(v.strip().lower() not in ("", "identity") for v in header(headers, b"content-encoding")):
        return "compressed"
    if header(headers, b"content-range"):
        return "a range"
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
    """Puts `snippet` before the first `</body>` of a body that arrives in chunks.

    Each chunk goes out as soon as it comes, less a short tail (at most len("</body>") - 1 bytes)
    that may be the start of the tag; the tail goes out with the next chunk, or by itself
    (`release`) if that is slow to come. When the body ends without the tag, the snippet goes at
    the end.
    """

    def __init__(self, snippet: bytes) -> None:
        self.snippet = snippet
        self.done = False
        self._tail = b""

    @property
    def holding(self) -> bool:
        """Whether bytes of the body are held back, waiting for the next chunk."""
        return bool(self._tail)

    def release(self) -> bytes:
        """The held-back bytes, to send now; the tag they may have started is given up."""
        tail, self._tail = self._tail, b""
        return tail

    def feed(self, chunk: bytes, *, last: bool) -> bytes:
        """The bytes to send for this chunk (the last one: `last`)."""
        if self.done:
            return chunk
        data = self._tail + chunk
        at = data.lower().find(BODY_END)
        if at >= 0:
            self.done = True
            self._tail = b""
            return data[:at] + self.snippet + data[at:]
        if last:
            self.done = True
            self._tail = b""
            return data + self.snippet
        keep = _partial_tag_length(data)
        self._tail = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]


def _partial_tag_length(data: bytes) -> int:
    """How many bytes at the end of `data` could be the start of `</body>`."""
    lowered = data[-(len(BODY_END) - 1) :].lower()
    for size in range(min(len(lowered), len(BODY_END) - 1), 0, -1):
        if BODY_END.startswith(lowered[-size:]):
            return size
    return 0
