"""The workers' stages and their moves, as one table: (stage, trigger) -> the one stage that results.

Each worker has one stage. A worker's life, with the trigger of every move (TRANSITIONS below
says the same as a table, and the machine checks every move against it):

    Spawn ─▶ WARMING ──hello──▶ WARM                       (a standby: role STANDBY)
                │ load            │ load
                ▼                 ▼
    Spawn ─▶ STARTING ──hello──▶ IMPORTING ──files──▶ STARTING_UP     (role LOADING)
    (cold)  (the load waits        │  ready / failed        │ ready / failed
             for its hello)        ▼                        ▼
                            READY ──serve──▶ SERVING ──drain──▶ DRAINING ──exit──▶ GONE
                            FAILED ─serve─┘ (the app, or      (an older generation)
                             │               the error page)
                             └─ stays FAILED while its failure waits FAILURE_GRACE

    any live stage ──kill (superseded, replaced, failed and not shown, late) or stop──▶ KILLED ──exit──▶ GONE

An event moves a worker to the one stage it names (it said ready: READY); the machine's decision
that follows is a move of its own (told to serve: SERVING). READY lasts only until that decision;
FAILED lasts while the failure waits FAILURE_GRACE, otherwise it too is decided at once. A worker
whose app stopped at a breakpoint keeps its stage (Worker.paused): the drain's kill deadline does
not kill it, and once it resumes it has the drain timeout again.

Stop kills every worker, except that a SERVING one drains and a DRAINING one that said ready
finishes. A worker whose process exits while loading or serving crashed; a standby that exits or
breaks the protocol is replaced, at most three times in a row; a KILLED worker's exit only means
that it no longer holds the app's ports, locks and files.

A pair (stage, trigger) that is not in the table raises IllegalTransition, with a sentence that
names both: it is a bug in the shell (which checks what a worker says before it gets here), never
something to step over. IGNORED marks the pairs that are legal and change nothing: what a
superseded worker still says, a timer that fired after the fact.
"""

from __future__ import annotations

import enum
from typing import Final

from . import machineevents as e


class IllegalTransition(Exception):
    """An event the state machine does not allow in the state it is in: a bug, never ignored."""


class Role(enum.Enum):
    """What a worker is for: the shell's view of its stage (the pids it reports by role)."""

    STANDBY = "standby"  # warm (or warming up), waits to be told to load
    LOADING = "loading"  # the newest generation: told to load
    SERVING = "serving"  # the current generation: the app, or the error page
    DRAINING = "draining"  # an older generation, finishing its requests
    KILLED = "killed"  # no longer wanted (superseded, failed, replaced): only its exit matters
    GONE = "gone"  # exited; only stale timers can still name it


class WorkerStage(enum.Enum):
    WARMING = "warming"  # a standby importing uvicorn and the preload list: not greeted yet
    WARM = "warm"  # a standby that said hello: waits to be told to load
    STARTING = "starting"  # told to load (or spawned for a load), not greeted: the load waits
    IMPORTING = "importing"  # the load was sent: importing the app
    STARTING_UP = "starting up"  # it reported the files it imported: lifespan start-up
    READY = "ready"  # it said ready: told to serve in the same step
    FAILED = "failed"  # it said failed: shown, killed, or its failure waits FAILURE_GRACE
    SERVING = "serving"  # the current generation: the app, or the error page
    DRAINING = "draining"  # an older generation, finishing its requests
    KILLED = "killed"  # no longer wanted: only its exit matters
    GONE = "gone"  # exited; only stale timers can still name it

    @property
    def role(self) -> Role:
        return _ROLES[self]


class Trigger(enum.Enum):
    # what the worker's process did or said
    STARTED = "its process started"
    SPAWN_FAILED = "its process could not be started"
    HELLO = "it said hello"
    FILES = "it reported files"
    READY = "it said ready"
    FAILED = "it said failed"
    DRAINING = "it said draining"
    EXITED = "its process exited"
    BROKE = "it broke the protocol"
    PAUSED = "it stopped at a breakpoint"
    RESUMED = "its debugger gave the terminal back"
    # its timers
    SLOW_START = "its slow-start report was due"
    STANDBY_LATE = "its hello was late"
    ANNOUNCE_DEADLINE = "its deadline to say draining passed"
    KILL_DEADLINE = "its drain timeout passed"
    FAILURE_GRACE = "the grace before its failure is shown passed"
    # what the supervisor decided about it
    LOAD = "a reload chose it"
    SERVE = "it was told to serve"
    DRAIN = "it was told to drain"
    KILL = "it was killed"
    STOP = "the server stopped"


class Ignored(enum.Enum):
    IGNORED = "legal, and changes nothing"


IGNORED: Final = Ignored.IGNORED  # a superseded worker, a stale timer: nothing happens

WARMING, WARM, STARTING, IMPORTING, STARTING_UP, READY, FAILED, SERVING, DRAINING, KILLED, GONE = WorkerStage
_ROLES: Final = {
    WARMING: Role.STANDBY,
    WARM: Role.STANDBY,
    STARTING: Role.LOADING,
    IMPORTING: Role.LOADING,
    STARTING_UP: Role.LOADING,
    READY: Role.LOADING,
    FAILED: Role.LOADING,
    SERVING: Role.SERVING,
    DRAINING: Role.DRAINING,
    KILLED: Role.KILLED,
    GONE: Role.GONE,
}
T = Trigger
_STANDBY = (WARMING, WARM)
_LOADING = (STARTING, IMPORTING, STARTING_UP, FAILED)  # (READY never outlasts its step)
_ALIVE = (*_STANDBY, *_LOADING, SERVING, DRAINING)  # told nothing that ends it

# (stage, trigger) -> the one stage that results, or IGNORED. A pair that is not here is illegal.
TRANSITIONS: Final[dict[tuple[WorkerStage, Trigger], WorkerStage | Ignored]] = {
    # a standby
    (WARMING, T.STARTED): WARMING,
    (WARMING, T.SPAWN_FAILED): GONE,  # the next reload spawns a worker instead
    (WARMING, T.HELLO): WARM,
    (WARMING, T.LOAD): STARTING,  # the load waits for its hello (STANDBY_LATE: a cold one instead)
    (WARM, T.LOAD): IMPORTING,
    # a second hello is a protocol error the shell ends the worker for; its preload failures count
    **{(stage, T.HELLO): stage for stage in (WARM, IMPORTING, STARTING_UP, FAILED)},
    **{(stage, T.EXITED): GONE for stage in _STANDBY},  # replaced (not preloading if it died doing so)
    # a worker loading the newest generation
    (STARTING, T.STARTED): STARTING,  # spawned for this load: the load is prepared now
    (STARTING, T.SPAWN_FAILED): GONE,  # tried again without preloading, then reported
    (STARTING, T.HELLO): IMPORTING,  # the load waiting for its hello goes out
    (STARTING, T.STANDBY_LATE): STARTING,  # killed: a cold worker loads instead
    (IMPORTING, T.FILES): STARTING_UP,
    (STARTING_UP, T.FILES): STARTING_UP,
    (IMPORTING, T.READY): READY,
    (STARTING_UP, T.READY): READY,
    (IMPORTING, T.FAILED): FAILED,  # shown; killed (usage, kept, retried alone); or waits FAILURE_GRACE,
    (STARTING_UP, T.FAILED): FAILED,  # while a healthy generation serves: a change may follow
    (FAILED, T.FILES): FAILED,
    (FAILED, T.FAILURE_GRACE): FAILED,  # its failure is decided now: shown
    (READY, T.SERVE): SERVING,
    (FAILED, T.SERVE): SERVING,  # the error page
    **{(stage, T.STANDBY_LATE): IGNORED for stage in (IMPORTING, STARTING_UP, FAILED)},  # greeted
    **{(stage, T.SLOW_START): stage for stage in _LOADING},
    **{(stage, T.EXITED): GONE for stage in _LOADING},  # a crash before ready
    # the current generation, and the older ones
    (SERVING, T.FILES): SERVING,  # imported lazily
    (SERVING, T.EXITED): GONE,  # a crash while serving
    (SERVING, T.DRAIN): DRAINING,
    (DRAINING, T.FILES): IGNORED,
    (DRAINING, T.DRAINING): DRAINING,  # the next generation is announced
    (DRAINING, T.ANNOUNCE_DEADLINE): DRAINING,  # announced anyway
    (DRAINING, T.KILL_DEADLINE): DRAINING,  # killed; still draining until its exit
    (DRAINING, T.EXITED): GONE,
    **{(stage, T.SLOW_START): IGNORED for stage in (SERVING, DRAINING, KILLED, GONE)},
    **{(stage, T.STANDBY_LATE): IGNORED for stage in (SERVING, DRAINING, KILLED, GONE)},
    **{(stage, T.FAILURE_GRACE): IGNORED for stage in (SERVING, DRAINING, KILLED, GONE)},  # superseded
    # what the machine decides about a live worker; a broken one is killed at once if a standby,
    # else told to die, keeping its stage: its exit is what counts
    **{(stage, T.KILL): KILLED for stage in (*_STANDBY, *_LOADING)},
    **{(stage, T.STOP): KILLED for stage in _ALIVE},  # a SERVING one drains instead, unless forced
    **{(stage, T.BROKE): stage for stage in _ALIVE},
    # a breakpoint changes no stage: a paused worker only escapes the kill deadline (Worker.paused)
    **{(stage, T.PAUSED): stage for stage in _ALIVE},
    **{(stage, T.RESUMED): stage for stage in _ALIVE},
    # a worker that was killed: only its exit matters
    (KILLED, T.STARTED): KILLED,
    (KILLED, T.SPAWN_FAILED): GONE,
    (KILLED, T.HELLO): KILLED,  # a preload failure it reports still counts
    (KILLED, T.EXITED): GONE,
    (KILLED, T.BROKE): KILLED,
    (KILLED, T.STOP): KILLED,
    **{
        (KILLED, trigger): IGNORED
        for trigger in (
            T.FILES,
            T.READY,
            T.FAILED,
            T.DRAINING,
            T.ANNOUNCE_DEADLINE,
            T.KILL_DEADLINE,
            T.PAUSED,
            T.RESUMED,
        )
    },
    # a worker that exited: its timers still fire; its terminal came back with its channel's end
    **{(GONE, trigger): IGNORED for trigger in (T.ANNOUNCE_DEADLINE, T.KILL_DEADLINE, T.PAUSED, T.RESUMED)},
}
del WARMING, WARM, STARTING, IMPORTING, STARTING_UP, READY, FAILED, SERVING, DRAINING, KILLED, GONE, T

_EVENT_TRIGGERS: Final[dict[type, Trigger]] = {
    e.WorkerStarted: Trigger.STARTED,
    e.SpawnFailed: Trigger.SPAWN_FAILED,
    e.WorkerGreeted: Trigger.HELLO,
    e.FilesReported: Trigger.FILES,
    e.WorkerReady: Trigger.READY,
    e.WorkerFailed: Trigger.FAILED,
    e.WorkerDraining: Trigger.DRAINING,
    e.WorkerExited: Trigger.EXITED,
    e.ChannelBroken: Trigger.BROKE,
    e.WorkerPaused: Trigger.PAUSED,
    e.WorkerResumed: Trigger.RESUMED,
}


def trigger_of(event: e.WorkerEvent) -> Trigger:
    if isinstance(event, e.TimerFired):
        return Trigger[event.kind.name]
    return _EVENT_TRIGGERS[type(event)]


def after_event(
    stage: WorkerStage, trigger: Trigger, worker: int | None, event: object
) -> WorkerStage | Ignored:
    """The stage a worker has once `event` happened to it; IllegalTransition if the table has no such move."""
    after = TRANSITIONS.get((stage, trigger))
    if after is None:
        raise IllegalTransition(
            f"Worker {worker} is {stage.value}, and '{trigger.value}' cannot happen to a "
            f"{stage.value} worker ({event})."
        )
    return after


def after_decision(stage: WorkerStage, trigger: Trigger, worker: int) -> WorkerStage:
    """The stage a worker has once the machine decided `trigger` about it; IllegalTransition if none."""
    after = TRANSITIONS.get((stage, trigger))
    if not isinstance(after, WorkerStage):
        raise IllegalTransition(
            f"Worker {worker} is {stage.value}: a {stage.value} worker cannot be moved because "
            f"'{trigger.value}'."
        )
    return after
