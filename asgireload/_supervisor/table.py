"""The supervisor's states and their legal transitions, as one table.

Each worker has one role. A worker's life, with the trigger of every move (TRANSITIONS below
says the same as a table, and the machine checks every move against it):

    Spawn ─▶ STANDBY ──load──▶ LOADING ──ready, or failed and shows the error page──▶ SERVING
    (warm)      │      (cold: Spawn straight to LOADING)  │                            │ drain
                │ kill (env file or                       │ kill (superseded, failed   ▼
                │ packages changed)                       │ and not shown, late)    DRAINING
                ▼                                         ▼                            │
              KILLED ◀────────────────────────────────────┘                            │
                │ exit                                              exit (any role) ───┤
                └────────────────────────────────────────────────────────────────────▶ GONE

A worker whose app stopped at a breakpoint keeps its role; while it is paused (Worker.paused) the
drain deadline does not kill it, and once it resumes it has the drain timeout again.

Stop kills every worker, except that a SERVING one drains and a DRAINING one that was ready
finishes. A worker whose process exits while LOADING or SERVING crashed; a STANDBY that exits or
breaks the protocol is replaced, at most three times in a row; a KILLED worker's exit only means
that it no longer holds the app's ports, locks and files.

A pair (role, trigger) that is not in the table raises IllegalTransition, with a sentence that
names both: it is a bug in the shell (which checks what a worker says before it gets here), never
something to step over. IGNORED marks the pairs that are legal and change nothing: what a
superseded worker still says, a timer that fired after the fact.
"""

from __future__ import annotations

import enum
from typing import Final

from . import events as e


class IllegalTransition(Exception):
    """An event the state machine does not allow in the state it is in: a bug, never ignored."""


class Role(enum.Enum):
    STANDBY = "standby"  # warm (or warming up), waits to be told to load
    LOADING = "loading"  # the newest generation: told to load (the load waits for its hello)
    SERVING = "serving"  # the current generation: the app, or the error page
    DRAINING = "draining"  # an older generation, finishing its requests
    KILLED = "killed"  # no longer wanted (superseded, failed, replaced): only its exit matters
    GONE = "gone"  # exited; only stale timers can still name it


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
    DRAINING_DEADLINE = "its draining deadline passed"
    DRAIN_DEADLINE = "its drain timeout passed"
    FAILURE_GRACE = "the grace before its failure is shown passed"
    # what the supervisor decided about it
    LOAD = "a reload chose it"
    SERVE = "it was told to serve"
    DRAIN = "it was told to drain"
    KILL = "it was killed"
    STOP = "the server stopped"


IGNORED: Final = frozenset[Role]()  # legal, and changes nothing: a superseded worker, a stale timer
S, L, V, D, K, G = Role.STANDBY, Role.LOADING, Role.SERVING, Role.DRAINING, Role.KILLED, Role.GONE
T = Trigger

# (role, trigger) -> the roles the worker may have once it is handled. A pair that is not here
# is illegal. Events (the first groups of Trigger) may lead to several roles, depending on what
# the machine decides; the decisions themselves (LOAD, SERVE, DRAIN, KILL, STOP) lead to one.
TRANSITIONS: Final[dict[tuple[Role, Trigger], frozenset[Role]]] = {
    (S, T.STARTED): frozenset({S}),
    (S, T.SPAWN_FAILED): frozenset({G}),
    (S, T.HELLO): frozenset({S}),
    (S, T.EXITED): frozenset({G}),  # replaced by a new standby (not preloading if it died doing so)
    (S, T.BROKE): frozenset({K}),  # killed and replaced at once: it must not take a load
    (S, T.LOAD): frozenset({L}),
    (S, T.KILL): frozenset({K}),  # the env file or an installed package changed; a cold load
    (S, T.STOP): frozenset({K}),
    (L, T.STARTED): frozenset({L}),  # a worker spawned for this load: the load goes out at its hello
    (L, T.SPAWN_FAILED): frozenset({G}),  # tried again without preloading, then reported
    (L, T.HELLO): frozenset({L}),  # the load waiting for its hello goes out
    (L, T.FILES): frozenset({L}),
    (L, T.READY): frozenset({V}),
    (L, T.FAILED): frozenset({V, K, L}),  # shows the error page; or killed (usage, kept, retried
    # alone); or stays loading for FAILURE_GRACE, while a healthy generation serves: a change may follow
    (L, T.FAILURE_GRACE): frozenset({V}),  # its failure is shown now
    (L, T.EXITED): frozenset({G}),  # a crash before ready
    (L, T.BROKE): frozenset({L}),
    (L, T.SLOW_START): frozenset({L}),
    (L, T.STANDBY_LATE): frozenset({L, K}),  # killed unless greeted; a cold worker loads instead
    (L, T.SERVE): frozenset({V}),
    (L, T.KILL): frozenset({K}),
    (L, T.STOP): frozenset({K}),
    (V, T.FILES): frozenset({V}),
    (V, T.EXITED): frozenset({G}),  # a crash while serving
    (V, T.BROKE): frozenset({V}),
    (V, T.SLOW_START): IGNORED,
    (V, T.STANDBY_LATE): IGNORED,
    (V, T.DRAIN): frozenset({D}),
    (V, T.FAILURE_GRACE): IGNORED,
    (V, T.STOP): frozenset({K}),  # killed when forced (else it is told to drain)
    (D, T.FILES): IGNORED,
    (D, T.DRAINING): frozenset({D}),  # the next generation is announced
    (D, T.EXITED): frozenset({G}),
    (D, T.BROKE): frozenset({D}),
    (D, T.SLOW_START): IGNORED,
    (D, T.STANDBY_LATE): IGNORED,
    (D, T.DRAINING_DEADLINE): frozenset({D}),  # announced anyway
    (D, T.DRAIN_DEADLINE): frozenset({D}),  # killed; still draining until its exit
    (D, T.FAILURE_GRACE): IGNORED,
    (D, T.STOP): frozenset({K}),  # killed, unless it was ready: then it finishes its requests
    (K, T.STARTED): frozenset({K}),
    (K, T.SPAWN_FAILED): frozenset({G}),
    (K, T.HELLO): frozenset({K}),  # a preload failure it reports still counts
    (K, T.FILES): IGNORED,
    (K, T.READY): IGNORED,
    (K, T.FAILED): IGNORED,
    (K, T.DRAINING): IGNORED,
    (K, T.EXITED): frozenset({G}),
    (K, T.BROKE): frozenset({K}),
    (K, T.SLOW_START): IGNORED,
    (K, T.STANDBY_LATE): IGNORED,
    (K, T.DRAINING_DEADLINE): IGNORED,
    (K, T.DRAIN_DEADLINE): IGNORED,
    (K, T.FAILURE_GRACE): IGNORED,  # superseded by a newer change while its failure waited
    (K, T.STOP): frozenset({K}),
    # A breakpoint changes no role: a paused worker only escapes the drain deadline (Worker.paused).
    (S, T.PAUSED): frozenset({S}),
    (S, T.RESUMED): frozenset({S}),
    (L, T.PAUSED): frozenset({L}),
    (L, T.RESUMED): frozenset({L}),
    (V, T.PAUSED): frozenset({V}),
    (V, T.RESUMED): frozenset({V}),
    (D, T.PAUSED): frozenset({D}),
    (D, T.RESUMED): frozenset({D}),
    (K, T.PAUSED): IGNORED,
    (K, T.RESUMED): IGNORED,
    (G, T.PAUSED): IGNORED,  # it exited (its terminal came back with its channel's end)
    (G, T.RESUMED): IGNORED,
    (G, T.SLOW_START): IGNORED,
    (G, T.STANDBY_LATE): IGNORED,
    (G, T.DRAINING_DEADLINE): IGNORED,
    (G, T.DRAIN_DEADLINE): IGNORED,
    (G, T.FAILURE_GRACE): IGNORED,
}
del S, L, V, D, K, G, T

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


def check(role: Role, trigger: Trigger, worker: int | None, event: object) -> frozenset[Role]:
    """The roles a worker may have after `trigger`; IllegalTransition if the table has no such move."""
    allowed = TRANSITIONS.get((role, trigger))
    if allowed is None:
        raise IllegalTransition(
            f"Worker {worker} is {role.value}, and '{trigger.value}' cannot happen to a "
            f"{role.value} worker ({event})."
        )
    return allowed
