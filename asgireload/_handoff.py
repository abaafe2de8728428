"""Passing idle keep-alive connections from an old generation to the new one.

A draining worker must not keep answering on its keep-alive connections (the client would get
the old code after the reload) and must not close them either (a client about to reuse one
would get "server disconnected" instead of a response: closing an idle HTTP/1.1 connection
always races the client). So it hands each idle connection's socket to the supervisor over a
dedicated socketpair with SCM_RIGHTS, and the supervisor hands it to the generation that is
serving now, which adopts it as if it had just accepted it. The client notices nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

MAX_FDS = 64  # descriptors taken per read


def send_fds(channel: socket.socket, fds: list[int]) -> bool:
    """Send descriptors (one byte of payload carries them); False if the peer is gone."""
    try:
        socket.send_fds(channel, [b"c"], fds)
    except (BlockingIOError, OSError):
        return False
    return True


def send_all(channel: socket.socket, fds: list[int]) -> list[int]:
    """Send descriptors in messages of at most MAX_FDS, closing each sent one here.

    Returns those that could not be sent (the peer is gone or not reading), still open.
    """
    for start in range(0, len(fds), MAX_FDS):
        chunk = fds[start : start + MAX_FDS]
        if not send_fds(channel, chunk):
            return fds[start:]
        close_all(chunk)
    return []


def receive_fds(channel: socket.socket) -> list[int] | None:
    """The descriptors waiting on a non-blocking channel; None once the peer closed it."""
    received: list[int] = []
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(channel, 1024, MAX_FDS)
        except BlockingIOError:
            return received
        except OSError:
            return received or None
        received.extend(fds)
        if not data:
            return received or None


def listen(channel: socket.socket, on_fds: Callable[[list[int]], None]) -> Callable[[], None]:
    """Call `on_fds` with descriptors as they arrive; returns a function that stops listening."""
    loop = asyncio.get_running_loop()
    channel.setblocking(False)

    def readable() -> None:
        fds = receive_fds(channel)
        if fds is None:
            stop()
        elif fds:
            on_fds(fds)

    def stop() -> None:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(channel.fileno())

    loop.add_reader(channel.fileno(), readable)
    return stop


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
