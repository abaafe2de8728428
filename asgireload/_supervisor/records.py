"""What the supervisor's core remembers: its policy, each worker, and why a generation loads."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Mapping

from .._protocol import Failure
from . import commands as c
from .importgraph import ImportGraph
from .table import Role

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


@dataclasses.dataclass(frozen=True)
class Announcement:
    """What to report once the generation before it no longer answers new requests."""

    ready: Worker | None  # this generation is ready; None: report the recorded failure
    cause: Cause | None = None


@dataclasses.dataclass(eq=False)
class Worker:
    """What the machine knows of one worker process."""

    id: int
    role: Role
    preloaded: bool = False  # it was asked to preload installed modules
    cold: bool = False  # spawned for a load without preloading: a spawn failure is final
    pid: int | None = None
    greeted: bool = False
    generation: int | None = None  # set once it is told to load
    load_at_start: bool = False  # spawned for a load: the load is prepared once it runs
    failure_to_show: Failure | None = None  # what that load shows instead of the app
    queued_load: c.Tell | None = None  # a load waiting for its hello
    loaded_at: float = 0.0
    error_page: bool = False
    failed: bool = False  # it reported a failure (so its crash is not a second one)
    held_failure: Failure | None = None  # a failure waiting FAILURE_GRACE before it is shown
    grace_given: bool = False  # its failure has waited once already
    said_ready: bool = False
    reported_files: bool = False  # it finished importing the app (or failed to)
    after_drain: Announcement | None = None
    paused: bool = False  # stopped at a breakpoint, its debugger has the terminal: not killed by a deadline
    paused_since: float = 0.0  # when it last paused
    time_paused: float = 0.0  # seconds spent at breakpoints before now (not start-up time)
    imports: ImportGraph = dataclasses.field(default_factory=ImportGraph)  # the modules it ran
    held: int = 0  # project modules its project layer had imported (it did not run them)

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
