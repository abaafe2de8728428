"""The control channel between the supervisor and a worker.

One JSON object per line, each with a "type". The channel is a `socketpair()` inherited by
the worker alone, so nothing else on the machine can speak it; still, a worker runs the
user's code, so the supervisor treats what it reads as untrusted: an unknown type, a line that
is not a JSON object, or a line over `MAX_LINE` bytes ends the channel with a `ProtocolError`.
Both sides import this module, and it imports nothing of asgireload's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20  # 1 MiB: a `files` report of a few thousand modules fits many times over

# worker -> supervisor
HELLO = "hello"  # {pid, protocol}: first message, the worker is warm and waits for `load`
FILES = "files"  # {files: [[path, mtime_ns, size, ino] | [path, null, null, null]], modules: [names]}
READY = "ready"  # {generation, error_page: bool}: lifespan start-up done, the worker accepts
FAILED = "failed"  # {generation, failure: {summary, traceback, files, kind}}
DRAINING = "draining"  # {}: it no longer accepts nor answers new requests on its connections
WORKER_MESSAGES = frozenset({HELLO, FILES, READY, FAILED, DRAINING})

# supervisor -> worker
LOAD = "load"  # {generation, env, on_failure: "error_page" | "exit", failure: {...} | null}
FAILURE = "failure"  # {failure}: update what an error-page worker shows
DRAIN = "drain"  # {timeout}: stop accepting, finish requests, shut down, exit
SUPERVISOR_MESSAGES = frozenset({LOAD, FAILURE, DRAIN})


class ProtocolError(Exception):
    """The peer sent something that is not a message of this protocol."""


def encode(message: dict[str, Any]) -> bytes:
    line = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    if len(line) > MAX_LINE:
        raise ProtocolError(f"a {message.get('type')!r} message of {len(line)} bytes is over the limit.")
    return line


def decode(line: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"a line that is not JSON: {line[:80]!r}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"a JSON value that is not an object: {line[:80]!r}")
    kind = message.get("type")
    if kind not in allowed:
        raise ProtocolError(f"an unknown message type {kind!r}")
    return message


class Channel:
    """Messages over one end of a socketpair, on the running event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, allowed: frozenset[str]):
        self._reader = reader
        self._writer = writer
        self._allowed = allowed

    @classmethod
    async def open(cls, sock: socket.socket, allowed: frozenset[str]) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
        return cls(reader, writer, allowed)

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None at end of file. Raises ProtocolError on garbage."""
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise ProtocolError("the channel closed in the middle of a message") from None
            return None
        except asyncio.LimitOverrunError:
            raise ProtocolError(f"a line longer than {MAX_LINE} bytes") from None
        except ConnectionError:
            return None
        return decode(line, self._allowed)

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message; a closed channel drops it (the reader sees EOF and acts on that)."""
        if self._writer.is_closing():
            return
        self._writer.write(encode(message))

    async def flush(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    def close(self) -> None:
        self._writer.close()
