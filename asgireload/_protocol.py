"""The messages between the supervisor and a worker: one dataclass per message.

One JSON object per line, each with a "type" (the wire: `_wire.py`; on the event loop:
`_channel.Channel`). The channel is a `socketpair()` inherited by the worker alone, so nothing
else on the machine can speak it; still, a worker runs the user's code, so the supervisor treats
what it reads as untrusted: an unknown type, a line that is not a JSON object, a field of the
wrong type, or a line over `MAX_LINE` bytes ends the channel with a `ProtocolError`. Every
message is checked where it is decoded (`decode`, `message_of`: one decoder driven by the
fields' types, `_typedjson.py`), so the code that receives one can trust its fields; what a
message may follow (`hello` first, `ready` for the generation that was loaded) is checked by the
reader that knows the conversation. Both sides import this module; it is stdlib only.

    worker -> supervisor: Hello, Files, Ready, Failed, Draining
    supervisor -> worker: Settings (first, read before Hello), Load, Serve, ShowFailure, Drain,
                          Assets (live reload)

A second socketpair per worker (`Settings.debug_fd`) carries only the debugger's terminal, so
that a worker stopped at `breakpoint()` can ask for it from any thread while its event loop is
blocked: worker -> supervisor Paused, Resumed; supervisor -> worker Lent (see the block below).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar

from ._typedjson import Check, Cut, Named, from_json, sent_always, to_json
from ._wire import MAX_LINE as MAX_LINE
from ._wire import TRUSTED_MAX_LINE as TRUSTED_MAX_LINE
from ._wire import ProtocolError as ProtocolError
from ._wire import frame, parse

PROTOCOL_VERSION: Final = 2
DEBUG_MAX_LINE = 4096  # bytes of one debug message (a `where` is cut to 1000 characters)


def is_path(value: object) -> bool:
    """A file system path: text with no NUL that the OS can encode (surrogate escapes included)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return False
    return True


Path = Annotated[str, Check(is_path, "a path")]
# A file as a worker saw it when it imported it: path, st_mtime_ns, st_size, st_ino (None: missing).
FileEntry = Annotated[tuple[Path, int | None, int | None, int | None], Named("file entry")]
# A project module the worker ran: its name, its file, project modules its body imported (a long
# list comes as several entries of one module).
ImportEntry = Annotated[tuple[str, Path, tuple[str, ...]], Named("import entry")]


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
    files: tuple[Path, ...] = ()  # absolute paths worth fixing, the one to fix first last
    missing: tuple[Path, ...] = ()  # where a module that was not found would be created
    exit_reason: str | None = None  # how the worker ended, for a crash

    def to_json(self) -> dict[str, Any]:
        return to_json(self)


# ------------------------------------------------------------------ worker -> supervisor


@dataclasses.dataclass(frozen=True)
class Hello:
    """The first message: the worker is warm (preloaded) and waits for `Load`."""

    TYPE: ClassVar[str] = "hello"
    pid: int
    protocol: Literal[2] = sent_always(PROTOCOL_VERSION)  # PROTOCOL_VERSION, checked
    preload_failed: tuple[tuple[str, str], ...] = ()  # (module, error) of each preload that failed


@dataclasses.dataclass(frozen=True)
class Files:
    """Files the worker imported, each with the stat it saw; installed modules it imported; the
    project modules it ran and what each imported (the import graph)."""

    TYPE: ClassVar[str] = "files"
    files: tuple[FileEntry, ...] = sent_always(())
    modules: tuple[str, ...] = ()
    imports: tuple[ImportEntry, ...] = ()
    env: tuple[str, ...] = ()  # environment variables the app's import set, changed or removed
    fingerprints: tuple[tuple[str, int], ...] = ()  # project modules it ran: their plain values
    # the app's import ran django.setup(): the settings module, the variables that import set,
    # the project modules that ran while the app registry populated (see _worker/djangosetup.py)
    django_settings: str = ""
    django_env: tuple[tuple[str, str], ...] = ()
    django_setup: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Ready:
    """Lifespan start-up is done (or the error page is up); it accepts once told `Serve`."""

    TYPE: ClassVar[str] = "ready"
    generation: int
    error_page: bool = False


@dataclasses.dataclass(frozen=True)
class Failed:
    """The app could not start; the worker waits to be told `Serve` (the error page) or to end."""

    TYPE: ClassVar[str] = "failed"
    generation: int
    failure: Failure


@dataclasses.dataclass(frozen=True)
class Draining:
    """It no longer accepts nor answers new requests on its connections."""

    TYPE: ClassVar[str] = "draining"


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


@dataclasses.dataclass(frozen=True)
class Load:
    """Import the app as generation `generation` (or show `failure` instead), with this env."""

    TYPE: ClassVar[str] = "load"
    generation: int
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    failure: Failure | None = None


@dataclasses.dataclass(frozen=True)
class Serve:
    """Start accepting: the app after `Ready`, the error page after `Failed`."""

    TYPE: ClassVar[str] = "serve"


@dataclasses.dataclass(frozen=True)
class ShowFailure:
    """Show this failure on the error page from now on."""

    TYPE: ClassVar[str] = "failure"
    failure: Failure


@dataclasses.dataclass(frozen=True)
class Drain:
    """Stop accepting (or never start), finish requests within `timeout` s, shut down, exit."""

    TYPE: ClassVar[str] = "drain"
    timeout: float


@dataclasses.dataclass(frozen=True)
class Assets:
    """Live reload: these --live-include files changed; restyle (all stylesheets) or reload the pages."""

    TYPE: ClassVar[str] = "assets"
    paths: tuple[str, ...]
    restyle: bool


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
    where: Annotated[str, Cut(1000)]
    interruptible: bool = True
    announce: bool = True  # False for the stops of a step (`n`, `s`) in the same session


@dataclasses.dataclass(frozen=True)
class Resumed:
    """The debugger let the app go on (continue or quit): the terminal is the supervisor's again."""

    TYPE: ClassVar[str] = "resumed"


@dataclasses.dataclass(frozen=True)
class Prompting:
    """The debugger shows its `prompt` and waits for a line (`shown`), or got one: a log line
    printed meanwhile starts on a line of its own, and the prompt is drawn again after it."""

    TYPE: ClassVar[str] = "prompting"
    shown: bool
    prompt: Annotated[str, Cut(100)] = ""


@dataclasses.dataclass(frozen=True)
class Lent:
    """The answer to `paused`: the terminal (its descriptors ride along), or why there is none."""

    TYPE: ClassVar[str] = "lent"
    granted: bool
    reason: str = ""


WorkerMessage = Hello | Files | Ready | Failed | Draining
SupervisorMessage = Settings | Load | Serve | ShowFailure | Drain | Assets
DebugMessage = Paused | Resumed | Prompting | Lent
Message = WorkerMessage | SupervisorMessage | DebugMessage
Kinds = dict[str, type[Message]]
WORKER_MESSAGES: Kinds = {m.TYPE: m for m in (Hello, Files, Ready, Failed, Draining)}
SUPERVISOR_MESSAGES: Kinds = {m.TYPE: m for m in (Settings, Load, Serve, ShowFailure, Drain, Assets)}
DEBUG_WORKER_MESSAGES: Kinds = {m.TYPE: m for m in (Paused, Resumed, Prompting)}
DEBUG_SUPERVISOR_MESSAGES: Kinds = {Lent.TYPE: Lent}


def encode(message: Message, limit: int = MAX_LINE, fds: int = 0) -> bytes:
    """One line of JSON (announcing `fds` descriptors sent with it); ProtocolError if it is over
    `limit` bytes (the reader's limit)."""
    return frame({"type": message.TYPE, **to_json(message)}, fds, limit)


def message_of(data: dict[str, Any], allowed: Kinds) -> Message:
    """The message a JSON object off the wire is, its fields checked; ProtocolError otherwise."""
    kind = data.get("type")
    message_class = allowed.get(kind) if isinstance(kind, str) else None
    if message_class is None:
        raise ProtocolError(f"an unknown message type {kind!r}")
    return from_json(message_class, data, f"a {kind!r} message")


def decode(line: bytes, allowed: Kinds) -> Message:
    """The message on one line, its fields checked; ProtocolError for anything else."""
    return message_of(parse(line), allowed)


M = TypeVar("M", bound=Message)


def decode_as(message_class: type[M], data: dict[str, Any]) -> M:
    """A JSON object as this one kind of message (a template's settings)."""
    return from_json(message_class, data, f"a {message_class.TYPE!r} message")
