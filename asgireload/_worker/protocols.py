"""uvicorn's HTTP protocols (h11 and httptools), taught to stop at a request boundary.

While its server drains, a connection serves no new request. At its next request boundary (the
response complete, the request fully read, nothing flushing) it is passed on, with the bytes it
read but has not served: half a request, or requests pipelined behind the one it answered. The
new generation adopts it and feeds it those bytes first, so every request that was not yet
started when the reload was announced runs the new code, and none is cut.

h11 keeps unread bytes in its own buffer and never parses past the request in flight, so it only
has to be kept from starting the next request. httptools parses everything it is given, so here it
is given one request at a time: `RequestFraming` finds where each request ends (the head up to its
empty line, then Content-Length or chunked framing), and what follows waits unparsed until the
response is complete. The parser's own callbacks confirm every boundary; where they disagree with
the framing (malformed input), the connection is closed at the end of its response instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http import h11_impl
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

HandOff = Callable[[int, bytes], bool]  # a descriptor and its unserved bytes; True once passed on

MAX_HEAD = 64 * 1024  # bytes of a request head kept while waiting for its end
MAX_LINE = 8 * 1024  # bytes of a chunk-size or trailer line


class DrainSwitch:
    """Shared by a server and its connections: set once the server drains, seen by late arrivals."""

    def __init__(self) -> None:
        self.active = False
        self.hand_off: HandOff | None = None

    def start(self, hand_off: HandOff | None) -> None:
        self.active = True
        self.hand_off = hand_off


class FramingError(Exception):
    """The bytes do not frame as HTTP/1.1 requests (the parser will say how)."""


_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER = range(5)


class RequestFraming:
    """Where each request ends in a stream of HTTP/1.1 requests; no I/O, no parsing beyond framing."""

    def __init__(self) -> None:
        self._state = _HEAD
        self._remaining = 0
        self._line = bytearray()

    def take(self, data: bytes | bytearray) -> tuple[int, bool]:
        """How many bytes from the start of `data` belong to the request under way, and whether
        they end it. (0, False): the head is not complete yet. Raises FramingError."""
        used = 0
        while used < len(data):
            if self._state == _HEAD:
                start = used
                while data.startswith(b"\r\n", start):  # empty lines before a request line are allowed
                    start += 2
                end = data.find(b"\r\n\r\n", start)
                if end < 0:
                    if len(data) - start > MAX_HEAD:
                        raise FramingError(f"no end of the request head in {len(data) - start} bytes")
                    _check_partial_head(bytes(data[start:]))  # else the parser would never see it
                    return used, False
                used = end + 4
                chunked, length = _body_framing(bytes(data[start:end]))
                if chunked:
                    self._state = _CHUNK_SIZE
                elif length:
                    self._state, self._remaining = _BODY, length
                else:
                    return used, True
            elif self._state in (_BODY, _CHUNK_DATA):
                step = min(self._remaining, len(data) - used)
                used += step
                self._remaining -= step
                if not self._remaining:
                    if self._state == _BODY:
                        self._state = _HEAD
                        return used, True
                    self._state = _CHUNK_SIZE
            else:
                newline = data.find(b"\n", used)
                if newline < 0:
                    self._line += data[used:]
                    if len(self._line) > MAX_LINE:
                        raise FramingError(f"a chunk line longer than {MAX_LINE} bytes")
                    return len(data), False
                self._line += data[used : newline + 1]
                used = newline + 1
                line = bytes(self._line)
                self._line.clear()
                if self._state == _TRAILER:
                    if line == b"\r\n":
                        self._state = _HEAD
                        return used, True
                    continue
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise FramingError(f"a chunk size that is not hexadecimal: {line[:40]!r}") from None
                if size:
                    self._state, self._remaining = _CHUNK_DATA, size + 2  # the data, then CRLF
                else:
                    self._state = _TRAILER
        return used, False


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_CONTROL = frozenset(range(32)) - {9, 10, 13}
MAX_METHOD = 32


def _check_partial_head(head: bytes) -> None:
    """Raise FramingError for a head that can never end well (a TLS hello, bare newlines,
    control bytes), so the parser answers it with 400 now instead of waiting for more."""
    head = head.lstrip(b"\r\n")  # empty lines may come first, the last one maybe half read
    method, space, _ = head.partition(b" ")
    if (not space and len(method) > MAX_METHOD) or any(
        byte not in _TOKEN for byte in method[: MAX_METHOD + 1]
    ):
        raise FramingError(f"not an HTTP request line: {head[:40]!r}")
    if any(byte in _CONTROL for byte in head) or b"\n" in head.replace(b"\r\n", b""):
        raise FramingError(f"a control byte or a bare newline in a request head: {head[:40]!r}")


def _body_framing(head: bytes) -> tuple[bool, int]:
    """(chunked, content length) from a request head."""
    chunked, length = False, 0
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        if name == b"content-length":
            if not value.strip().isdigit():
                raise FramingError(f"a Content-Length that is not a number: {value[:40]!r}")
            length = int(value.strip())
        elif name == b"transfer-encoding":
            chunked = value.strip().lower().endswith(b"chunked")
    return chunked, 0 if chunked else length


class _PassOn:
    """What both protocols share: the drain state, and passing the connection on at a boundary."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    _draining: DrainSwitch
    _pending: bytes = b""
    _drain_started = False
    _hand_off: HandOff | None = None
    _gone = False

    def _joined(self) -> None:
        """Called once the transport is set. The bytes a connection came with are read first; but
        if the server drains already, not one request starts here: it moves on, bytes and all."""
        pending, self._pending = self._pending, b""
        self._buffer(pending)
        if self._draining.active:
            self.drain(self._draining.hand_off)
        elif pending:
            self._parse_buffered()

    def _buffer(self, data: bytes) -> None:
        """Take bytes in as read, without parsing them yet."""
        raise NotImplementedError

    def _parse_buffered(self) -> None:
        raise NotImplementedError

    def drain(self, hand_off: HandOff | None) -> None:
        """Start no new request: pass the connection on at its next request boundary (or close it
        there, without `hand_off`). Called again, it only looks whether the boundary came."""
        if not self._drain_started:
            self._drain_started = True
            self._hand_off = hand_off
            if not self._trackable() or self._encrypted():
                # A TLS session cannot move to another process: this connection finishes its
                # request here and closes, telling the client (Connection: close) if it still can.
                self._close_after_response()
                return
        self._try_pass_on()

    def _encrypted(self) -> bool:
        transport = self.transport
        return transport is not None and transport.get_extra_info("ssl_object") is not None

    def _trackable(self) -> bool:
        return True

    def _at_boundary(self) -> bool:
        raise NotImplementedError

    def _unstarted(self) -> bytes:
        raise NotImplementedError

    def _close_after_response(self) -> None:
        raise NotImplementedError

    def _try_pass_on_soon(self) -> None:
        self.loop.call_soon(self._try_pass_on)

    def _try_pass_on(self) -> None:
        transport = self.transport
        if not self._drain_started or self._gone or transport is None or transport.is_closing():
            return
        if not self._at_boundary():
            return
        transport.pause_reading()  # nothing more is read here: what comes is the next generation's
        if transport.get_write_buffer_size():
            return  # the response is still flushing: the server's drain loop looks again
        self._gone = True
        sock = transport.get_extra_info("socket")
        # A TLS session's state lives in this process: such a connection cannot move, it closes.
        movable = sock is not None and transport.get_extra_info("ssl_object") is None
        if self._hand_off is not None and movable and self._hand_off(sock.fileno(), self._unstarted()):
            transport.abort()  # closes this process's descriptor only: the connection lives on
        else:
            transport.close()


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


class H11Protocol(_PassOn, h11_impl.H11Protocol):
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
    except ImportError:  # httptools is optional
        return {}

    class HttpToolsProtocol(_PassOn, httptools_impl.HttpToolsProtocol):
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
    if not isinstance(connection, _PassOn):
        return False
    connection.drain(hand_off)
    return True
