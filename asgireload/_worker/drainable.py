"""What a connection does when its server drains: it starts no new request, and at its next
request boundary (the response complete, the request fully read, nothing flushing) it is passed
on with the bytes it read but has not served, or closed there. Shared by the two HTTP protocols
(httpprotocols.py, httptoolsprotocol.py); each says where its boundary is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

HandOff = Callable[[int, bytes], bool]  # a descriptor and its unserved bytes; True once passed on


class DrainSwitch:
    """Shared by a server and its connections: set once the server drains, seen by late arrivals."""

    def __init__(self) -> None:
        self.active = False
        self.hand_off: HandOff | None = None

    def start(self, hand_off: HandOff | None) -> None:
        self.active = True
        self.hand_off = hand_off


class DrainableConnection:
    """A mixin of both HTTP protocols: the drain state, and passing the connection on at a boundary.

    The protocol says where its boundary is (`_at_boundary`), what it read but did not start
    (`_unstarted`), and how it takes bytes in without parsing them (`_buffer`)."""

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
