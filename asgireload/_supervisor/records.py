"""What the supervisor's core remembers: its policy, each worker, why a generation loads, the
crash backoff; and what its parts share (MachineContext)."""

from __future__ import annotations

import dataclasses
import enum
import signal
from collections.abc import Callable, Mapping

from .. import _protocol as protocol
from .._paths import relative
from .._protocol import Failure
from .commands import StepCommands
from .importgraph import ImportGraph
from .table import Role, WorkerStage

BACKOFF_START, BACKOFF_MAX = 0.1, 5.0  # seconds before restarting a crashed app, doubling
ReadEnv = Callable[[], tuple[Mapping[str, str], Failure | None]]  # the env file: values, or why not


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the machine needs of the Config (and of the running server, for its log lines)."""

    app: str = "main:app"
    url: str = "http://127.0.0.1:8000"
    sequential: bool = False
    keep_last_good: bool = False
    standby: bool = True
    preload: bool = True
    drain_timeout: float = 10.0
    env_file: str | None = None
    settings_files: tuple[str, ...] = ()  # pyproject.toml, --log-config: a save replaces the standby
    cwd: str = "/"  # paths in log lines are shown relative to it
    under_debugger: bool = False  # a worker may be stopped at a breakpoint we are not told of


@dataclasses.dataclass
class MachineContext:
    """What every part of the machine shares: the policy (replaced when a settings file is
    saved), the clock, the env file, and the commands of the step under way."""

    policy: Policy
    clock: Callable[[], float]
    read_env: ReadEnv
    out: StepCommands = dataclasses.field(default_factory=StepCommands)

    def relative(self, path: str) -> str:
        """A path as log lines show it: relative to the current folder."""
        return relative(path, self.policy.cwd)


@dataclasses.dataclass
class Cause:
    """Why a generation loads: the files that changed, or the reason it was asked for, and when."""

    changed: tuple[str, ...]
    since: float  # wall-clock time of the change (or the request)
    reason: str  # "change", "start", "reload() called", "restart after a crash", ...
    retried: bool = False  # it failed once beside an older generation, and is tried again alone
    steps: dict[str, float] = dataclasses.field(default_factory=dict)  # for the debug log

    def mark(self, step: str, now: float) -> None:
        self.steps.setdefault(step, now)

    def merged_with(self, later: Cause) -> Cause:
        """One cause for a load that replaces (or absorbs) another."""
        changed = tuple(sorted({*self.changed, *later.changed}))
        merged = Cause(changed, min(self.since, later.since), later.reason, self.retried or later.retried)
        merged.steps = {**later.steps, **self.steps}
        return merged


@dataclasses.dataclass
class Backoff:
    """How long a crashed app waits to be started again: BACKOFF_START, doubling with each crash
    up to BACKOFF_MAX. A change or a healthy generation starts it afresh."""

    crashes: int = 0

    def next_delay(self) -> float:
        delay: float = min(BACKOFF_START * 2**self.crashes, BACKOFF_MAX)
        self.crashes += 1
        return delay

    def reset(self) -> None:
        self.crashes = 0


@dataclasses.dataclass(frozen=True)
class Announcement:
    """What to report once the generation before it no longer answers new requests."""

    ready: Worker | None  # this generation is ready; None: report the recorded failure
    cause: Cause | None = None


class Shows(enum.Enum):
    """What a worker serves (or will, once told to): its app, or an error page."""

    APP = "the app"
    GIVEN_FAILURE = "the error page it was loaded with"  # a crash's, the env file's: it said ready
    ITS_FAILURE = "the error page of its own failure"  # it said failed, and was told to serve


@dataclasses.dataclass(frozen=True)
class PendingLoad:
    """A load a worker cannot take yet. One spawned for a load has it prepared once its process
    runs (`message` is None until then); it is sent once the worker says hello."""

    failure: Failure | None = None  # what it shows instead of the app
    message: protocol.Load | None = None


@dataclasses.dataclass(eq=False)
class Worker:
    """What the machine knows of one worker process. How far it got is its `stage` alone."""

    id: int
    stage: WorkerStage
    preloaded: bool = False  # it was asked to preload installed modules
    cold: bool = False  # spawned for a load without preloading: a spawn failure is final
    pid: int | None = None
    generation: int | None = None  # set once it is told to load
    pending_load: PendingLoad | None = None  # told to load before it said hello
    loaded_at: float = 0.0
    shows: Shows = Shows.APP
    # its own failure (it said failed, or its env file is broken); while FAILED, not yet recorded
    failure: Failure | None = None
    after_drain: Announcement | None = None
    paused_since: float | None = None  # stopped at a breakpoint (its debugger has the terminal)
    time_paused: float = 0.0  # seconds spent at breakpoints before now (not start-up time)
    imports: ImportGraph = dataclasses.field(default_factory=ImportGraph)  # the modules it ran
    held: int = 0  # project modules its project layer had imported (it did not run them)

    @property
    def role(self) -> Role:
        return self.stage.role

    @property
    def error_page(self) -> bool:
        return self.shows is not Shows.APP

    @property
    def paused(self) -> bool:
        """At a breakpoint: no deadline kills it."""
        return self.paused_since is not None

    @property
    def holds_app(self) -> bool:
        """Whether its process may hold the app (and so its ports, locks and files) until it exits."""
        return self.role in (Role.LOADING, Role.SERVING, Role.DRAINING) or (
            self.role is Role.KILLED and self.generation is not None
        )


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"
