"""uvicorn's HTTP protocols (h11 and httptools), taught to stop at a request boundary.

While its server drains, a connection serves no new request. At its next request boundary (the
response complete, the request fully read, nothing flushing) it is passed on, with the bytes it
read but has not served: half a request, or requests pipelined behind the one it answered. The
new generation adopts it and feeds it those bytes first, so every request that was not yet
started when the reload was announced runs the new code, and none is cut.

h11 keeps unread bytes in its own buffer and never parses past the request in flight, so it only
has to be kept from starting the next request (here). httptools parses everything it is given, so
it is given one request at a time (httptoolsprotocol.py). What both share, passing a connection
on at its boundary, is drainable.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http import h11_impl

from .drainable import DrainableConnection, DrainSwitch, HandOff


class _StoppingConnection(h11.Connection):
    """h11's connection that, while its protocol drains, stays at the end of the request it served
    instead of starting the next one: the states stay DONE, the next bytes stay in its buffer."""

    def __init__(self, stop_here: Callable[[], bool], max_incomplete_event_size: int | None) -> None:
        if max_incomplete_event_size is None:
            super().__init__(h11.SERVER)
        else:
            super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self._stop_here = stop_here

    def start_next_cycle(self) -> None:
        if not self._stop_here():
            super().start_next_cycle()


class H11Protocol(DrainableConnection, h11_impl.H11Protocol):
    """uvicorn's h11 protocol, kept from starting the next request once its server drains."""

    def __init__(self, *args: Any, draining: DrainSwitch, pending: bytes = b"", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _StoppingConnection(self._stop_at_boundary, self.config.h11_max_incomplete_event_size)
        self._draining = draining
        self._pending = pending

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._joined()

    def _buffer(self, data: bytes) -> None:
        if data:  # to h11, no bytes means the end of the stream
            self.conn.receive_data(data)

    def _parse_buffered(self) -> None:
        self.handle_events()

    def _stop_at_boundary(self) -> bool:
        if self._drain_started:
            self._try_pass_on_soon()
        return self._drain_started

    def _at_boundary(self) -> bool:
        if self.cycle is not None and not self.cycle.response_complete:
            return False
        states = (self.conn.our_state, self.conn.their_state)
        return states in ((h11.IDLE, h11.IDLE), (h11.DONE, h11.DONE))

    def _unstarted(self) -> bytes:
        return bytes(self.conn.trailing_data[0])

    def _close_after_response(self) -> None:
        self.shutdown()


def _httptools_protocols() -> dict[type[asyncio.Protocol], Callable[..., asyncio.Protocol]]:
    try:
        from uvicorn.protocols.http import httptools_impl

        from .httptoolsprotocol import HttpToolsProtocol
    except ImportError:  # httptools is optional
        return {}
    return {httptools_impl.HttpToolsProtocol: HttpToolsProtocol}


_RELOADABLE: dict[type[asyncio.Protocol], Callable[..., asyncio.Protocol]] = {
    h11_impl.H11Protocol: H11Protocol,
    **_httptools_protocols(),
}


def reloadable(protocol_class: type[asyncio.Protocol]) -> Callable[..., asyncio.Protocol] | None:
    """Our subclass of one of uvicorn's HTTP protocols (it takes `draining` and `pending` too),
    or None for any other protocol class."""
    return _RELOADABLE.get(protocol_class)


def drain(connection: object, hand_off: HandOff | None) -> bool:
    """`drain()` one of our connections; False for any other protocol (a websocket, say)."""
    if not isinstance(connection, DrainableConnection):
        return False
    connection.drain(hand_off)
    return True
