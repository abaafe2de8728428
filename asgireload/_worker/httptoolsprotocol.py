"""uvicorn's httptools protocol, taught to stop at a request boundary (see httpprotocols.py).

httptools parses everything it is given, so here it is given one request at a time:
`RequestFraming` finds where each request ends, and what follows waits unparsed until the
response is complete. The parser's own callbacks confirm every boundary; where they disagree with
the framing (malformed input), the connection is closed at the end of its response instead.

Importing this module raises ImportError when httptools (optional) is not installed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from .drainable import DrainableConnection, DrainSwitch
from .requestframing import FramingError, RequestFraming


class HttpToolsProtocol(DrainableConnection, httptools_impl.HttpToolsProtocol):
    """uvicorn's httptools protocol, fed one request at a time, so that it can stop at a boundary."""

    def __init__(self, *args: Any, draining: DrainSwitch, pending: bytes = b"", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._draining = draining
        self._pending = pending
        self._unparsed = b""  # read, not yet given to the parser
        self._framing = RequestFraming()
        self._in_message = False  # the parser is inside a request (per its own callbacks)
        self._completed = 0  # requests the parser has read to their end
        self._lost_track = False  # the framing and the parser disagreed: no more handing over

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._joined()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self._buffer(data)
        self._feed()

    def _buffer(self, data: bytes) -> None:
        self._unparsed = self._unparsed + data if self._unparsed else data

    def _parse_buffered(self) -> None:
        self._feed()

    def on_message_begin(self) -> None:
        self._in_message = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._in_message = False
        self._completed += 1
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._unparsed or self._drain_started:
            self._feed()  # at once, as uvicorn starts a pipelined request
            self._try_pass_on()

    def _running(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _feed(self) -> None:
        """Give the parser the bytes of one request at a time, never a byte of the next one
        while a request runs (they wait in `_unparsed`, and travel with a handed-over connection)."""
        while self._unparsed and self.parser is not None and not self.transport.is_closing():
            if self._running() and not self._in_message:
                if len(self._unparsed) > HIGH_WATER_LIMIT:
                    self.flow.pause_reading()  # resumed when the response is complete
                return
            if self._drain_started and self._at_boundary():
                self._try_pass_on()
                return
            size, ends = self._next_piece()
            if not size:
                return  # half a request head: kept until the rest comes
            piece, self._unparsed = self._unparsed[:size], self._unparsed[size:]
            completed = self._completed
            httptools_impl.HttpToolsProtocol.data_received(self, piece)
            done = self._completed - completed
            agreed = done == 1 and not self._in_message if ends else done == 0
            if not agreed:
                self._lost_track = True
            upgraded = self.transport.get_protocol()
            if upgraded is not self:  # a websocket now: what follows is its data
                rest, self._unparsed = self._unparsed, b""
                if rest:
                    upgraded.data_received(rest)  # type: ignore[attr-defined]
                return

    def _next_piece(self) -> tuple[int, bool]:
        if not self._lost_track:
            try:
                size, ends = self._framing.take(self._unparsed)
            except FramingError:
                self._lost_track = True
            else:
                if size or not self._in_message:
                    return size, ends
                self._lost_track = True  # the parser is inside a request the framing thinks ended
        return len(self._unparsed), False

    def _trackable(self) -> bool:
        return not self._lost_track

    def _at_boundary(self) -> bool:
        return not (self._running() or self._in_message or self.pipeline or self._lost_track)

    def _unstarted(self) -> bytes:
        return self._unparsed

    def _close_after_response(self) -> None:
        self.shutdown()
