"""What the supervisor's core (the machine) is told: one frozen dataclass per kind of event.

The shell turns everything that happens (a file changed, a worker said something or exited, a
timer fired, someone asked for a reload or a stop) into one of these and hands it to
`Machine.handle`. Workers are named by the id the core gave them in `Spawn`.
"""

from __future__ import annotations

import dataclasses
import enum

from .._protocol import Failure, FileEntry, ImportEntry
from .importgraph import DjangoSetup

# ------------------------------------------------------------------ about the whole server


@dataclasses.dataclass(frozen=True)
class FileChanged:
    """Watched files changed (one burst); `since` is the wall-clock time of the first change."""

    paths: tuple[str, ...]
    since: float


@dataclasses.dataclass(frozen=True)
class ReloadRequested:
    """A reload asked for by hand (`reload()`, SIGUSR1, `r` + Enter), or the first start ("start")."""

    reason: str


@dataclasses.dataclass(frozen=True)
class PackagesChanged:
    """Installed files the standby preloaded changed (a package was upgraded), or what a new
    interpreter imports from did (site-packages, `.pth` files); first seen at `since` (None: now)."""

    paths: tuple[str, ...]
    since: float | None = None


@dataclasses.dataclass(frozen=True)
class StandbyUnfit:
    """The standby must be replaced before it loads (its project layer holds a changed file, or a
    project layer is ready that it was not forked from); why, said at debug level."""

    why: str


@dataclasses.dataclass(frozen=True)
class Stop:
    """Stop: drain what serves, kill the rest (everything at once with `force`). Nothing follows."""

    force: bool = False


# ------------------------------------------------------------------ about one worker


@dataclasses.dataclass(frozen=True)
class WorkerStarted:
    """The process asked for by `Spawn` runs (forked from a project layer: `held` modules imported)."""

    worker: int
    pid: int
    held: int = 0


@dataclasses.dataclass(frozen=True)
class SpawnFailed:
    """The process asked for by `Spawn` could not be started (the OS refused)."""

    worker: int
    reason: str


@dataclasses.dataclass(frozen=True)
class WorkerGreeted:
    """It said hello: it is warm. `preload_failed`: (module, error) of each preload that failed."""

    worker: int
    preload_failed: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class FilesReported:
    """It imported these files (with the stat it saw) and these installed modules; it ran these
    project modules, each of which imported those project modules."""

    worker: int
    files: tuple[FileEntry, ...] = ()
    modules: tuple[str, ...] = ()
    imports: tuple[ImportEntry, ...] = ()
    env: tuple[str, ...] = ()  # environment variables its app's import set (a layer must not read them)
    fingerprints: tuple[tuple[str, int], ...] = ()  # the plain values of the project modules it ran
    django: DjangoSetup | None = None  # its app's import ran django.setup()


@dataclasses.dataclass(frozen=True)
class WorkerReady:
    """Its lifespan start-up is done (or its error page is up); it accepts once told to serve."""

    worker: int
    error_page: bool = False


@dataclasses.dataclass(frozen=True)
class WorkerFailed:
    """Its app could not start; it waits to be told to serve the error page, or to die."""

    worker: int
    failure: Failure


@dataclasses.dataclass(frozen=True)
class WorkerDraining:
    """It no longer accepts nor answers new requests."""

    worker: int


@dataclasses.dataclass(frozen=True)
class WorkerExited:
    """Its process exited (after whatever it said was handled). `returncode` < 0: a signal."""

    worker: int
    returncode: int | None


@dataclasses.dataclass(frozen=True)
class ChannelBroken:
    """It broke the protocol (garbage, a flood, an early end of its channel): it must go."""

    worker: int
    reason: str


@dataclasses.dataclass(frozen=True)
class WorkerPaused:
    """Its app stopped at a breakpoint, and its debugger has the terminal: no deadline kills it.
    `announce` is False for the stops of a step (`n`, `s`) after the first."""

    worker: int
    announce: bool = True


@dataclasses.dataclass(frozen=True)
class WorkerResumed:
    """Its debugger gave the terminal back (the app runs again, if only for a step): deadlines apply."""

    worker: int


class TimerKind(enum.Enum):
    RETRY = "the crash backoff ended"
    SLOW_START = "its start-up is slow"
    STANDBY_LATE = "the standby was not greeted in time"
    ANNOUNCE_DEADLINE = "it did not say draining in time: the next generation is announced anyway"
    KILL_DEADLINE = "its drain timeout passed: it is killed"
    FAILURE_GRACE = "its failure waited long enough for the rest of a save"


@dataclasses.dataclass(frozen=True)
class TimerFired:
    """A timer armed by `ArmTimer` went off; `worker` is None for RETRY."""

    kind: TimerKind
    worker: int | None = None


WorkerEvent = (
    WorkerStarted
    | SpawnFailed
    | WorkerGreeted
    | FilesReported
    | WorkerReady
    | WorkerFailed
    | WorkerDraining
    | WorkerExited
    | ChannelBroken
    | WorkerPaused
    | WorkerResumed
    | TimerFired
)
Event = FileChanged | ReloadRequested | PackagesChanged | StandbyUnfit | Stop | WorkerEvent
