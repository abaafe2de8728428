"""What the supervisor's core asks the shell to do: one frozen dataclass per kind of command.

The shell carries them out in order (`StepCommands` collects those of one step of the machine).
Those that start something report back as events: a `Spawn` as WorkerStarted or SpawnFailed
(before any other event), an `ArmTimer` as its event.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from .._protocol import Failure, FileEntry, SupervisorMessage
from .machineevents import TimerFired, TimerKind


@dataclasses.dataclass(frozen=True)
class Spawn:
    """Start a worker process under this id; it preloads these installed modules before hello."""

    worker: int
    preload: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Tell:
    """Send a worker one of the supervisor's messages (_protocol.py): `Load` a generation (a
    greeted worker), `Serve` (a ready or failed one: it is the current generation),
    `ShowFailure` (one serving the error page), `Drain` (finish its requests and exit)."""

    worker: int
    message: SupervisorMessage


@dataclasses.dataclass(frozen=True)
class Kill:
    """SIGKILL a worker and everything it started."""

    worker: int


@dataclasses.dataclass(frozen=True)
class Watch:
    """Watch files: `reported` from the stat a worker saw, `paths` from their stat on disk now
    (paths already watched keep their baseline)."""

    reported: tuple[FileEntry, ...] = ()
    paths: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ReportOutcome:
    """A generation is ready or has failed: tell whoever waits on it (ReloadEvent)."""

    generation: int
    outcome: Literal["ready", "failed"]
    changed: tuple[str, ...]
    duration: float  # seconds from the change (or the request) to the outcome
    failure: Failure | None = None


@dataclasses.dataclass(frozen=True)
class ReplaceTemplate:
    """The next fork comes from a new template: the current one imported out-of-date packages."""


@dataclasses.dataclass(frozen=True)
class ArmTimer:
    """Feed `event` back in `delay` seconds; arming the same event again replaces the earlier timer."""

    delay: float
    event: TimerFired


@dataclasses.dataclass(frozen=True)
class Log:
    """One line for the `asgireload` logger, at a `logging` level."""

    level: int
    text: str


Command = Spawn | Tell | Kill | Watch | ReportOutcome | ReplaceTemplate | ArmTimer | Log


class StepCommands:
    """The commands one step of the machine emits, in order: each of its parts appends here."""

    def __init__(self) -> None:
        self._commands: list[Command] = []

    def emit(self, command: Command) -> None:
        self._commands.append(command)

    def log(self, level: int, text: str) -> None:
        self._commands.append(Log(level, text))

    def later(self, delay: float, kind: TimerKind, worker: int | None = None) -> None:
        """Have `kind` fire (for `worker`) in `delay` seconds, replacing that timer if armed."""
        self._commands.append(ArmTimer(delay, TimerFired(kind, worker)))

    def take(self) -> list[Command]:
        commands, self._commands = self._commands, []
        return commands
