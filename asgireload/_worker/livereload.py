"""Live reload, worker side: the script in every page, and the event stream it listens to.

`LiveReload` wraps the app a worker serves (the user's app, or the error page) when the server is
bound to loopback and live reload is on. For requests addressed to a loopback Host name (the
error page's rule, see `is_loopback_host`) it:

- answers `/__asgireload__/` itself, before the app (below the root path, if there is one): the
  page script, the SharedWorker script, and `events`, a stream of server-sent events whose first
  event says which run of asgireload and which generation serve (and whether that is the error
  page);
- adds one `<script>` tag to the pages it serves to page loads (see pagesend.py and injection.py
  for which, and where), asking the app for them uncompressed, and says once why a page gets none.

`Hub` holds the open streams. The supervisor's `assets` message becomes an event on each; a
drain ends them all at once, so they never hold an old generation up, and the pages reconnect to
the new one, whose first event makes them reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Any

from . import injection
from .errorpage import is_loopback_host
from .pagesend import PageSend

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("asgireload")

PREFIX = "/__asgireload__/"
CLIENT_PATH = PREFIX + "client.js"
WORKER_PATH = PREFIX + "worker.js"
EVENTS_PATH = PREFIX + "events"
_UNSUPPORTED_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopysend")


def _script(*names: str) -> bytes:
    folder = resources.files(__package__ or "asgireload._worker") / "static"
    return b"\n".join((folder / name).read_bytes() for name in names)


CLIENT = _script("stream.js", "page.js")
WORKER = _script("stream.js", "sharedworker.js")
# In the scripts' URLs: a page reload takes them from the browser's cache, and a new asgireload
# (other scripts) gets new URLs, so no stale copy can be used.
VERSION = hashlib.sha256(CLIENT + WORKER).hexdigest()[:16]


class Hub:
    """The open event streams of this worker, and what to tell them."""

    def __init__(self, run: str, generation: int, *, error_page: bool) -> None:
        self.hello = {"type": "hello", "run": run, "generation": generation, "error_page": error_page}
        self._queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._ids = itertools.count(1)
        self.closed = False

    def __len__(self) -> int:
        return len(self._queues)

    def publish(self, event: dict[str, Any]) -> None:
        """Send an event to every open stream."""
        event = {**event, "id": next(self._ids)}
        for queue in self._queues:
            queue.put_nowait(event)

    def close(self) -> None:
        """End every stream now (the generation drains), and any opened from now on at once."""
        self.closed = True
        for queue in self._queues:
            queue.put_nowait(None)

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        if self.closed:
            queue.put_nowait(None)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)


def quiet_access_log() -> None:
    """Keep the pages' own requests under /__asgireload__/ out of the access log."""

    def not_ours(record: logging.LogRecord) -> bool:
        args = record.args  # (client, method, path with the root path and query, ...)
        return not (isinstance(args, tuple) and len(args) >= 3 and PREFIX in str(args[2]))

    logging.getLogger("uvicorn.access").addFilter(not_ours)


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def adds_script(scope: Scope) -> bool:
    """Whether a response to this request may get the script (if it is a page that can take it).

    Only requests addressed to a loopback Host (the error page's rule, see `is_loopback_host`),
    and only page loads: GET, and HEAD to answer what GET would (a page answering a POST would be
    posted again by a reload), neither a fragment nor a fetch (see `injection.why_not_navigation`).
    """
    if scope.get("type") != "http" or scope.get("method") not in ("GET", "HEAD"):
        return False
    if not is_loopback_host(_one_host(scope)):
        return False
    headers = [(bytes(k), bytes(v)) for k, v in scope.get("headers") or ()]
    return injection.why_not_navigation(headers) is None


def channel_path(scope: Scope) -> str | None:
    """The path under /__asgireload__/ that a request asks for (None: it is the app's).

    Below a root path, uvicorn puts the root path before the path the request names, whether a
    proxy took it off or the browser asked the server directly for the root path's URL: at most
    two copies of it come before ours.
    """
    path, root = scope.get("path"), scope.get("root_path") or ""
    if not isinstance(path, str) or not isinstance(root, str):
        return None
    for _ in range(3):
        if path.startswith(PREFIX):
            return path
        if not root or not path.startswith(root + "/"):
            return None
        path = path[len(root) :]
    return None


def _uncompressed(scope: Scope) -> Scope:
    """A browser's page load asks the app for its page uncompressed, so that the script can go in.

    On loopback, compression gains nothing; a compressed page (GZipMiddleware compresses every
    page over 500 bytes for a browser) would have to pass without the script.
    """
    headers = [(bytes(k), bytes(v)) for k, v in scope.get("headers") or ()]
    if not any("text/html" in accept.lower() for accept in injection.header(headers, b"accept")):
        return scope  # not a browser's page load: it gets the app's answer to what it asked
    if not injection.header(headers, b"accept-encoding"):
        return scope
    kept = [(k, v) for k, v in headers if k.lower() != b"accept-encoding"]
    return {**scope, "headers": [*kept, (b"accept-encoding", b"identity")]}


class LiveReload:
    """The ASGI wrapper: the channel under /__asgireload__/, and the script in HTML responses."""

    def __init__(self, app: ASGIApp, hub: Hub) -> None:
        self.app = app
        self.hub = hub
        self._attributes = {
            "run": str(hub.hello["run"]),
            "generation": str(hub.hello["generation"]),
            "error": str(int(bool(hub.hello["error_page"]))),
        }
        self._said: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not is_loopback_host(_one_host(scope)):
            await self.app(scope, receive, send)
            return
        path = channel_path(scope)
        if path is not None:
            await self._serve_channel(path, scope, receive, send)
            return
        if not adds_script(scope):
            await self.app(scope, receive, send)
            return
        scope = _uncompressed(scope)
        extensions = scope.get("extensions")
        if isinstance(extensions, dict) and any(name in extensions for name in _UNSUPPORTED_EXTENSIONS):
            # A file sent by path could not be rewritten on its way: have the app send bytes.
            kept = {k: v for k, v in extensions.items() if k not in _UNSUPPORTED_EXTENSIONS}
            scope = {**scope, "extensions": kept}
        page = PageSend(send, lambda place: self._tag(scope, place), lambda why: self._say(scope, why))
        try:
            await self.app(scope, receive, page.send)
        finally:
            page.close()  # no await after the app, unless needed: pdb's `r` would stop at it
            if page.held:
                await page.send_held()

    def _tag(self, scope: Scope, place: injection.Placement) -> bytes:
        root = urllib.parse.quote(str(scope.get("root_path") or ""), safe="/")
        return injection.script_tag(place, self._attributes, f"{root}{CLIENT_PATH}?v={VERSION}")

    def _say(self, scope: Scope, why: str) -> None:
        """Why a page gets no script: once for each reason (a new generation says it again)."""
        if why not in self._said:
            self._said.add(why)
            request = f"{scope.get('method')} {scope.get('path')}"
            logger.info("Live reload: no script in %s: %s; it does not reload by itself.", request, why)

    async def _serve_channel(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        if path == EVENTS_PATH and scope.get("method") == "GET":
            await self._stream(receive, send)
        elif path in (CLIENT_PATH, WORKER_PATH) and scope.get("method") in ("GET", "HEAD"):
            body = CLIENT if path == CLIENT_PATH else WORKER
            head = scope.get("method") == "HEAD"
            versioned = scope.get("query_string") == f"v={VERSION}".encode()
            cache = b"public, max-age=31536000, immutable" if versioned else b"no-store"
            await _respond(send, 200, b"text/javascript; charset=utf-8", body, head=head, cache=cache)
        else:
            await _respond(send, 404, b"text/plain; charset=utf-8", b"Not a live reload endpoint.\n")

    async def _stream(self, receive: Receive, send: Send) -> None:
        """Server-sent events until the client leaves or the generation drains."""
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        with self.hub.subscribe() as queue:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": _event(self.hub.hello), "more_body": True})
            left = asyncio.ensure_future(_disconnected(receive))
            next_event: asyncio.Future[dict[str, Any] | None] | None = None
            try:
                while True:
                    next_event = asyncio.ensure_future(queue.get())
                    await asyncio.wait({left, next_event}, return_when=asyncio.FIRST_COMPLETED)
                    if left.done():
                        return  # the page went away: nothing to end
                    event = next_event.result()
                    if event is None:
                        break
                    await send({"type": "http.response.body", "body": _event(event), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                left.cancel()
                if next_event is not None:
                    next_event.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive()).get("type") != "http.disconnect":
        pass


async def _respond(
    send: Send,
    status: int,
    content_type: bytes,
    body: bytes,
    *,
    head: bool = False,
    cache: bytes = b"no-store",
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", cache),
        (b"x-content-type-options", b"nosniff"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _one_host(scope: Scope) -> bytes | None:
    found = [bytes(v) for k, v in scope.get("headers") or () if bytes(k).lower() == b"host"]
    return found[0] if len(found) == 1 else None
