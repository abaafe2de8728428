"""What a failed load, a crash or a worker that could not start leads to.

A failed load shows the error page (or, with --keep-last-good, leaves the old generation
serving), except that one that failed beside an older generation is tried again, once, after
every older generation has exited, and if that works every later reload is sequential; and that
a reload started by a file change that fails while a healthy generation serves waits
FAILURE_GRACE first, so that the rest of a save (a checkout still writing) supersedes it without
an error page. A crash is shown, and only a backoff timer (0.1 s, doubling up to 5 s) starts the
app again, so that a worker that dies at once can never make a hot loop.
"""

from __future__ import annotations

import logging

from .. import _protocol as protocol
from .._protocol import Failure
from . import commands as c
from . import machineevents as e
from .generations import Generations
from .records import BACKOFF_START, Backoff, Cause, MachineContext, Shows, Worker
from .reporting import Reporter
from .roster import Roster

# seconds a failed reload waits, while a healthy generation serves, for a change that supersedes
# it (the rest of a save or a checkout); then its failure is shown
FAILURE_GRACE = 0.5


class Recovery:
    """The decisions that follow a failure: retry, keep the old generation, show it, back off."""

    def __init__(
        self,
        context: MachineContext,
        roster: Roster,
        generations: Generations,
        reporter: Reporter,
        backoff: Backoff,
    ) -> None:
        self._context = context
        self._out = context.out
        self._roster = roster
        self._generations = generations
        self._reporter = reporter
        self._backoff = backoff
        self._retry_cause: Cause | None = None  # what the backoff timer loads when it fires

    def failed(self, worker: Worker, failure: Failure, may_wait: bool = True) -> None:
        """The loading generation could not start its app: retry, keep the old one, or show why."""
        worker.failure = failure
        generations, policy = self._generations, self._context.policy
        cause = generations.cause or Cause((), self._context.clock(), "start")
        if failure.kind == "stale-layer":
            # what the project layer held is not what a fresh process would have built now: the
            # same generation again, in a worker spawned for it (nothing was served)
            self._out.log(
                logging.DEBUG, f"Generation {worker.generation}: {failure.summary}; loading it again."
            )
            self._roster.kill(worker)
            self._generations.load_again_cold(cause, None)
            return
        if failure.kind == "usage" and worker.generation == 1:
            # A mistake in the command: start() turns it into one line and a failed exit.
            self._reporter.failure = failure
            generations.end_load()
            self._roster.kill(worker)
            self._reporter.settle(1, "failed", cause, failure)
            return
        current = self._roster.serving
        keep = policy.keep_last_good and current is not None and not current.error_page
        overlapping = self._roster.apps_running_besides(worker)
        retry = not keep and not generations.exclusive and not cause.retried and might_be_a_conflict(failure)
        if may_wait and not keep and not (overlapping and retry) and self._wait_for_the_save(worker, cause):
            return
        if overlapping and retry:
            # It may have failed only because the old generation holds a port, a lock or a file
            # it needs: stop every older generation, and try once more alone.
            self._out.log(
                logging.INFO,
                f"Generation {worker.generation} failed while an older generation was running "
                f"({failure.summary}); stopping that one and trying once more.",
            )
            self._roster.kill(worker)
            cause.retried = True
            generations.load_when_alone(cause)
            return
        self._reporter.record_failure(worker, failure, generations.cause, old_running=keep and overlapping)
        if keep:
            assert current is not None
            # --keep-last-good: the failed worker exits, the last good generation serves on.
            generations.end_load()
            self._roster.kill(worker)
            self._reporter.settle_failure()
            self._out.log(
                logging.WARNING, f"Keeping generation {current.generation} serving until the error is fixed."
            )
            return
        generations.serve(worker, Shows.ITS_FAILURE)

    def _wait_for_the_save(self, worker: Worker, cause: Cause) -> bool:
        """Whether a failed load that a file change started waits FAILURE_GRACE before it is shown.

        While a healthy generation serves, a failure may be that of a save still under way: a
        checkout that writes the module the new code imports a moment later, a file put back
        after the scanner's own grace. A change in the meantime supersedes this generation, and
        nothing failed; otherwise the failure is shown when the grace ends (it stays FAILED).
        """
        current = self._roster.serving
        if not cause.changed or current is None or current.error_page:
            return False
        assert worker.failure is not None
        self._reporter.watch_failure(worker.failure)  # a module created meanwhile supersedes it
        self._out.log(
            logging.DEBUG,
            f"Generation {worker.generation} failed ({worker.failure.summary}); generation "
            f"{current.generation} serves on for {FAILURE_GRACE:g} s in case the save is not over.",
        )
        self._out.later(FAILURE_GRACE, e.TimerKind.FAILURE_GRACE, worker.id)
        return True

    def grace_over(self, worker: Worker) -> None:
        """No change came to supersede a failed load: its failure is handled now, as it would have been."""
        assert worker.failure is not None, f"worker {worker.id} has no failure to show"
        self.failed(worker, worker.failure, may_wait=False)

    def crashed(self, worker: Worker, reason: str, was_waiting: bool = False) -> None:
        """A worker died unexpectedly: show why, and try again with a growing delay.

        Only the backoff timer starts the app again, so a worker that dies at once can never
        make a hot loop; and a worker that was itself serving (or loading) the error page is
        not replaced by another error page, whatever killed it would kill that one too.
        `was_waiting`: its failure waited FAILURE_GRACE, and is what it had to show.
        """
        held = worker.failure if was_waiting else None
        failure = held or Failure(kind="crash", summary=reason, exit_reason=reason)
        if held is not None or worker.failure is None:  # (a held failure was never recorded)
            self._reporter.record_failure(worker, failure, self._generations.cause)
        self._schedule_retry(None)
        current, loading = self._roster.serving, self._roster.loading
        if worker.error_page:
            self._reporter.settle_failure()
        elif current is not None and current.error_page:
            self._out.emit(c.Tell(current.id, protocol.ShowFailure(self._reporter.failure or failure)))
            self._reporter.settle_failure()
        elif (current is not None and self._context.policy.keep_last_good) or loading is not None:
            # the last good one serves on; or the loading one replaces it soon
            self._reporter.settle_failure()
        else:
            cause = self._generations.cause or Cause((), self._context.clock(), reason)
            self._generations.load(cause, failure=self._reporter.failure or failure)  # settles when it serves

    def spawn_failed(self, worker: Worker, reason: str) -> None:
        """The worker spawned for a load could not be started: once more without preloading, then
        it is reported, and tried again after the backoff."""
        cause = self._generations.cause
        assert cause is not None
        if not worker.cold:
            self._out.log(logging.ERROR, f"{reason}; trying again without preloading.")
            failure = worker.pending_load.failure if worker.pending_load is not None else None
            self._generations.load_again_cold(cause, failure)
            return
        failure = Failure(kind="spawn", summary=f"{reason}.")
        self._reporter.failure = failure
        self._out.log(logging.ERROR, f"Generation {self._generations.generation} could not start: {reason}.")
        self._generations.end_load()
        current = self._roster.serving
        if current is not None and current.error_page:
            self._out.emit(c.Tell(current.id, protocol.ShowFailure(failure)))
        self._reporter.settle(self._generations.generation, "failed", cause, failure)
        self._schedule_retry(cause)

    def _schedule_retry(self, cause: Cause | None) -> None:
        delay = self._backoff.next_delay()
        self._out.log(logging.WARNING, f"Restarting {self._context.policy.app} in {delay:.1f} s.")
        self._retry_cause = cause
        self._out.later(delay, e.TimerKind.RETRY)

    def retry_due(self) -> None:
        """The backoff ended: start the app again, unless a newer generation already loads."""
        loading, current = self._roster.loading, self._roster.serving
        retry, self._retry_cause = self._retry_cause, None
        if loading is not None and loading.error_page:
            self._retry_cause = retry
            self._out.later(BACKOFF_START, e.TimerKind.RETRY)  # let the error page come up first
        elif retry is not None and loading is None:
            self._generations.begin(retry)
        elif loading is None and (
            current is None or current.error_page or self._newest_never_served(current)
        ):
            self._generations.begin(Cause((), self._context.clock(), "restart after a crash"))

    def _newest_never_served(self, current: Worker) -> bool:
        """The newest generation died before it served (its error page too): what serves is
        older code, and the backoff must try the newest code again, as its log line promised."""
        return current.generation is not None and current.generation < self._generations.generation


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
