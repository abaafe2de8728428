"""The supervisor's decisions about generations: load, serve, drain, fail, retry.

`Generations` holds the core's state and the decisions that change it; `Machine` (machine.py)
adds the one way in, `handle(event)`, and what each event does. Nothing here does I/O: each
decision appends commands to the list `handle` returns, and reads the time from the clock given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from .. import _protocol as protocol
from .._paths import relative
from .._protocol import Failure
from . import commands as c
from . import events as e
from .importgraph import ImportGraph
from .records import Announcement, Cause, Policy, ReadEnv, Worker
from .table import TRANSITIONS, IllegalTransition, Role, Trigger

BACKOFF_START, BACKOFF_MAX = 0.1, 5.0  # seconds before restarting a crashed app, doubling
DRAINING_DEADLINE = 1.0  # seconds an old generation has to stop answering before we announce anyway
STANDBY_WAIT = 2.0  # seconds a reload waits for a warm worker still preloading, then starts a cold one
STANDBY_DEATHS = 3  # warm workers dying in a row before we stop replacing them (no hot loop)
SLOW_START_REPORT = 5.0  # seconds between reports of a generation that has not said ready
# seconds a failed reload waits, while a healthy generation serves, for a change that supersedes
# it (the rest of a save or a checkout); then its failure is shown
FAILURE_GRACE = 0.5


class Generations:
    """The state of one server's generations, and the decisions that change it."""

    def __init__(self, policy: Policy, *, clock: Callable[[], float], read_env: ReadEnv) -> None:
        self.policy = policy
        self._clock = clock
        self._read_env = read_env
        self.stopped = False
        self.generation = 0  # the newest generation started (ready, failed, or still loading)
        self.failure: Failure | None = None  # while the app is broken
        self.any_outcome = False  # a generation was ready or failed
        self.workers: dict[int, Worker] = {}
        self.preload: list[str] = []  # installed modules the standby imports ahead of time
        self._not_preloadable: set[str] = set()
        self._said_preload_failed = False  # a failed preload is a warning once a run
        self._next_id = 0
        self._cause: Cause | None = None  # why the newest generation loads
        self._after_exit: Cause | None = None  # a load that waits until no other generation runs
        self._exclusive = policy.sequential  # True once the app proved it cannot overlap itself
        self._retry_cause: Cause | None = None  # what the backoff timer loads when it fires
        self._crashes = 0
        self._standby_deaths = 0  # warm workers that died in a row
        self._unreported: tuple[int, Cause] | None = None  # a failure not yet reported as an outcome
        self._out: list[c.Command] = []
        self.imports = ImportGraph()  # the import graph of the newest generation that served its app

    # ---------------------------------------------------------------- what the shell reads

    def _one(self, role: Role) -> Worker | None:
        return next((w for w in self.workers.values() if w.role is role), None)

    @property
    def serving(self) -> Worker | None:
        return self._one(Role.SERVING)

    @property
    def loading(self) -> Worker | None:
        return self._one(Role.LOADING)

    @property
    def standby(self) -> Worker | None:
        return self._one(Role.STANDBY)

    @property
    def state(self) -> Literal["starting", "ready", "failed", "reloading"]:
        """starting, ready, reloading (a healthy generation serves, a newer one loads), or failed."""
        if not self.any_outcome:
            return "starting"
        current = self.serving
        healthy = current is not None and not current.error_page
        if self.loading is not None and (healthy or self.failure is None):
            return "reloading"
        if healthy:
            return "ready"
        return "reloading" if self.failure is None else "failed"

    # ---------------------------------------------------------------- small helpers

    def _move(self, worker: Worker, trigger: Trigger) -> None:
        """A decision about a worker: its new role comes from TRANSITIONS."""
        allowed = TRANSITIONS.get((worker.role, trigger))
        if allowed is None or len(allowed) != 1:
            raise IllegalTransition(
                f"Worker {worker.id} is {worker.role.value}: a {worker.role.value} worker cannot be "
                f"moved because '{trigger.value}'."
            )
        (worker.role,) = allowed

    def _emit(self, command: c.Command) -> None:
        self._out.append(command)

    def _log(self, level: int, text: str) -> None:
        self._out.append(c.Log(level, text))

    def _relative(self, path: str) -> str:
        return relative(path, self.policy.cwd)

    def _later(self, delay: float, kind: e.TimerKind, worker: Worker | None = None) -> None:
        self._emit(c.ArmTimer(delay, e.TimerFired(kind, worker.id if worker is not None else None)))

    def _kill(self, worker: Worker) -> None:
        self._move(worker, Trigger.KILL)
        self._emit(c.Kill(worker.id))

    def _new_worker(self, role: Role, preload: bool) -> Worker:
        self._next_id += 1
        modules = tuple(self.preload) if self.policy.preload and preload else ()
        worker = Worker(self._next_id, role, preloaded=bool(modules), cold=not preload)
        worker.imports = ImportGraph(self.policy.app.partition(":")[0])
        self.workers[worker.id] = worker
        self._emit(c.Spawn(worker.id, modules))
        return worker

    def _apps_running(self) -> bool:
        """Whether any worker holds an app (loading, serving, draining, or killed after a load)."""
        return any(w.holds_app for w in self.workers.values())

    def _apps_running_besides(self, worker: Worker) -> bool:
        """Whether another generation's app (not an error page) may still run beside `worker`."""
        return any(w is not worker and w.holds_app and not w.error_page for w in self.workers.values())

    # ---------------------------------------------------------------- events about the server
    def _file_changed(self, event: e.FileChanged) -> None:
        self._crashes = 0
        settings_files = (self.policy.env_file, *self.policy.settings_files)
        if any(path in event.paths for path in settings_files if path is not None):
            self._replace_standby()  # it imported packages, or was started, under the old values
        cause = Cause(event.paths, event.since, "change")
        cause.mark("detected", self._clock())
        self._begin(cause)

    def _retry_due(self) -> None:
        loading, current = self.loading, self.serving
        retry, self._retry_cause = self._retry_cause, None
        if loading is not None and loading.error_page:
            self._retry_cause = retry
            self._later(BACKOFF_START, e.TimerKind.RETRY)  # let the error page come up first
        elif retry is not None and loading is None:
            self._begin(retry)
        elif loading is None and (
            current is None or current.error_page or self._newest_never_served(current)
        ):
            self._begin(Cause((), self._clock(), "restart after a crash"))

    def _newest_never_served(self, current: Worker) -> bool:
        """The newest generation died before it served (its error page too): what serves is
        older code, and the backoff must try the newest code again, as its log line promised."""
        return current.generation is not None and current.generation < self.generation

    def _stop(self, force: bool) -> None:
        """Drain what serves (kill it, with force), let a ready draining worker finish, kill the rest."""
        self.stopped = True
        for worker in list(self.workers.values()):
            if not force and worker.role is Role.SERVING:
                self._move(worker, Trigger.DRAIN)
                self._emit(c.Tell(worker.id, protocol.Drain(self.policy.drain_timeout)))
            elif not force and worker.role is Role.DRAINING and worker.said_ready:
                pass  # already finishing its requests
            else:
                self._move(worker, Trigger.STOP)
                self._emit(c.Kill(worker.id))

    # ---------------------------------------------------------------- generations

    def _begin(self, cause: Cause) -> None:
        """Start the next generation, superseding one that is still loading."""
        if self._after_exit is not None:
            # The older generations are still finishing: fold this into the load that waits.
            self._after_exit = self._after_exit.merged_with(cause)
            return
        stale = self.loading
        if stale is not None:
            ended = "; its debugger session was ended" if stale.paused else ""
            self._log(logging.INFO, f"Generation {stale.generation} is superseded by a newer change{ended}.")
            self._kill(stale)  # it was never told to serve, so it has accepted nothing
            self._settle_failure()  # a superseded generation that had failed did fail
            if self._cause is not None:
                cause = self._cause.merged_with(cause)
        if self._exclusive and self._apps_running():
            self._load_when_alone(cause)
            return
        self._load(cause)

    def _load_when_alone(self, cause: Cause) -> None:
        """Stop every generation, and load once the last of them has exited."""
        current = self.serving
        if current is not None:
            self._drain(current)
        self._after_exit = cause

    def _load(self, cause: Cause, failure: Failure | None = None, cold: bool = False) -> None:
        """Start generation N+1: the standby loads it, or a worker spawned for it does."""
        self.generation += 1
        self._cause = cause
        worker = self.standby
        if worker is None or cold:
            if worker is not None:
                self._kill(worker)
            spawned = self._new_worker(Role.LOADING, preload=not cold)
            spawned.load_at_start, spawned.failure_to_show = True, failure
            return  # the load is prepared once it runs (WorkerStarted), as if spawned right here
        if not worker.greeted:
            self._later(STANDBY_WAIT, e.TimerKind.STANDBY_LATE, worker)
        self._move(worker, Trigger.LOAD)
        self._prepare_load(worker, failure)

    def _prepare_load(self, worker: Worker, failure: Failure | None) -> None:
        env, env_failure = self._read_env()
        if env_failure is not None:
            self._log(logging.ERROR, env_failure.summary)
        now = self._clock()
        assert self._cause is not None
        self._cause.mark("load sent", now)
        worker.error_page = bool(failure or env_failure)
        worker.generation, worker.loaded_at = self.generation, now
        load = c.Tell(worker.id, protocol.Load(self.generation, dict(env), failure or env_failure))
        if worker.greeted:
            self._emit(load)
        else:
            worker.queued_load = load
        self._later(SLOW_START_REPORT, e.TimerKind.SLOW_START, worker)
        if env_failure is not None:
            worker.failed = True
            self._record_failure(worker, env_failure)

    def _could_not_start(self, reason: str, cause: Cause) -> None:
        """No worker could be started at all: say so, show it where a page serves, try again later."""
        failure = Failure(kind="spawn", summary=f"{reason}.")
        self.failure = failure
        self._log(logging.ERROR, f"Generation {self.generation} could not start: {reason}.")
        self._cause = None
        current = self.serving
        if current is not None and current.error_page:
            self._emit(c.Tell(current.id, protocol.ShowFailure(failure)))
        self._settle(self.generation, "failed", cause, failure)
        self._schedule_retry(cause)

    def _schedule_retry(self, cause: Cause | None) -> None:
        delay = min(BACKOFF_START * 2**self._crashes, BACKOFF_MAX)
        self._crashes += 1
        self._log(logging.WARNING, f"Restarting {self.policy.app} in {delay:.1f} s.")
        self._retry_cause = cause
        self._later(delay, e.TimerKind.RETRY)

    def _ensure_standby(self, preload: bool = True) -> None:
        if self.policy.standby and not self.stopped and self.standby is None:
            self._new_worker(Role.STANDBY, preload)

    def _standby_died(self, worker: Worker) -> None:
        """Replace a warm worker that died, but never in a loop: after STANDBY_DEATHS in a row,
        keep none until a generation next starts well."""
        self._standby_deaths += 1
        if self._standby_deaths >= STANDBY_DEATHS:
            if self._standby_deaths == STANDBY_DEATHS:
                self._log(
                    logging.WARNING,
                    f"The warm worker died {STANDBY_DEATHS} times in a row; keeping none until the app "
                    "next starts well (if preloading something kills it, try --no-preload).",
                )
            return
        if not worker.greeted and worker.preloaded:
            self._log(
                logging.WARNING, "The warm worker died while preloading; the next one will not preload."
            )
        self._ensure_standby(preload=worker.greeted and self._standby_deaths < 2)

    def _replace_standby(self) -> None:
        """A fresh warm worker: the one we have imported something that is out of date."""
        standby = self.standby
        if standby is not None:
            self._kill(standby)
            self._ensure_standby()

    def _drain(self, worker: Worker, then: Announcement | None = None) -> None:
        """Tell a generation that may be serving to finish and exit (one not yet greeted is killed)."""
        if not worker.greeted:
            self._kill(worker)  # it cannot have accepted anything, nor hear a drain
            if then is not None:
                self._announce(then)
            return
        self._move(worker, Trigger.DRAIN)
        worker.after_drain = then
        if worker.paused:
            self._log_paused_drain(worker)
        self._emit(c.Tell(worker.id, protocol.Drain(self.policy.drain_timeout)))
        self._later(DRAINING_DEADLINE, e.TimerKind.DRAINING_DEADLINE, worker)
        self._later(self.policy.drain_timeout + 1.0, e.TimerKind.DRAIN_DEADLINE, worker)

    def _log_paused_drain(self, worker: Worker) -> None:
        current = self.serving
        instead = f"generation {current.generation} serves" if current is not None else "no generation takes"
        self._log(
            logging.INFO,
            f"Generation {worker.generation} is paused at a breakpoint: {instead} new requests, and the "
            f"paused request finishes on generation {worker.generation}'s code when you continue; then "
            "it exits (no drain timeout while it is paused).",
        )

    def _drained(self, worker: Worker) -> None:
        """It stopped answering new requests (it said so, exited, or took too long to say)."""
        then, worker.after_drain = worker.after_drain, None
        if then is not None:
            self._announce(then)

    def _announce(self, announcement: Announcement) -> None:
        worker, cause = announcement.ready, announcement.cause
        if worker is None or cause is None:
            self._settle_failure()
            return
        assert worker.generation is not None
        self._settle(worker.generation, "ready", cause)
        self._log_ready(worker, cause)

    def _serve(self, worker: Worker, error_page: bool) -> None:
        """The loading generation is ready (or shows its error page): it serves, the old one drains."""
        self._emit(c.Tell(worker.id, protocol.Serve()))
        old = self.serving
        self._move(worker, Trigger.SERVE)
        worker.error_page = error_page
        now = self._clock()
        cause = self._cause or Cause((), now, "start")
        cause.mark("ready", now)
        self._cause = None
        if not error_page:
            self._crashes = 0  # a healthy generation: the next crash starts the backoff afresh
            self._standby_deaths = 0
        if cause.retried and not error_page and not self._exclusive:
            self._exclusive = True
            self._log(
                logging.WARNING,
                f"Generation {worker.generation} started only once the old one had stopped: the app "
                "seems to hold something exclusively at import (a port, a lock or a file). Reloading "
                "sequentially from now on (pass --sequential to start that way).",
            )
        if error_page:
            announcement = Announcement(None)  # only now does the page answer in place of the app
        else:
            self.failure = None
            self._unreported = None
            announcement = Announcement(worker, cause)
        if old is not None:
            # Announced once the old generation answers nothing new, so that after the
            # "Reloaded" line (or an awaited ReloadEvent) every request gets the new code.
            self._drain(old, then=announcement)
        else:
            self._announce(announcement)
        self._ensure_standby()

    def _log_ready(self, worker: Worker, cause: Cause) -> None:
        now = self._clock()
        cause.mark("old generation stopped", now)
        took = (now - cause.since - worker.time_paused) * 1000  # time at a breakpoint is not start-up
        steps = ", ".join(f"{step} +{(t - cause.since) * 1000:.1f} ms" for step, t in cause.steps.items())
        self._log(logging.DEBUG, f"Generation {worker.generation}: changed at 0 ms, {steps}")
        if cause.reason == "start":
            self._log(
                logging.INFO,
                f"Started {self.policy.app} in {took:.0f} ms, serving on {self.policy.url} "
                "(press CTRL+C to quit)",
            )
        elif cause.changed:
            names = ", ".join(self._relative(p) for p in cause.changed[:5])
            more = f" and {len(cause.changed) - 5} more" if len(cause.changed) > 5 else ""
            self._log(
                logging.INFO,
                f"Reloaded in {took:.0f} ms (generation {worker.generation}): {names}{more} changed"
                f"{self._modules_ran(worker, cause)}",
            )
        else:
            self._log(
                logging.INFO,
                f"Reloaded in {took:.0f} ms (generation {worker.generation}): {cause.reason}"
                f"{self._modules_ran(worker, cause)}",
            )
        self.imports = worker.imports

    def _modules_ran(self, worker: Worker, cause: Cause) -> str:
        """ "; re-ran N of M project modules" for the Reloaded line, and at debug level the modules
        that the import graph (the last generation's, known before this load) says had to run again.

        N counts the modules the worker ran: those its project layer held, it did not."""
        loaded = worker.imports
        if not loaded:
            return ""
        graph = self.imports if self.imports else loaded
        needed = graph.in_import_order(graph.must_run_again(cause.changed))
        self._log(
            logging.DEBUG,
            f"Generation {worker.generation}: the import graph says {len(needed)} project modules had "
            f"to run again: {', '.join(needed)}",
        )
        return f"; re-ran {max(len(loaded) - worker.held, 0)} of {len(loaded)} project modules"

    def _record_failure(self, worker: Worker, failure: Failure, old_running: bool = False) -> None:
        self.failure = failure
        self._watch_failure(failure)
        where = ", ".join(self._relative(p) for p in failure.files[-2:])
        traceback = failure.traceback.rstrip()
        self._log(
            logging.ERROR,
            f"Generation {worker.generation} failed: {failure.summary or 'unknown error'}"
            + (f" (fix {where}; the server reloads by itself)" if where else "")
            + (
                " The previous generation was still running: if the app holds a port or a lock at "
                "import, pass --sequential."
                if old_running
                else ""
            )
            + ("\n" + traceback if traceback else ""),
        )
        if worker.generation is not None:
            self._unreported = (worker.generation, self._cause or Cause((), self._clock(), "start"))

    def _watch_failure(self, failure: Failure) -> None:
        """Watch the files in the traceback, and where a module that was not found would be
        created: in the project, as missing, which the worker saw, so that one created since is a
        change at once."""
        missing = tuple((path, None, None, None) for path in failure.missing)
        self._emit(c.Watch(reported=missing, paths=(*failure.files, *failure.missing)))

    def _settle_failure(self) -> None:
        """Report the recorded failure once the error page (or the last good generation) serves."""
        if self._unreported is None:
            return
        (generation, cause), self._unreported = self._unreported, None
        self._settle(generation, "failed", cause, self.failure)

    def _settle(
        self,
        generation: int,
        outcome: Literal["ready", "failed"],
        cause: Cause,
        failure: Failure | None = None,
    ) -> None:
        self.any_outcome = True
        duration = max(0.0, self._clock() - cause.since)
        self._emit(c.ReportOutcome(generation, outcome, cause.changed, duration, failure))

    def _crashed(self, worker: Worker, reason: str, held: Failure | None = None) -> None:
        """A worker died unexpectedly: show why, and try again with a growing delay.

        Only the backoff timer starts the app again, so a worker that dies at once can never
        make a hot loop; and a worker that was itself serving (or loading) the error page is
        not replaced by another error page, whatever killed it would kill that one too.
        """
        failure = held or Failure(kind="crash", summary=reason, exit_reason=reason)
        if held is not None or not worker.failed:  # (a held failure was never recorded)
            self._record_failure(worker, failure)
        self._schedule_retry(None)
        current, loading = self.serving, self.loading
        if worker.error_page:
            self._settle_failure()
        elif current is not None and current.error_page:
            self._emit(c.Tell(current.id, protocol.ShowFailure(self.failure or failure)))
            self._settle_failure()
        elif (current is not None and self.policy.keep_last_good) or loading is not None:
            self._settle_failure()  # the last good one serves on; or the loading one replaces it soon
        else:
            cause = self._cause or Cause((), self._clock(), reason)
            self._load(cause, failure=self.failure or failure)  # settles when it serves

    # ---------------------------------------------------------------- events about one worker
