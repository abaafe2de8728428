"""The wire between the supervisor and the fork server's template: JSON lines carrying descriptors.

A fork request hands the template three descriptors (the new worker's control and handoff
sockets, and the listening socket), and its answer hands back one (a pidfd of the new worker),
so this channel is a Unix stream socket whose lines may carry SCM_RIGHTS. A line that carries
descriptors says how many (`"fds": n`); on a stream socket the kernel delivers them no later
than the first byte of the `sendmsg` that sent them, so the receiver queues every descriptor it
gets and gives each line the next n. Both sides import this module; it is stdlib only.

    supervisor -> template: Settings (a worker's, first), {"type": "fork", "tag": ..., "fds": 3},
                            {"type": "retire"} (replaced: exit once the workers forked are gone)
    template -> supervisor: {"type": "hello", "pid", "threads", "preloaded", "failed"},
                            {"type": "forked", "pid", "fds": 1}, {"type": "refused", "error"},
                            {"type": "exited", "pid", "returncode"}
"""

from __future__ import annotations

import array
import collections
import contextlib
import json
import os
import socket
from typing import Any

MAX_LINE = 1 << 20  # bytes: the template's answers are short, a longer line is garbage
MAX_FDS = 8  # descriptors one receive may carry


class WireError(Exception):
    """The other side sent something that is not a message of this wire."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one line with its descriptors (all of it, or OSError). A blocking socket waits; a
    non-blocking one raises BlockingIOError if the line does not fit at once."""
    data = encode({**message, "fds": len(fds)} if fds else message)
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sent = sock.sendmsg([data], rights)
    if sent < len(data):
        sock.sendall(data[sent:])


class LineReceiver:
    """Lines and their descriptors, from whatever pieces the socket delivers them in."""

    def __init__(self, sock: socket.socket, max_line: int = MAX_LINE) -> None:
        self.sock = sock
        self.max_line = max_line
        self._buffer = b""
        self._fds: collections.deque[int] = collections.deque()

    def receive(self) -> list[tuple[dict[str, Any], list[int]]] | None:
        """Read once: the complete lines so far, each with its descriptors; None at end of file.
        Raises WireError for garbage, BlockingIOError when a non-blocking socket has nothing."""
        space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
        try:
            data, ancillary, _flags, _address = self.sock.recvmsg(65536, space)
        except BlockingIOError:
            if b"\n" not in self._buffer:
                raise
            data, ancillary = b"", []  # lines fed before are complete: those
        else:
            if not data:
                return None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        self._buffer += data
        messages = []
        while b"\n" in self._buffer:
            line, _, self._buffer = self._buffer.partition(b"\n")
            messages.append(self._decode(line))
        if len(self._buffer) > self.max_line:
            raise WireError(f"a line longer than {self.max_line} bytes")
        return messages

    def _decode(self, line: bytes) -> tuple[dict[str, Any], list[int]]:
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise WireError(f"a line that is not JSON: {line[:80]!r}") from exc
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise WireError(f"a line that is not a message: {line[:80]!r}")
        count = message.get("fds", 0)
        if not isinstance(count, int) or not 0 <= count <= len(self._fds):
            raise WireError(f"a {message['type']!r} message without the descriptors it announces")
        return message, [self._fds.popleft() for _ in range(count)]

    def close(self) -> None:
        """Close the descriptors received but not handed out."""
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.popleft())
