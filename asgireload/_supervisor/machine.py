"""The supervisor's core: a state machine with no I/O and no asyncio.

`Machine.handle(event)` takes one event (events.py) and returns the commands (commands.py) the
shell must carry out, in order. The wall clock and the env file reach it only through the two
callables it is given, so a test drives it with a fake clock and a fake env file: events in,
commands out, no process. Workers are named by ids; the shell maps them to processes.

The workers' roles and their legal moves are the table in table.py (with its diagram); the
decisions that move them are in generations.py. In short: a change supersedes a loading
generation and loads a new one, on the warm standby if there is one; the new one serves once it
is ready, and only then is the old one told to drain; it is announced (ReportOutcome, the
"Reloaded" line) once the old one said `draining`, or after DRAINING_DEADLINE. A failed load shows
the error page (or, with --keep-last-good, leaves the old generation serving), except that one that
failed beside an older generation is tried again, once, after every older generation has exited,
and if that works every later reload is sequential; and that a reload started by a file change
that fails while a healthy generation serves waits FAILURE_GRACE first, so that the rest of a
save (a checkout still writing) supersedes it without an error page. A crash is shown, and only
a backoff timer (0.1 s, doubling up to 5 s) starts the app again.
"""

from __future__ import annotations

import logging

from .._protocol import Failure
from . import commands as c
from . import events as e
from .generations import FAILURE_GRACE, SLOW_START_REPORT, STANDBY_WAIT, Generations
from .records import Cause, Worker, describe_exit
from .table import IGNORED, IllegalTransition, Role, check, trigger_of


class Machine(Generations):
    """The reload logic of one server. Feed it events; carry out the commands it returns."""

    # ---------------------------------------------------------------- the one way in

    def handle(self, event: e.Event) -> list[c.Command]:
        """Take one event; return the commands it calls for. Raises IllegalTransition."""
        if self.stopped:
            raise IllegalTransition(f"The server has stopped, so {event} cannot happen any more.")
        self._out = []
        if isinstance(event, e.TimerFired) and event.kind is e.TimerKind.RETRY:
            self._retry_due()
        elif isinstance(event, e.FileChanged):
            self._file_changed(event)
        elif isinstance(event, e.ReloadRequested):
            self._begin(Cause((), self._clock(), event.reason))
        elif isinstance(event, e.PackagesChanged):
            names = ", ".join(self._relative(p) for p in event.paths[:3])
            self._log(logging.INFO, f"Installed packages changed ({names}); replacing the warm worker.")
            self._replace_standby()
        elif isinstance(event, e.StandbyUnfit):
            self._log(logging.DEBUG, f"Replacing the warm worker: {event.why}.")
            self._replace_standby()
        elif isinstance(event, e.Stop):
            self._stop(event.force)
        else:
            self._worker_event(event)
        out, self._out = self._out, []
        return out

    def _worker_event(self, event: e.WorkerEvent) -> None:
        worker = self.workers.get(event.worker) if event.worker is not None else None
        role = worker.role if worker is not None else Role.GONE
        trigger = trigger_of(event)
        allowed = check(role, trigger, event.worker, event)
        if allowed is IGNORED or worker is None:
            return
        match event:
            case e.WorkerStarted():
                self._on_started(worker, event)
            case e.SpawnFailed():
                self._on_spawn_failed(worker, event)
            case e.WorkerGreeted():
                self._on_hello(worker, event)
            case e.FilesReported():
                self._on_files(worker, event)
            case e.WorkerReady():
                worker.said_ready = True
                self._serve(worker, event.error_page)
            case e.WorkerFailed():
                self._on_failed(worker, event)
            case e.WorkerDraining() | e.TimerFired(kind=e.TimerKind.DRAINING_DEADLINE):
                self._drained(worker)  # (the deadline: announce even if the old one is unresponsive)
            case e.WorkerExited():
                self._on_exited(worker, event)
            case e.ChannelBroken():
                self._log(
                    logging.ERROR, f"Worker {worker.id} (pid {worker.pid}) sent {event.reason}; stopping it."
                )
                if worker.role is Role.STANDBY:  # never loaded: replace it now (a standby death)
                    self._kill(worker)
                    self._standby_died(worker)
                else:
                    self._emit(c.Kill(worker.id))  # its role stays: its exit is what counts
            case e.WorkerPaused():
                self._on_paused(worker, event.announce)
            case e.WorkerResumed():
                self._on_resumed(worker)
            case e.TimerFired(kind=e.TimerKind.SLOW_START):
                self._on_slow_start(worker)
            case e.TimerFired(kind=e.TimerKind.STANDBY_LATE):
                self._on_standby_late(worker)
            case e.TimerFired(kind=e.TimerKind.FAILURE_GRACE):
                self._on_failure_grace(worker)
            case e.TimerFired(kind=e.TimerKind.DRAIN_DEADLINE) if worker.paused:
                # it has its drain timeout again once resumed (see _on_resumed)
                self._log(
                    logging.INFO,
                    f"Generation {worker.generation} is past its drain timeout, but paused at a "
                    "breakpoint: it is left to finish once you continue.",
                )
            case e.TimerFired(kind=e.TimerKind.DRAIN_DEADLINE) if self.policy.under_debugger:
                self._log(
                    logging.WARNING,
                    f"Generation {worker.generation} is still finishing its requests after the drain "
                    "timeout; under a debugger it may be stopped at a breakpoint, so it is left to end "
                    "by itself.",
                )
            case e.TimerFired(kind=e.TimerKind.DRAIN_DEADLINE):
                self._log(logging.WARNING, f"Worker {worker.id} did not finish draining in time; killing it.")
                self._emit(c.Kill(worker.id))
        if worker.role not in allowed:
            raise IllegalTransition(
                f"Worker {worker.id} went from {role.value} to {worker.role.value} when "
                f"'{trigger.value}', which the table does not allow."
            )

    def _on_started(self, worker: Worker, event: e.WorkerStarted) -> None:
        worker.pid = event.pid
        worker.held = event.held
        if worker.load_at_start:
            worker.load_at_start = False
            self._prepare_load(worker, worker.failure_to_show)

    def _on_spawn_failed(self, worker: Worker, event: e.SpawnFailed) -> None:
        role = worker.role
        self._gone(worker)
        if role is Role.STANDBY:
            self._log(
                logging.WARNING, f"{event.reason}; the next reload starts one instead of a warm worker."
            )
        elif role is Role.LOADING:
            assert self._cause is not None
            if not worker.cold:
                self._log(logging.ERROR, f"{event.reason}; trying again without preloading.")
                self.generation -= 1
                self._load(self._cause, worker.failure_to_show, cold=True)
            else:
                self._could_not_start(event.reason, self._cause)

    def _on_hello(self, worker: Worker, event: e.WorkerGreeted) -> None:
        worker.greeted = True
        # each module once: a worker's line may name one twice, and it is dropped only once
        failed = list({m: error for m, error in event.preload_failed if m in self.preload}.items())
        if failed:
            self._drop_preloads(failed)
        if worker.queued_load is not None and worker.role is Role.LOADING:
            load, worker.queued_load = worker.queued_load, None
            self._emit(load)

    def _drop_preloads(self, failed: list[tuple[str, str]]) -> None:
        """Never preload these again; said once a run (a warning), later ones at debug level:
        a framework whose models need its settings fails alike in a dozen modules."""
        for module, _ in failed:
            self.preload.remove(module)
            self._not_preloadable.add(module)
        (module, error), others = failed[0], [name for name, _ in failed[1:]]
        named = ", ".join(map(repr, others[:3])) + (", …" if len(others) > 3 else "")
        more = f", and {len(others)} more ({named}); they are" if others else "; it is"
        self._log(
            logging.DEBUG if self._said_preload_failed else logging.WARNING,
            f"Preloading {module!r} failed ({error}){more} imported with the app instead.",
        )
        self._said_preload_failed = True

    def _on_files(self, worker: Worker, event: e.FilesReported) -> None:
        worker.reported_files = True
        worker.imports.add(event.imports)
        if event.files:
            self._emit(c.Watch(reported=event.files))
        known = set(self.preload) | self._not_preloadable
        for name in event.modules:
            if name not in known:
                known.add(name)
                self.preload.append(name)

    def _on_failed(self, worker: Worker, event: e.WorkerFailed) -> None:
        """The loading generation could not start its app: retry, keep the old one, or show why."""
        failure = event.failure
        worker.failed = True
        cause = self._cause or Cause((), self._clock(), "start")
        if failure.kind == "usage" and worker.generation == 1:
            # A mistake in the command: start() turns it into one line and a failed exit.
            self.failure = failure
            self._cause = None
            self._kill(worker)
            self._settle(1, "failed", cause, failure)
            return
        current = self.serving
        keep = self.policy.keep_last_good and current is not None and not current.error_page
        overlapping = self._apps_running_besides(worker)
        retry = not keep and not self._exclusive and not cause.retried and might_be_a_conflict(failure)
        if not keep and not (overlapping and retry) and self._hold_failure(worker, failure, cause):
            return
        if overlapping and retry:
            # It may have failed only because the old generation holds a port, a lock or a file
            # it needs: stop every older generation, and try once more alone.
            self._log(
                logging.INFO,
                f"Generation {worker.generation} failed while an older generation was running "
                f"({failure.summary}); stopping that one and trying once more.",
            )
            self._kill(worker)
            cause.retried = True
            self._load_when_alone(cause)
            return
        self._record_failure(worker, failure, old_running=keep and overlapping)
        if keep:
            assert current is not None
            # --keep-last-good: the failed worker exits, the last good generation serves on.
            self._cause = None
            self._kill(worker)
            self._settle_failure()
            self._log(
                logging.WARNING, f"Keeping generation {current.generation} serving until the error is fixed."
            )
            return
        self._serve(worker, error_page=True)

    def _hold_failure(self, worker: Worker, failure: Failure, cause: Cause) -> bool:
        """Whether a failed load that a file change started waits FAILURE_GRACE before it is shown.

        While a healthy generation serves, a failure may be that of a save still under way: a
        checkout that writes the module the new code imports a moment later, a file put back
        after the scanner's own grace. A change in the meantime supersedes this generation, and
        nothing failed; otherwise the failure is shown when the grace ends.
        """
        current = self.serving
        if worker.grace_given or not cause.changed or current is None or current.error_page:
            return False
        worker.grace_given, worker.held_failure = True, failure
        self._watch_failure(failure)  # a module created meanwhile supersedes it
        self._log(
            logging.DEBUG,
            f"Generation {worker.generation} failed ({failure.summary}); generation "
            f"{current.generation} serves on for {FAILURE_GRACE:g} s in case the save is not over.",
        )
        self._later(FAILURE_GRACE, e.TimerKind.FAILURE_GRACE, worker)
        return True

    def _on_failure_grace(self, worker: Worker) -> None:
        """No change came to supersede a failed load: its failure is handled now, as it would have been."""
        failure, worker.held_failure = worker.held_failure, None
        assert failure is not None, f"worker {worker.id} has no failure to show"
        self._on_failed(worker, e.WorkerFailed(worker.id, failure))

    def _on_exited(self, worker: Worker, event: e.WorkerExited) -> None:
        role = worker.role
        self._gone(worker)
        self._drained(worker)
        how = describe_exit(event.returncode)
        if role is Role.STANDBY:
            self._standby_died(worker)
        elif role is Role.LOADING:  # (a failure held for its grace is what it had to show)
            self._crashed(worker, f"The app's worker process {how} before it was ready", worker.held_failure)
        elif role is Role.SERVING:
            self._crashed(worker, f"The app's worker process {how} while serving")
        if self._after_exit is not None and not self._apps_running():
            cause, self._after_exit = self._after_exit, None
            self._load(cause)

    def _gone(self, worker: Worker) -> None:
        worker.role = Role.GONE
        del self.workers[worker.id]

    def _on_paused(self, worker: Worker, announce: bool) -> None:
        if not worker.paused:
            worker.paused_since = self._clock()
        worker.paused = True
        if worker.role is Role.DRAINING and announce:
            self._log_paused_drain(worker)

    def _on_resumed(self, worker: Worker) -> None:
        if worker.paused:
            worker.time_paused += self._clock() - worker.paused_since
        worker.paused = False
        if worker.role is Role.DRAINING:
            # the worker gives its requests the drain timeout again from now: so does its deadline
            self._later(self.policy.drain_timeout + 1.0, e.TimerKind.DRAIN_DEADLINE, worker)

    def _on_slow_start(self, worker: Worker) -> None:
        if worker.paused:  # stopped at a breakpoint while starting: slow on purpose
            self._later(SLOW_START_REPORT, e.TimerKind.SLOW_START, worker)
            return
        waited = self._clock() - worker.loaded_at
        doing = "running lifespan start-up" if worker.reported_files else f"importing {self.policy.app}"
        self._log(
            logging.WARNING,
            f"Generation {worker.generation} is still starting after {waited:.0f} s: {doing} "
            f"(pid {worker.pid}).",
        )
        self._later(SLOW_START_REPORT, e.TimerKind.SLOW_START, worker)

    def _on_standby_late(self, worker: Worker) -> None:
        if worker.greeted:
            return
        self._log(
            logging.WARNING,
            f"The warm worker was not ready {STANDBY_WAIT:.0f} s after the reload began; starting a "
            "fresh one.",
        )
        self._kill(worker)
        self._load(self._cause or Cause((), self._clock(), "reload"), cold=True)


# Exceptions (the type named at the start of a failure's summary) that a resource held by an
# older generation can cause: a port, a lock, a file. Code errors (SyntaxError, NameError, a
# module not found) never are, so they are shown at once rather than retried.
_CONFLICTS = frozenset(
    {
        "OSError",
        "PermissionError",
        "BlockingIOError",
        "FileExistsError",
        "TimeoutError",
        "ConnectionError",
        "OperationalError",  # sqlite3 (and DB-API drivers): "database is locked"
    }
)


def might_be_a_conflict(failure: Failure) -> bool:
    """Whether a failure could come from something the older generation still holds."""
    if failure.kind in ("lifespan", "startup"):
        return True  # start-up code takes locks and ports; its failures are worth one retry
    name = failure.summary.partition(":")[0].rpartition(".")[2].strip()
    text = failure.summary.lower()
    return name in _CONFLICTS or "lock" in text or "in use" in text
