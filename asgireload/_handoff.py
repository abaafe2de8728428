"""Passing keep-alive connections from an old generation to the new one, bytes and all.

A draining worker must not answer a new request with the old code (the client would see the old
code after the reload) and must not close a keep-alive connection either (a client about to reuse
it would get "server disconnected": closing an idle HTTP/1.1 connection always races the client).
So at each connection's next request boundary it hands the socket (SCM_RIGHTS) to the supervisor,
which hands it to the generation serving now, which adopts it as if it had just accepted it.

What travels is a record: the descriptor, and the bytes the old generation had read from the
connection but not yet served (half a request, or requests pipelined behind the last one it
answered). The new generation feeds them to its HTTP parser before anything else it reads.

On the wire (`_wire.py`, a SOCK_STREAM socketpair) each record is one line sent with one
`sendmsg`: `{"type": "connection", "pending": BASE64, "fds": 1}`, its descriptor in the ancillary
data. A descriptor the kernel could not install (MSG_CTRUNC) loses its record, not the channel.

The supervisor holds records while no generation serves (sequential mode), but never so many
that it could not open the pipes for the next worker: see `Held`.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import logging
import os
import resource
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _wire

logger = logging.getLogger("asgireload")

RECORD = "connection"  # the type of a record's line
MAX_PENDING = 16 * 1024 * 1024  # bytes one record may carry; more means the channel is corrupt
MAX_LINE = 4 * (MAX_PENDING // 3 + 1) + 256  # the line of a record that carries that many (base64)
RECEIVE_SIZE = 256 * 1024
SEND_TIMEOUT = 5.0  # seconds a worker waits for room to send one record before giving up on it
RETRY_FIRST, RETRY_MAX = 0.005, 0.2  # seconds between tries to send to a worker that is not reading
RESERVE_FDS = 64  # descriptors the supervisor keeps free for spawning the next worker


@dataclass
class Connection:
    """A handed-over connection: its descriptor, and what was read from it but not yet served."""

    fd: int
    pending: bytes = b""


def encode(pending: bytes) -> bytes:
    """The line of one record (its descriptor goes with it, see `_wire.rights`)."""
    text = binascii.b2a_base64(pending, newline=False).decode("ascii")
    return _wire.frame({"type": RECORD, "pending": text}, fds=1)


# ------------------------------------------------------------------ worker side: sending


def send_connection(channel: socket.socket, fd: int, pending: bytes = b"") -> bool:
    """Send one connection, waiting (up to SEND_TIMEOUT) for room; False if it could not go.

    The caller still owns `fd` and closes its copy afterwards. Used by a worker, whose event loop
    may block this briefly: a record is small, and the supervisor always reads.
    """
    data = encode(pending)
    deadline = time.monotonic() + SEND_TIMEOUT
    sent = 0
    while sent < len(data):
        try:
            if sent == 0:
                sent = channel.sendmsg([data], _wire.rights([fd]))
            else:
                sent += channel.send(data[sent:])
        except (BlockingIOError, InterruptedError):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _wait_writable(channel, remaining):
                if sent:  # half a record on the wire: the channel is unusable from here on
                    with contextlib.suppress(OSError):
                        channel.shutdown(socket.SHUT_WR)
                return False
        except OSError:
            return False
    return True


def pass_back(channel: socket.socket, connections: list[Connection]) -> None:
    """Return connections to the supervisor (they reached a draining worker), closing ours."""
    for connection in connections:
        send_connection(channel, connection.fd, connection.pending)
        _close(connection.fd)


def _wait_writable(channel: socket.socket, timeout: float) -> bool:
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLOUT)
    return bool(poller.poll(timeout * 1000))


# ------------------------------------------------------------------ both sides: receiving


class ConnectionReceiver:
    """Turns what arrives on a channel into `Connection` records."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self._lines = _wire.LineReceiver(channel, MAX_LINE, RECEIVE_SIZE)
        self.closed = False

    def receive(self) -> list[Connection]:
        """The records complete so far (reads until the channel would block or ends)."""
        records: list[Connection] = []
        while not self.closed:
            try:
                if not self._lines.read():
                    self.close()
                    break
                while (received := self._lines.next()) is not None:
                    if (record := _record(*received)) is not None:
                        records.append(record)
            except (BlockingIOError, InterruptedError):
                break
            except (OSError, _wire.ProtocolError):  # not something our peer sends: cannot be trusted
                self.close()
        return records

    def close(self) -> None:
        """Stop: descriptors of records not yet complete are closed (their connections are lost)."""
        self.closed = True
        self._lines.close()


def _record(message: dict[str, Any], fds: list[int]) -> Connection | None:
    """The connection a line carries; None if the kernel could not pass its descriptor."""
    if message["type"] != RECORD or message.get("fds") != 1 or not isinstance(message.get("pending"), str):
        _close_all(fds)
        raise _wire.ProtocolError(f"a {message['type']!r} line that is not a connection")
    try:
        pending = binascii.a2b_base64(message["pending"], strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        _close_all(fds)
        raise _wire.ProtocolError("a connection whose bytes are not base64") from exc
    return Connection(fds[0], pending) if fds else None


def listen(channel: socket.socket, on_connections: Callable[[list[Connection]], None]) -> Callable[[], None]:
    """Call `on_connections` with records as they arrive; returns a function that stops listening."""
    loop = asyncio.get_running_loop()
    channel.setblocking(False)
    receiver = ConnectionReceiver(channel)
    fileno = channel.fileno()

    def readable() -> None:
        records = receiver.receive()
        if records:
            on_connections(records)
        if receiver.closed:
            stop()

    def stop() -> None:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(fileno)
        receiver.close()

    loop.add_reader(fileno, readable)
    return stop


# ------------------------------------------------------------------ supervisor side


class Held:
    """The supervisor's connections in transit: held while no generation serves, or on their way
    to one that is not reading yet.

    Holding is bounded by the descriptors this process can afford (RLIMIT_NOFILE less what is open
    and a reserve for spawning), not by a count: beyond that the newest are closed, with a warning.
    """

    def __init__(self) -> None:
        self._held: list[Connection] = []
        self._outboxes: dict[socket.socket, _Outbox] = {}
        self._warned = False

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, connections: list[Connection]) -> None:
        excess = min(len(connections), descriptors_over_budget())
        if excess:
            kept = len(connections) - excess
            _close_all([c.fd for c in connections[kept:]])
            connections = connections[:kept]
            if not self._warned:
                self._warned = True
                soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
                logger.warning(
                    "Closed %d idle connection(s) handed over during the reload: the open-file limit "
                    "(%d) leaves no room to hold them. Raise it (ulimit -n) to keep them all.",
                    excess,
                    soft,
                )
        self._held.extend(connections)

    def take(self) -> list[Connection]:
        held, self._held = self._held, []
        self._warned = False
        return held

    def forward(self, channel: socket.socket, connections: list[Connection]) -> None:
        """Send to a worker's channel, in order; what its end never reads is held again."""
        for idle in [c for c, outbox in self._outboxes.items() if outbox.empty]:
            del self._outboxes[idle]
        outbox = self._outboxes.get(channel)
        if outbox is None:
            outbox = self._outboxes[channel] = _Outbox(channel, self._returned)
        outbox.push(connections)

    def _returned(self, outbox: _Outbox, connections: list[Connection]) -> None:
        self._outboxes.pop(outbox.channel, None)
        self.hold(connections)

    def close(self) -> None:
        """Close every connection still here (at stop)."""
        for outbox in self._outboxes.values():
            _close_all([c.fd for c in outbox.abandon()])
        self._outboxes.clear()
        _close_all([c.fd for c in self.take()])


class _Outbox:
    """Records for one worker's channel (non-blocking), retried on a timer while it has no room.

    A record half on the wire is finished before the next one; the timer stops once the channel is
    closed (the worker exited), and what was never sent goes back to `returned`.
    """

    def __init__(self, channel: socket.socket, returned: Callable[[_Outbox, list[Connection]], None]) -> None:
        self.channel = channel
        self._returned = returned
        self._queue: collections.deque[Connection] = collections.deque()
        self._rest = b""  # the unsent tail of a record whose descriptor went already
        self._timer: asyncio.TimerHandle | None = None
        self._delay = RETRY_FIRST

    @property
    def empty(self) -> bool:
        return not self._queue and not self._rest

    def push(self, connections: list[Connection]) -> None:
        self._queue.extend(connections)
        self._flush()

    def _flush(self) -> None:
        self._timer = None
        while self._rest or self._queue:
            if self.channel.fileno() < 0:
                self._give_back()
                return
            try:
                if self._rest:
                    self._rest = self._rest[self.channel.send(self._rest) :]
                    continue
                record = self._queue[0]
                data = encode(record.pending)
                sent = self.channel.sendmsg([data], _wire.rights([record.fd]))
            except (BlockingIOError, InterruptedError):
                self._retry_later()
                return
            except OSError:
                self._give_back()
                return
            self._queue.popleft()
            _close(record.fd)
            self._rest = data[sent:]
            self._delay = RETRY_FIRST

    def _retry_later(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._delay, self._flush)
        self._delay = min(self._delay * 2, RETRY_MAX)

    def _give_back(self) -> None:
        self._rest = b""  # that record's descriptor reached the worker, which is gone with it
        self._returned(self, self.abandon())

    def abandon(self) -> list[Connection]:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        unsent = list(self._queue)
        self._queue.clear()
        return unsent


# ------------------------------------------------------------------ descriptors


def raise_fd_limit() -> int | None:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the soft limit it had before.

    Connections held across a reload and the clients of a busy development server can use more
    than the usual soft limit of 1,024; the hard limit is what the system allows without privilege.
    The caller restores the old limit when it stops, and workers set it back for the app.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    original = soft
    # "unlimited" may still refuse a value above the kernel's own cap (macOS): try smaller ones
    targets = (hard,) if hard != resource.RLIM_INFINITY else (1 << 20, 65536, 10240)
    for target in targets:
        if soft >= target:
            return original
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return original
    return original


def restore_fd_limit(soft: int | None) -> None:
    """Set the soft RLIMIT_NOFILE back to `soft` (from raise_fd_limit), keeping the hard limit."""
    if soft is None:
        return
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def descriptors_over_budget(reserve: int = RESERVE_FDS) -> int:
    """How many descriptors this process should give up to keep `reserve` free under its limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return over_budget(soft, open_descriptors(), reserve)


def over_budget(limit: int, open_count: int, reserve: int) -> int:
    return max(0, open_count + reserve - limit)


def open_descriptors() -> int:
    """The descriptors open in this process (/proc or /dev/fd; 0 where neither can be listed)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(folder)) - 1  # listing opens one itself
    return 0


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        _close(fd)
