"""What the developer and the caller are told of each generation: its outcome (ReportOutcome,
for ReloadEvent), the "Started"/"Reloaded" line, and the failure that is the app's state."""

from __future__ import annotations

import logging
from typing import Literal

from .._protocol import Failure
from . import commands as c
from .importgraph import ImportGraph
from .records import Announcement, Cause, MachineContext, Worker


class Reporter:
    """Reports outcomes and failures, each once; remembers the failure while the app is broken."""

    def __init__(self, context: MachineContext) -> None:
        self._context = context
        self.failure: Failure | None = None  # while the app is broken
        self.any_outcome = False  # a generation was ready or failed
        self.imports = ImportGraph()  # the import graph of the newest generation that served its app
        self._unreported: tuple[int, Cause] | None = None  # a failure not yet reported as an outcome

    def record_failure(
        self, worker: Worker, failure: Failure, cause: Cause | None, old_running: bool = False
    ) -> None:
        """The app's state is this failure: say why (with the traceback), watch its files, and
        report it as the generation's outcome once its error page (or the last good one) serves."""
        self.failure = failure
        self.watch_failure(failure)
        where = ", ".join(self._context.relative(p) for p in failure.files[-2:])
        traceback = failure.traceback.rstrip()
        self._context.out.log(
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
            self._unreported = (worker.generation, cause or Cause((), self._context.clock(), "start"))

    def watch_failure(self, failure: Failure) -> None:
        """Watch the files in the traceback, and where a module that was not found would be
        created: in the project, as missing, which the worker saw, so that one created since is a
        change at once."""
        missing = tuple((path, None, None, None) for path in failure.missing)
        self._context.out.emit(c.Watch(reported=missing, paths=(*failure.files, *failure.missing)))

    def settle_failure(self) -> None:
        """Report the recorded failure once the error page (or the last good generation) serves."""
        if self._unreported is None:
            return
        (generation, cause), self._unreported = self._unreported, None
        self.settle(generation, "failed", cause, self.failure)

    def settle(
        self,
        generation: int,
        outcome: Literal["ready", "failed"],
        cause: Cause,
        failure: Failure | None = None,
    ) -> None:
        self.any_outcome = True
        duration = max(0.0, self._context.clock() - cause.since)
        self._context.out.emit(c.ReportOutcome(generation, outcome, cause.changed, duration, failure))

    def healthy(self) -> None:
        """A generation serves its app: nothing is broken any more, nothing is left to report."""
        self.failure = None
        self._unreported = None

    def announce(self, announcement: Announcement) -> None:
        """The generation before no longer answers new requests: report this one."""
        worker, cause = announcement.ready, announcement.cause
        if worker is None or cause is None:
            self.settle_failure()
            return
        assert worker.generation is not None
        self.settle(worker.generation, "ready", cause)
        self._log_ready(worker, cause)

    def _log_ready(self, worker: Worker, cause: Cause) -> None:
        now = self._context.clock()
        cause.mark("old generation stopped", now)
        took = (now - cause.since - worker.time_paused) * 1000  # time at a breakpoint is not start-up
        steps = ", ".join(f"{step} +{(t - cause.since) * 1000:.1f} ms" for step, t in cause.steps.items())
        log, policy = self._context.out.log, self._context.policy
        log(logging.DEBUG, f"Generation {worker.generation}: changed at 0 ms, {steps}")
        if cause.reason == "start":
            log(
                logging.INFO,
                f"Started {policy.app} in {took:.0f} ms, serving on {policy.url} (press CTRL+C to quit)",
            )
        elif cause.changed:
            names = ", ".join(self._context.relative(p) for p in cause.changed[:5])
            more = f" and {len(cause.changed) - 5} more" if len(cause.changed) > 5 else ""
            log(
                logging.INFO,
                f"Reloaded in {took:.0f} ms (generation {worker.generation}): {names}{more} changed"
                f"{self._modules_ran(worker, cause)}",
            )
        else:
            log(
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
        self._context.out.log(
            logging.DEBUG,
            f"Generation {worker.generation}: the import graph says {len(needed)} project modules had "
            f"to run again: {', '.join(needed)}",
        )
        return f"; re-ran {max(len(loaded) - worker.held, 0)} of {len(loaded)} project modules"
