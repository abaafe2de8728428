"""The `send` of one response to a page load: the live-reload script goes in on the way, if the
response is a page that can take it (see injection.py), and the log says once why not if not.

Two ways through. A response with a Content-Length is held, headers and body, until it is decided
where the script goes (its `</body>`, or its end): the length must be right before the first byte
goes, and the script may still find no place (a page that ends inside a comment). A streamed one
(no length) goes out as it comes, its headers at once; only a tail that may begin `</body>` waits
for the next chunk, and at most HOLD_BACK_SECONDS if that is slow to come (an endless stream).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from . import injection

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

# How long a tail that may start `</body>` waits for the app's next chunk before it goes out.
HOLD_BACK_SECONDS = 0.05
# After this long, a streamed page that has no `</body>` yet is said to be without the script.
STREAMING_NOTICE_SECONDS = 5.0


class PageSend:
    """Wraps the server's `send` for one response; `close()` once the app has returned."""

    def __init__(
        self,
        send: Send,
        tag_for: Callable[[injection.Placement], bytes],
        say: Callable[[str], None],
    ) -> None:
        self._send = send
        self._tag_for = tag_for
        self._say = say  # why this page gets no script (said once per reason, by the caller)
        self._injector: injection.BodyInjector | None = None
        self._held_start: Message | None = None  # with a Content-Length: sent once it is known
        self._lock = asyncio.Lock()  # the app's sends and a late flush go out one at a time
        self._flusher: asyncio.Task[None] | None = None
        self._notice: asyncio.TimerHandle | None = None

    async def send(self, message: Message) -> None:
        self._cancel_flush()
        async with self._lock:
            kind = message.get("type")
            if kind == "http.response.start":
                await self._start(message)
            elif kind == "http.response.body" and self._injector is not None:
                await self._body(self._injector, message)
            else:
                await self._send(message)
            if self._injector is not None and self._injector.holding and self._held_start is None:
                self._flusher = asyncio.ensure_future(self._flush_soon())

    @property
    def held(self) -> bool:
        """Whether the headers are still held (the app ended before the body did)."""
        return self._held_start is not None

    def close(self) -> None:
        """The app returned (or failed): no timer may send or say anything for it any more."""
        self._cancel_flush()
        self._cancel_notice()

    async def send_held(self) -> None:
        """What is still held goes out as the app sent it (after `close`, if `held`)."""
        start, self._held_start = self._held_start, None
        if start is None or self._injector is None:
            return
        held = self._injector.release()
        with contextlib.suppress(Exception):  # the app's own failure, if any, is the one to see
            await self._send(start)
            if held:
                await self._send({"type": "http.response.body", "body": held, "more_body": True})

    async def _start(self, message: Message) -> None:
        headers = list(message.get("headers") or ())
        if injection.why_not_html(int(message.get("status", 200)), headers) is not None:
            await self._send(message)  # not a page: nothing to say
            return
        why = injection.why_untouched(headers)
        if why is None:
            place, blocked = injection.placement(injection.header(headers, b"content-security-policy"))
            if place is not None:
                await self._begin(message, headers, self._tag_for(place))
                return
            why = f"its Content-Security-Policy blocks the script ({blocked})"
        self._say(why)
        await self._send(message)

    async def _begin(self, message: Message, headers: list[tuple[bytes, bytes]], tag: bytes) -> None:
        if injection.header(headers, b"content-length"):
            self._injector = injection.BodyInjector(tag, hold_all=True)
            self._held_start = message
            return
        self._injector = injection.BodyInjector(tag)
        fixed, _ = injection.fixed_headers(headers, 0)  # no validators: see fixed_headers
        await self._send({**message, "headers": fixed})
        self._notice = asyncio.get_running_loop().call_later(STREAMING_NOTICE_SECONDS, self._say_streaming)

    async def _body(self, injector: injection.BodyInjector, message: Message) -> None:
        last = not message.get("more_body", False)
        body = injector.feed(bytes(message.get("body", b"")), last=last)
        if injector.done:
            self._injector = None
            self._cancel_notice()
            if injector.why_not is not None:
                self._say(injector.why_not)
        if self._held_start is not None:
            if not injector.done:
                return  # held until decided
            start, self._held_start = self._held_start, None
            if injector.inserted:
                fixed, _ = injection.fixed_headers(list(start.get("headers") or ()), len(injector.snippet))
                start = {**start, "headers": fixed}
            await self._send(start)
        if body or last:
            await self._send({**message, "body": body})

    def _say_streaming(self) -> None:
        if self._injector is not None:
            self._say(
                f"it has streamed for {STREAMING_NOTICE_SECONDS:g} s without a </body>,"
                " and gets the script only at its end"
            )

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

    def _cancel_notice(self) -> None:
        if self._notice is not None:
            self._notice.cancel()
            self._notice = None
