"""The one wire of every channel: JSON lines, each of which may carry descriptors (SCM_RIGHTS).

Every socketpair between the supervisor and its children speaks it: a worker's control channel
(`_channel.Channel`), its debug channel (the terminal lent to `breakpoint()`), its hand-off
channel (`_handoff.py`: idle keep-alive connections) and a template's channel (fork requests,
their pidfds). A message is one JSON object on one line, with a string "type". A message that
carries descriptors says how many (`"fds": n`) and is sent with them in one `sendmsg`; on a
stream socket the kernel delivers them no later than the first byte of that `sendmsg`, so the
receiver queues every descriptor it gets and gives each line the next n.

A channel's peer may run the developer's code, so what arrives is checked here: a line that is
not a JSON object with a type, a line longer than the channel's limit, a message whose
descriptors did not come, descriptors no message announced: each is a `ProtocolError`, and the
reader ends that channel (and the child behind it), never itself. What the fields of a message
mean is checked by its decoder (`_protocol.py`).

Stdlib only: the template imports it before anything else.
"""

from __future__ import annotations

import array
import collections
import contextlib
import json
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

MAX_LINE = 1 << 20  # 1 MiB: what the supervisor reads from a child (a `files` report is chunked)
# What a child reads from the supervisor, which it trusts: no limit that grows with the app (the
# settings carry the preload list, one name per module the app imported).
TRUSTED_MAX_LINE = 1 << 30
MAX_FDS = 8  # descriptors one read may carry; more are the kernel's to close (MSG_CTRUNC)
READ_SIZE = 65536
LOST = -1  # in the queue: the descriptors of one `sendmsg` the kernel could not deliver

# One message as it travels: its JSON object, and the descriptors that came with it.
Received = tuple[dict[str, Any], list[int]]


class ProtocolError(Exception):
    """The peer sent something that is not a message of this wire (or of this channel)."""


def frame(message: dict[str, Any], fds: int = 0, limit: int | None = None) -> bytes:
    """`message` as one line, announcing `fds` descriptors. ASCII escapes keep paths that are not
    UTF-8 (surrogate escapes) lossless. ProtocolError if the line is over `limit` bytes."""
    line = json.dumps({**message, "fds": fds} if fds else message, separators=(",", ":"))
    data = line.encode("ascii") + b"\n"
    if limit is not None and len(data) > limit:
        raise ProtocolError(f"a {message.get('type')!r} message of {len(data)} bytes is over the limit.")
    return data


def rights(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    """The ancillary data that passes `fds` with a `sendmsg`."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []


def send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """Send one message with its descriptors (all of it, or OSError). A blocking socket waits; a
    non-blocking one raises BlockingIOError if the line does not fit at once."""
    send_line(sock, frame(message, len(fds)), fds)


def send_line(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """`send` for a line framed already (it announces `len(fds)`)."""
    sent = sock.sendmsg([data], rights(fds))
    if sent < len(data):
        sock.sendall(data[sent:])


def parse(line: bytes) -> dict[str, Any]:
    """The JSON object on one line (without its newline), which must have a string "type"."""
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"a line that is not JSON (or nested too deep): {line[:80]!r}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"a line that is not a message (a JSON value not an object): {line[:80]!r}")
    if not isinstance(message.get("type"), str):
        raise ProtocolError(f"an unknown message type {message.get('type')!r}")
    return message


class Lines:
    """Messages and their descriptors, from whatever pieces they arrive in (no I/O)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no newline
        self._fds: collections.deque[int] = collections.deque()

    @property
    def partial(self) -> bool:
        """Whether part of a line is buffered (end of file now cuts a message)."""
        return bool(self._buffer)

    def feed(self, data: bytes, fds: Sequence[int] = (), lost: bool = False) -> None:
        """Bytes read, the descriptors that came with them, and whether some could not (MSG_CTRUNC)."""
        self._buffer += data
        self._fds.extend(fds)
        if lost:
            self._fds.append(LOST)

    def next(self) -> Received | None:
        """The next complete message, or None until more arrives; ProtocolError for a bad line
        (dropped: the ones after it can still be read)."""
        end = self._buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buffer)
            if len(self._buffer) > self.max_line:
                raise ProtocolError(f"a line longer than {self.max_line} bytes")
            if not self._buffer and self._fds:
                self.close()
                raise ProtocolError("descriptors that no message announced")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        if len(line) > self.max_line:
            raise ProtocolError(f"a line longer than {self.max_line} bytes")
        message = parse(line)
        return message, self._take(message)

    def _take(self, message: dict[str, Any]) -> list[int]:
        """The descriptors `message` announced; none if the kernel lost them (the ones that did
        come are closed: the message is whole or it has none)."""
        count = message.get("fds", 0)
        if type(count) is not int or not 0 <= count <= len(self._fds):
            raise ProtocolError(f"a {message['type']!r} message without the descriptors it announces")
        fds = [self._fds.popleft() for _ in range(count)]
        if LOST in fds:
            _close_all(fds)
            return []
        return fds

    def rest(self) -> bytes:
        """The bytes after the messages taken so far (they go on to whoever reads on)."""
        rest, self._buffer, self._scanned = bytes(self._buffer), bytearray(), 0
        return rest

    def close(self) -> None:
        """Close the descriptors received but not handed out."""
        _close_all(self._fds)
        self._fds.clear()


class LineReceiver(Lines):
    """`Lines` read from a socket: blocking (a child's loop), or not (on an event loop)."""

    def __init__(self, sock: socket.socket, max_line: int = MAX_LINE, read_size: int = READ_SIZE) -> None:
        super().__init__(max_line)
        self.sock = sock
        self._read_size = read_size

    def read(self) -> bool:
        """Read once into the buffer; False at end of file. BlockingIOError when a non-blocking
        socket has nothing."""
        space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
        data, ancillary, flags, _address = self.sock.recvmsg(self._read_size, space)
        fds = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        self.feed(data, fds, lost=bool(flags & socket.MSG_CTRUNC))
        return bool(data)

    def receive(self) -> list[Received] | None:
        """Read once: the complete messages so far, each with its descriptors; None at end of
        file. ProtocolError for garbage (the descriptors of the messages before it are closed),
        BlockingIOError when a non-blocking socket has nothing and no line is waiting."""
        try:
            if not self.read():
                return None
        except BlockingIOError:
            if b"\n" not in self._buffer:
                raise  # else: lines fed before are complete, those
        received: list[Received] = []
        try:
            while (message := self.next()) is not None:
                received.append(message)
        except ProtocolError:
            _close_all(fd for _, fds in received for fd in fds)
            raise
        return received


def _close_all(fds: Iterable[int]) -> None:
    for fd in list(fds):
        if fd != LOST:
            with contextlib.suppress(OSError):
                os.close(fd)
