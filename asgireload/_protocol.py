"""The control channel between the supervisor and a worker: one dataclass per message.

One JSON object per line, each with a "type". The channel is a `socketpair()` inherited by
the worker alone, so nothing else on the machine can speak it; still, a worker runs the
user's code, so the supervisor treats what it reads as untrusted: an unknown type, a line that
is not a JSON object, a field of the wrong type, or a line over `MAX_LINE` bytes ends the
channel with a `ProtocolError`. Every message is checked where it is decoded (`decode`), so the
code that receives one can trust its fields; what a message may follow (`hello` first, `ready`
for the generation that was loaded) is checked by the reader that knows the conversation.
Both sides import this module, and it imports nothing of asgireload's.

    worker -> supervisor: Hello, Files, Ready, Failed, Draining
    supervisor -> worker: Settings (first, read before Hello), Load, Serve, ShowFailure, Drain,
                          Assets (live reload)

A second socketpair per worker (`Settings.debug_fd`) carries only the debugger's terminal, so
that a worker stopped at `breakpoint()` can ask for it from any thread while its event loop is
blocked: worker -> supervisor Paused, Resumed; supervisor -> worker Lent (see the block below).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
from typing import Any, ClassVar

PROTOCOL_VERSION = 2
MAX_LINE = 1 << 20  # 1 MiB: what the supervisor reads from a worker (a `files` report is chunked)
# What a worker reads from the supervisor, which it trusts: no limit that grows with the app (the
# settings carry the preload list, one name per module the app imported).
TRUSTED_MAX_LINE = 1 << 30


class ProtocolError(Exception):
    """The peer sent something that is not a message of this protocol."""


# A file as a worker saw it when it imported it: path, st_mtime_ns, st_size, st_ino (None: missing).
FileEntry = tuple[str, int | None, int | None, int | None]
# A project module the worker ran: its name, its file, project modules its body imported (a long
# list comes as several entries of one module).
ImportEntry = tuple[str, str, tuple[str, ...]]


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
            if not (isinstance(paths, list) and all(is_path(p) for p in paths)):
                raise ProtocolError(f"a failure whose {name} is not a list of paths")
        if exit_reason is not None and not isinstance(exit_reason, str):
            raise ProtocolError("a failure whose exit_reason is not text")
        return cls(kind, summary, traceback, tuple(files), tuple(missing), exit_reason)


_REQUIRED: Any = object()


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
    """data[name], checked to be a `kind` (a bool is not an int); ProtocolError otherwise."""
    value = data.get(name, default)
    if value is _REQUIRED:
        raise ProtocolError(f"a {data.get('type')!r} message without {name!r}")
    if value is default and default is not _REQUIRED:
        return value
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ProtocolError(f"a {data.get('type')!r} message whose {name!r} is {str(value)[:80]!r}")
    return value


def _texts(data: dict[str, Any], name: str) -> tuple[str, ...]:
    values = _field(data, name, list, [])
    if not all(isinstance(v, str) for v in values):
        raise ProtocolError(f"a {data.get('type')!r} message whose {name!r} is not a list of text")
    return tuple(values)


def _environment(data: dict[str, Any]) -> dict[str, str]:
    env = _field(data, "env", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ProtocolError(f"a {data.get('type')!r} message whose 'env' is not text to text")
    return dict(env)


# ------------------------------------------------------------------ worker -> supervisor


@dataclasses.dataclass(frozen=True)
class Hello:
    """The first message: the worker is warm (preloaded) and waits for `Load`."""

    TYPE: ClassVar[str] = "hello"
    pid: int
    protocol: int = PROTOCOL_VERSION
    preload_failed: tuple[tuple[str, str], ...] = ()  # (module, error) of each preload that failed

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Hello:
        version = data.get("protocol")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
        failed = _field(data, "preload_failed", list, [])
        if not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair)
            for pair in failed
        ):
            raise ProtocolError(f"a 'hello' message whose 'preload_failed' is {str(failed)[:80]!r}")
        return cls(_field(data, "pid", int), version, tuple((module, error) for module, error in failed))


@dataclasses.dataclass(frozen=True)
class Files:
    """Files the worker imported, each with the stat it saw; installed modules it imported; the
    project modules it ran and what each imported (the import graph)."""

    TYPE: ClassVar[str] = "files"
    files: tuple[FileEntry, ...] = ()
    modules: tuple[str, ...] = ()
    imports: tuple[ImportEntry, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Files:
        files = data.get("files")
        if not isinstance(files, list) or not isinstance(data.get("modules", []), list):
            raise ProtocolError("a 'files' message without a list of files")
        for entry in files:
            if not (
                isinstance(entry, list)
                and len(entry) == 4
                and is_path(entry[0])
                and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in entry[1:])
            ):
                raise ProtocolError(f"a malformed file entry {str(entry)[:80]}")
        imports = _field(data, "imports", list, [])
        for entry in imports:
            if not (
                isinstance(entry, list)
                and len(entry) == 3
                and isinstance(entry[0], str)
                and is_path(entry[1])
                and isinstance(entry[2], list)
                and all(isinstance(name, str) for name in entry[2])
            ):
                raise ProtocolError(f"a malformed import entry {str(entry)[:80]}")
        return cls(
            tuple((p, m, s, i) for p, m, s, i in files),
            _texts(data, "modules"),
            tuple((name, path, tuple(names)) for name, path, names in imports),
        )


@dataclasses.dataclass(frozen=True)
class Ready:
    """Lifespan start-up is done (or the error page is up); it accepts once told `Serve`."""

    TYPE: ClassVar[str] = "ready"
    generation: int
    error_page: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ready:
        return cls(_field(data, "generation", int), _field(data, "error_page", bool, False))


@dataclasses.dataclass(frozen=True)
class Failed:
    """The app could not start; the worker waits to be told `Serve` (the error page) or to end."""

    TYPE: ClassVar[str] = "failed"
    generation: int
    failure: Failure

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Failed:
        return cls(_field(data, "generation", int), Failure.from_json(data.get("failure")))


@dataclasses.dataclass(frozen=True)
class Draining:
    """It no longer accepts nor answers new requests on its connections."""

    TYPE: ClassVar[str] = "draining"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Draining:
        return cls()


# ------------------------------------------------------------------ supervisor -> worker


@dataclasses.dataclass(frozen=True)
class Settings:
    """The first message, read before the event loop exists: everything a worker is."""

    TYPE: ClassVar[str] = "settings"
    app: str
    factory: bool
    app_dir: str
    roots: tuple[str, ...]
    includes: tuple[str, ...]
    excludes: tuple[str, ...]
    drain_timeout: float
    show_errors: bool
    only_loopback_hosts: bool  # details only for loopback Host headers
    env: dict[str, str]  # the env file, applied before anything is preloaded
    preload: tuple[str, ...]  # installed modules to import before saying hello
    uvicorn: dict[str, Any]  # uvicorn.Config's options
    handoff_fd: int
    listen_fd: int
    fd_limit: int | None = None  # the soft RLIMIT_NOFILE the app would have had (we raised ours)
    # Live reload: on only for a loopback bind; `run` tells pages one start of asgireload from another.
    live_reload: bool = False
    run: str = ""
    debug_fd: int | None = None  # the socketpair that lends the terminal to breakpoint()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settings:
        return cls(
            app=_field(data, "app", str),
            factory=_field(data, "factory", bool),
            app_dir=_field(data, "app_dir", str),
            roots=_texts(data, "roots"),
            includes=_texts(data, "includes"),
            excludes=_texts(data, "excludes"),
            drain_timeout=float(_field(data, "drain_timeout", (int, float))),
            show_errors=_field(data, "show_errors", bool),
            only_loopback_hosts=_field(data, "only_loopback_hosts", bool),
            env=_environment(data),
            preload=_texts(data, "preload"),
            uvicorn=_field(data, "uvicorn", dict),
            handoff_fd=_field(data, "handoff_fd", int),
            listen_fd=_field(data, "listen_fd", int),
            fd_limit=_field(data, "fd_limit", int, None),
            live_reload=_field(data, "live_reload", bool, False),
            run=_field(data, "run", str, ""),
            debug_fd=_field(data, "debug_fd", int, None),
        )


@dataclasses.dataclass(frozen=True)
class Load:
    """Import the app as generation `generation` (or show `failure` instead), with this env."""

    TYPE: ClassVar[str] = "load"
    generation: int
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    failure: Failure | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Load:
        failure = data.get("failure")
        return cls(
            _field(data, "generation", int),
            _environment(data),
            None if failure is None else Failure.from_json(failure),
        )


@dataclasses.dataclass(frozen=True)
class Serve:
    """Start accepting: the app after `Ready`, the error page after `Failed`."""

    TYPE: ClassVar[str] = "serve"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Serve:
        return cls()


@dataclasses.dataclass(frozen=True)
class ShowFailure:
    """Show this failure on the error page from now on."""

    TYPE: ClassVar[str] = "failure"
    failure: Failure

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShowFailure:
        return cls(Failure.from_json(data.get("failure")))


@dataclasses.dataclass(frozen=True)
class Drain:
    """Stop accepting (or never start), finish requests within `timeout` s, shut down, exit."""

    TYPE: ClassVar[str] = "drain"
    timeout: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Drain:
        return cls(float(_field(data, "timeout", (int, float))))


@dataclasses.dataclass(frozen=True)
class Assets:
    """Live reload: these --live-include files changed; restyle (all stylesheets) or reload the pages."""

    TYPE: ClassVar[str] = "assets"
    paths: tuple[str, ...]
    restyle: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Assets:
        return cls(_texts(data, "paths"), _field(data, "restyle", bool))


# ------------------------------------------------------------------ the debugger's terminal
# Over the debug socketpair only. A worker whose app stopped at a breakpoint sends `paused` and
# waits for `lent`; granted, the terminal's two descriptors (read, write) come with that line
# (SCM_RIGHTS), and the supervisor reads no keys until the worker sends `resumed`. Refused, the
# reason is a sentence for the developer (breakpoint() raises it).


@dataclasses.dataclass(frozen=True)
class Paused:
    """The app stopped at `where` (file:line) and its debugger wants the terminal; `interruptible`:
    it stopped in the main thread, where a forwarded Ctrl-C reaches the debugger."""

    TYPE: ClassVar[str] = "paused"
    where: str
    interruptible: bool = True
    announce: bool = True  # False for the stops of a step (`n`, `s`) in the same session

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Paused:
        return cls(
            _field(data, "where", str)[:1000],
            _field(data, "interruptible", bool, True),
            _field(data, "announce", bool, True),
        )


@dataclasses.dataclass(frozen=True)
class Resumed:
    """The debugger let the app go on (continue or quit): the terminal is the supervisor's again."""

    TYPE: ClassVar[str] = "resumed"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Resumed:
        return cls()


@dataclasses.dataclass(frozen=True)
class Prompting:
    """The debugger shows its `prompt` and waits for a line (`shown`), or got one: a log line
    printed meanwhile starts on a line of its own, and the prompt is drawn again after it."""

    TYPE: ClassVar[str] = "prompting"
    shown: bool
    prompt: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Prompting:
        return cls(_field(data, "shown", bool), _field(data, "prompt", str, "")[:100])


@dataclasses.dataclass(frozen=True)
class Lent:
    """The answer to `paused`: the terminal (its descriptors ride along), or why there is none."""

    TYPE: ClassVar[str] = "lent"
    granted: bool
    reason: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lent:
        return cls(_field(data, "granted", bool), _field(data, "reason", str, ""))


DEBUG_MAX_LINE = 4096  # bytes of one debug message (a `where` is cut to 1000 characters)


WorkerMessage = Hello | Files | Ready | Failed | Draining
SupervisorMessage = Settings | Load | Serve | ShowFailure | Drain | Assets
DebugMessage = Paused | Resumed | Prompting | Lent
Message = WorkerMessage | SupervisorMessage | DebugMessage
Kinds = dict[str, type[Message]]
WORKER_MESSAGES: Kinds = {m.TYPE: m for m in (Hello, Files, Ready, Failed, Draining)}
SUPERVISOR_MESSAGES: Kinds = {m.TYPE: m for m in (Settings, Load, Serve, ShowFailure, Drain, Assets)}
DEBUG_WORKER_MESSAGES: Kinds = {m.TYPE: m for m in (Paused, Resumed, Prompting)}
DEBUG_SUPERVISOR_MESSAGES: Kinds = {Lent.TYPE: Lent}


def encode(message: Message, limit: int = MAX_LINE) -> bytes:
    """One line of JSON. ASCII escapes keep paths that are not UTF-8 (surrogate escapes) lossless."""
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    data = {
        "type": message.TYPE,
        **{k: v.to_json() if isinstance(v, Failure) else v for k, v in fields.items()},
    }
    line = json.dumps(data, separators=(",", ":")).encode("ascii") + b"\n"
    if len(line) > limit:
        raise ProtocolError(f"a {message.TYPE!r} message of {len(line)} bytes is over the limit.")
    return line


def is_path(value: object) -> bool:
    """A file system path: text with no NUL that the OS can encode (surrogate escapes included)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return False
    return True


def decode(line: bytes, allowed: Kinds) -> Message:
    """The message on one line, its fields checked; ProtocolError for anything else."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"a line that is not JSON (or nested too deep): {line[:80]!r}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"a JSON value that is not an object: {line[:80]!r}")
    kind = data.get("type")
    message_class = allowed.get(kind) if isinstance(kind, str) else None
    if message_class is None:
        raise ProtocolError(f"an unknown message type {kind!r}")
    return message_class.from_json(data)


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
        self._max_line = max_line
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
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=max_line)
        return cls(reader, writer, allowed, max_line, send_limit)

    def feed(self, data: bytes) -> None:
        """Bytes of the stream read before this channel existed."""
        if data:
            self._reader.feed_data(data)

    async def receive(self) -> Message | None:
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
