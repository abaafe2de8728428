"""What moves a fork server's template, and what the fork server is told to do: the table.

The stages of a template, the triggers that move it, and TRANSITIONS: (stage, trigger) -> the
one stage that results. Then the events templatelife.py takes, the commands it returns, and
what it records of each template and fork request. No I/O; see templatelife.py for the diagram
and the decisions.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Final

from .._protocol import Settings


class Stage(enum.Enum):
    LAUNCHING = "launching"  # being started: its process, its channel, its output pipe
    STARTING = "starting"  # importing uvicorn: a fork request waits in its channel meanwhile
    FORKABLE = "forkable"  # said hello: forks; importing the preload list
    WARM = "warm"  # the preload list imported: forks at once
    RETIRED = "retired"  # replaced after it forked: forks no more, exits once its workers have
    ENDING = "ending"  # killed (never forked, broke its wire, the server stops): only its exit counts
    GONE = "gone"  # exited and reaped


class TemplateTrigger(enum.Enum):
    LAUNCHED = "it was launched"
    LAUNCH_FAILED = "it could not be launched"
    HELLO = "it said hello"
    WARM = "it said warm"
    FORKED = "it forked a worker"
    FORK_FAILED = "a fork from it failed"
    BROKE = "it broke its wire"
    EXITED = "it exited"
    RETIRE = "it was retired"
    END = "it was ended"


S, T = Stage, TemplateTrigger
_LIVE = (S.STARTING, S.FORKABLE, S.WARM, S.RETIRED)

# (stage, trigger) -> the one stage that results. A pair that is not here is illegal.
TRANSITIONS: Final[dict[tuple[Stage, TemplateTrigger], Stage]] = {
    (S.LAUNCHING, T.LAUNCHED): S.STARTING,
    (S.LAUNCHING, T.LAUNCH_FAILED): S.GONE,  # forking is given up
    (S.LAUNCHING, T.END): S.ENDING,  # replaced or stopped while it launches: ended once launched
    (S.ENDING, T.LAUNCHED): S.ENDING,
    (S.ENDING, T.LAUNCH_FAILED): S.GONE,  # (or never launched: it was ended first)
    (S.STARTING, T.HELLO): S.FORKABLE,
    (S.STARTING, T.WARM): S.WARM,  # (a template with threads says only `warm`, and exits)
    (S.FORKABLE, T.WARM): S.WARM,
    (S.WARM, T.WARM): S.WARM,  # it imported more, on request
    (S.RETIRED, T.WARM): S.RETIRED,  # its warm-up ended after it was replaced
    (S.ENDING, T.HELLO): S.ENDING,  # read in the same batch as the line that broke it
    (S.ENDING, T.WARM): S.ENDING,
    (S.FORKABLE, T.RETIRE): S.RETIRED,  # (only one that forked is retired; others are ended)
    (S.WARM, T.RETIRE): S.RETIRED,
    **{(stage, T.FORKED): stage for stage in (S.FORKABLE, S.WARM, S.RETIRED, S.ENDING)},
    **{(stage, T.FORK_FAILED): stage for stage in (*_LIVE, S.ENDING)},  # replaced if current
    **{(stage, T.BROKE): S.ENDING for stage in (*_LIVE, S.ENDING)},
    **{(stage, T.END): S.ENDING for stage in (*_LIVE, S.ENDING)},
    **{(stage, T.EXITED): S.GONE for stage in (*_LIVE, S.ENDING)},  # replaced if current
}
del S, T


# ------------------------------------------------------------------ events


@dataclasses.dataclass(frozen=True)
class Start:
    """Launch the first template with these settings (the first worker's, with the warm cache)."""

    settings: Settings


@dataclasses.dataclass(frozen=True)
class InstalledPackagesChanged:
    """An installed package changed: the next fork comes from a new template."""


@dataclasses.dataclass(frozen=True)
class Launched:
    template: int
    pid: int


@dataclasses.dataclass(frozen=True)
class LaunchFailed:
    template: int
    reason: str


@dataclasses.dataclass(frozen=True)
class EarlyFound:
    """The command's early template is there to take; `unlike` says why it is not the one that
    would start now (see `unlike_now`), or is None."""

    template: int
    pid: int
    unlike: str | None


@dataclasses.dataclass(frozen=True)
class Greeted:
    """It said hello: it can fork; these modules are imported, this many threads run."""

    template: int
    threads: int
    modules: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Warmed:
    """It said warm: it imported the preload list (or what it was asked to import since)."""

    template: int
    threads: int
    modules: frozenset[str]
    failed: tuple[str, ...]
    preloaded: object  # how many it imported: only said


@dataclasses.dataclass(frozen=True)
class Forked:
    template: int


@dataclasses.dataclass(frozen=True)
class ForkFailed:
    """A fork request sent to it got no worker (the template died, refused, or did not answer)."""

    template: int
    why: str


@dataclasses.dataclass(frozen=True)
class WireBroken:
    template: int
    why: str
    announce: bool = True


@dataclasses.dataclass(frozen=True)
class Exited:
    template: int


@dataclasses.dataclass(frozen=True)
class Close:
    """The supervisor stops: no template is launched or replaced any more."""


Event = (
    Start
    | InstalledPackagesChanged
    | Launched
    | LaunchFailed
    | EarlyFound
    | Greeted
    | Warmed
    | Forked
    | ForkFailed
    | WireBroken
    | Exited
    | Close
)


def _modules(message: dict[str, object]) -> frozenset[str]:
    modules = message.get("modules")
    return frozenset(str(name) for name in modules) if isinstance(modules, list) else frozenset()


def _threads(message: dict[str, object]) -> int:
    threads = message.get("threads")
    return threads if isinstance(threads, int) else 1


def event_of(template: int, message: dict[str, object]) -> Greeted | Warmed | None:
    """A template's `hello` or `warm` line as templatelife's event (None for other lines)."""
    if message.get("type") == "hello":
        return Greeted(template, _threads(message), _modules(message))
    if message.get("type") == "warm":
        failed = message.get("failed")
        return Warmed(
            template,
            _threads(message),
            _modules(message),
            tuple(str(name) for name in failed) if isinstance(failed, list) else (),
            message.get("preloaded"),
        )
    return None


# ------------------------------------------------------------------ commands


@dataclasses.dataclass(frozen=True)
class Launch:
    """Start a template process (or take the command's early one) and send it `settings`."""

    template: int
    settings: Settings


@dataclasses.dataclass(frozen=True)
class TakeEarly:
    """Use the command's early template as this one."""

    template: int


@dataclasses.dataclass(frozen=True)
class EndEarly:
    """End the command's early template, unused."""


@dataclasses.dataclass(frozen=True)
class Retire:
    """Tell it to fork no more and exit once its workers have (it reaps them)."""

    template: int


@dataclasses.dataclass(frozen=True)
class End:
    """End it now (the workers it forked, if any, lead sessions of their own)."""

    template: int


@dataclasses.dataclass(frozen=True)
class Preload:
    """Send it these modules to import before the next fork."""

    template: int
    modules: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LogLine:
    level: int
    message: str


@dataclasses.dataclass(frozen=True)
class Fork:
    """A fork request's last step: send it to this template, wait `answer_wait` for the worker."""

    template: int
    answer_wait: float


@dataclasses.dataclass(frozen=True)
class Wait:
    """A fork request waits for the next event, at most until its phase's deadline."""

    deadline: float


@dataclasses.dataclass(frozen=True)
class SpawnInstead:
    """A fork request ends: the worker is spawned."""


Command = Launch | TakeEarly | EndEarly | Retire | End | Preload | LogLine | Fork | Wait | SpawnInstead


# ------------------------------------------------------------------ records


@dataclasses.dataclass
class TemplateRecord:
    """What the fork server knows of one template; its stage moves only through `_move`."""

    id: int
    settings: Settings  # launched with: its env file values, its preload list
    stage: Stage = Stage.LAUNCHING
    pid: int | None = None
    preloaded: frozenset[str] = frozenset()  # modules it has, or failed to import: none to ask for
    greeted: bool = False  # said hello with one thread (so, if it dies, it died after it was ready)
    forked: bool = False  # forked a worker: retired, not ended, when replaced


class Phase(enum.Enum):
    USABLE = "a template that can take it"
    USABLE_AGAIN = "a template with the env file's new values"
    WARMING = "its template's warm-up"


@dataclasses.dataclass
class ForkRequest:
    """One worker wanted from a template, with these settings; moved on by `route`."""

    wanted: Settings
    phase: Phase = Phase.USABLE
    template: int | None = None  # chosen once usable
    timed_out: bool = False  # its phase's deadline passed (set by the fork server)
    environment_changed: str | None = None  # a variable changed since the current template started
