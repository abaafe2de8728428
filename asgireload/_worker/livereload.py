"""Live reload, worker side: the script in every page, and the event stream it listens to.

`LiveReload` wraps the app a worker serves (the user's app, or the error page) when the server is
bound to loopback and live reload is on. For requests addressed to a loopback Host name (the
error page's rule, see `is_loopback_host`) it:

- answers `/__asgireload__/` itself, before the app: the page script, the SharedWorker script,
  and `events`, a stream of server-sent events whose first event says which run of asgireload
  and which generation serve (and whether that is the error page);
- adds one `<script>` tag to HTML responses (see injection.py for which, and where).

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
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Any

from . import injection
from .errorpage import is_loopback_host

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
# How long a tail that may start `</body>` waits for the app's next chunk before it goes out.
HOLD_BACK_SECONDS = 0.05
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
        args = record.args
        return not (isinstance(args, tuple) and len(args) >= 3 and str(args[2]).startswith(PREFIX))

    logging.getLogger("uvicorn.access").addFilter(not_ours)


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def adds_script(scope: Scope) -> bool:
    """Whether a response to this request may get the script (if it is HTML the policy allows).

    Only requests addressed to a loopback Host (the error page's rule, see `is_loopback_host`),
    and only page loads: GET (HEAD has no body; a page answering a POST would be posted again by
    a reload), neither a fragment nor a fetch (see `injection.why_not_navigation`).
    """
    if scope.get("type") != "http" or scope.get("method") != "GET":
        return False
    if not is_loopback_host(_one_host(scope)):
        return False
    headers = [(bytes(k), bytes(v)) for k, v in scope.get("headers") or ()]
    return injection.why_not_navigation(headers) is None


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not is_loopback_host(_one_host(scope)):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if isinstance(path, str) and path.startswith(PREFIX):
            await self._serve_channel(path, scope, receive, send)
            return
        if not adds_script(scope):
            await self.app(scope, receive, send)
            return
        extensions = scope.get("extensions")
        if isinstance(extensions, dict) and any(name in extensions for name in _UNSUPPORTED_EXTENSIONS):
            # A file sent by path could not be rewritten on its way: have the app send bytes.
            kept = {k: v for k, v in extensions.items() if k not in _UNSUPPORTED_EXTENSIONS}
            scope = {**scope, "extensions": kept}
        injecting = _Injecting(send, self._attributes, path)
        try:
            await self.app(scope, receive, injecting.send)
        finally:
            injecting.close()

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


class _Injecting:
    """The `send` of one response: adds the script on the way if the response is a page."""

    def __init__(self, send: Send, attributes: dict[str, str], path: str) -> None:
        self._send = send
        self._attributes = attributes
        self._path = path
        self._injector: injection.BodyInjector | None = None
        self._lock = asyncio.Lock()  # the app's sends and a late flush go out one at a time
        self._flusher: asyncio.Task[None] | None = None

    async def send(self, message: Message) -> None:
        self._cancel_flush()
        async with self._lock:
            kind = message.get("type")
            if kind == "http.response.start":
                message = self._start(message)
            elif kind == "http.response.body" and self._injector is not None:
                last = not message.get("more_body", False)
                body = self._injector.feed(bytes(message.get("body", b"")), last=last)
                message = {**message, "body": body}
                if last:
                    self._injector = None
            await self._send(message)
            if self._injector is not None and self._injector.holding:
                self._flusher = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self) -> None:
        """Send the held-back tail if the app sends nothing more for a moment (an endless stream).

        The tail might have been the start of `</body>`; if it was, the script goes at the end.
        """
        await asyncio.sleep(HOLD_BACK_SECONDS)
        await asyncio.shield(self._flush_now())  # once begun, a send is never cut in half

    async def _flush_now(self) -> None:
        async with self._lock:
            if self._injector is not None and self._injector.holding:
                tail = self._injector.release()
                await self._send({"type": "http.response.body", "body": tail, "more_body": True})

    def _cancel_flush(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        self._flusher = None

    def close(self) -> None:
        """The app returned (or failed): nothing may be sent for it any more."""
        self._cancel_flush()

    def _start(self, message: Message) -> Message:
        headers = list(message.get("headers") or ())
        status = int(message.get("status", 200))
        if injection.why_not_html(status, headers) is not None:
            return message
        place, reason = injection.placement(injection.header(headers, b"content-security-policy"))
        if place is None:
            logger.debug(
                "Live reload left %s alone: its Content-Security-Policy blocks the script (%s).",
                self._path,
                reason,
            )
            return message
        tag = injection.script_tag(place, self._attributes, f"{CLIENT_PATH}?v={VERSION}")
        fixed, ok = injection.fixed_headers(headers, len(tag))
        if not ok:
            return message
        self._injector = injection.BodyInjector(tag)
        return {**message, "headers": fixed}
