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
import dataclasses
import json
import socket
from typing import Any

PROTOCOL_VERSION = 2
MAX_LINE = 1 << 20  # 1 MiB: what the supervisor reads from a worker (a `files` report is chunked)
# What a worker reads from the supervisor, which it trusts: no limit that grows with the app (the
# settings carry the preload list, one name per module the app imported).
TRUSTED_MAX_LINE = 1 << 30

# worker -> supervisor
HELLO = "hello"  # {pid, protocol}: first message, the worker is warm and waits for `load`
FILES = "files"  # {files: [[path, mtime_ns, size, ino] | [path, null, null, null]], modules: [names]}
READY = "ready"  # {generation, error_page: bool}: lifespan start-up done; accepts once told `serve`
FAILED = "failed"  # {generation, failure: {summary, traceback, files, missing, kind}}; waits for orders
DRAINING = "draining"  # {}: it no longer accepts nor answers new requests on its connections
WORKER_MESSAGES = frozenset({HELLO, FILES, READY, FAILED, DRAINING})

# supervisor -> worker
SETTINGS = "settings"  # {app, roots, env, preload, uvicorn, ...}: the first message, read before `hello`
LOAD = "load"  # {generation, env, failure: {...} | null}: import the app (or show that failure)
SERVE = "serve"  # {}: start accepting (the app after `ready`, the error page after `failed`)
FAILURE = "failure"  # {failure}: update what an error-page worker shows
DRAIN = "drain"  # {timeout}: stop accepting (or never start), finish requests, shut down, exit
SUPERVISOR_MESSAGES = frozenset({SETTINGS, LOAD, SERVE, FAILURE, DRAIN})


class ProtocolError(Exception):
    """The peer sent something that is not a message of this protocol."""


# A file as a worker saw it when it imported it: path, st_mtime_ns, st_size, st_ino (None: missing).
FileEntry = tuple[str, int | None, int | None, int | None]


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why a generation does not serve its app: what the log, the error page and `Reloader.failure` show.

    `kind` says what failed, in one word: "usage" (a mistake in the command, such as an attribute
    that does not exist), "import", "startup" (building the server), "lifespan" (the app's start-up),
    "crash" (the worker died), "spawn" (no worker process could be started), "env" (the env file).
    """

    kind: str
    summary: str  # one line: the exception's type and message, or what happened
    traceback: str = ""  # the developer's frames only; "" when there is none
    files: tuple[str, ...] = ()  # absolute paths worth fixing, the one to fix first last
    missing: tuple[str, ...] = ()  # where a module that was not found would be created
    exit_reason: str | None = None  # how the worker ended, for a crash

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "summary": self.summary,
            "traceback": self.traceback,
            "files": list(self.files),
            "missing": list(self.missing),
            "exit_reason": self.exit_reason,
        }

    @classmethod
    def from_json(cls, data: object) -> Failure:
        """Read a failure off the wire; raises ProtocolError if a field has the wrong type."""
        if not isinstance(data, dict):
            raise ProtocolError("a failure that is not an object")
        kind, summary, traceback = data.get("kind"), data.get("summary"), data.get("traceback", "")
        files, missing, exit_reason = data.get("files", []), data.get("missing", []), data.get("exit_reason")
        if not (isinstance(kind, str) and isinstance(summary, str) and isinstance(traceback, str)):
            raise ProtocolError("a failure without a kind, a summary or a traceback as text")
        for name, paths in (("files", files), ("missing", missing)):
            if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
                raise ProtocolError(f"a failure whose {name} is not a list of paths")
        if exit_reason is not None and not isinstance(exit_reason, str):
            raise ProtocolError("a failure whose exit_reason is not text")
        return cls(kind, summary, traceback, tuple(files), tuple(missing), exit_reason)


def encode(message: dict[str, Any], limit: int = MAX_LINE) -> bytes:
    """One line of JSON. ASCII escapes keep paths that are not UTF-8 (surrogate escapes) lossless."""
    line = json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"
    if len(line) > limit:
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

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        allowed: frozenset[str],
        max_line: int = MAX_LINE,
        send_limit: int = MAX_LINE,
    ):
        self._reader = reader
        self._writer = writer
        self._allowed = allowed
        self._max_line = max_line
        self._send_limit = send_limit

    @classmethod
    async def open(
        cls,
        sock: socket.socket,
        allowed: frozenset[str],
        *,
        max_line: int = MAX_LINE,
        send_limit: int = MAX_LINE,
    ) -> Channel:
        """`max_line` bounds what we read, `send_limit` what we write (the peer's `max_line`)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=max_line)
        return cls(reader, writer, allowed, max_line, send_limit)

    def feed(self, data: bytes) -> None:
        """Bytes of the stream read before this channel existed."""
        if data:
            self._reader.feed_data(data)

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None at end of file. Raises ProtocolError on garbage."""
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise ProtocolError("the channel closed in the middle of a message") from None
            return None
        except asyncio.LimitOverrunError:
            raise ProtocolError(f"a line longer than {self._max_line} bytes") from None
        except ConnectionError:
            return None
        return decode(line, self._allowed)

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message; a closed channel drops it (the reader sees EOF and acts on that)."""
        if self._writer.is_closing():
            return
        self._writer.write(encode(message, self._send_limit))

    async def flush(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    def close(self) -> None:
        self._writer.close()
