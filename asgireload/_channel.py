"""A worker's control channel on the running event loop, either end: messages of `_protocol.py`
over the wire of `_wire.py`, written through asyncio's buffered transport."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from ._protocol import Kinds, Message, ProtocolError, encode, message_of
from ._wire import MAX_LINE, READ_SIZE, Lines


class Channel:
    """Messages over one end of a socketpair, on the running event loop."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        allowed: Kinds,
        max_line: int = MAX_LINE,
        send_limit: int = MAX_LINE,
    ):
        self._reader = reader
        self._writer = writer
        self._allowed = allowed
        self._lines = Lines(max_line)
        self._send_limit = send_limit

    @classmethod
    async def open(
        cls,
        sock: socket.socket,
        allowed: Kinds,
        *,
        max_line: int = MAX_LINE,
        send_limit: int = MAX_LINE,
    ) -> Channel:
        """`max_line` bounds what we read, `send_limit` what we write (the peer's `max_line`)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=READ_SIZE)
        return cls(reader, writer, allowed, max_line, send_limit)

    def feed(self, data: bytes) -> None:
        """Bytes of the stream read before this channel existed."""
        self._lines.feed(data)

    async def receive(self) -> Message | None:
        """The next message, or None at end of file. Raises ProtocolError on garbage."""
        while (received := self._lines.next()) is None:
            try:
                data = await self._reader.read(READ_SIZE)
            except ConnectionError:
                return None
            if not data:
                if self._lines.partial:
                    raise ProtocolError("the channel closed in the middle of a message")
                return None
            self._lines.feed(data)
        return message_of(received[0], self._allowed)

    def send(self, message: Message) -> None:
        """Queue a message; a closed channel drops it (the reader sees EOF and acts on that)."""
        if self._writer.is_closing():
            return
        self._writer.write(encode(message, self._send_limit))

    async def flush(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    def close(self) -> None:
        self._writer.close()
