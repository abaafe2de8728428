"""The machine's workers by id, each with its stage: spawned, moved through the table, killed."""

from __future__ import annotations

from . import commands as c
from .importgraph import ImportGraph
from .records import MachineContext, Worker
from .table import Role, Trigger, WorkerStage, after_decision


class Roster:
    """The workers not yet gone. Every decision that moves one goes through `move` (the table)."""

    def __init__(self, context: MachineContext) -> None:
        self.workers: dict[int, Worker] = {}
        self._context = context
        self._next_id = 0

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

    def spawn(self, stage: WorkerStage, modules: tuple[str, ...], cold: bool = False) -> Worker:
        """A new worker (a standby, or one spawned for a load) that preloads `modules`."""
        self._next_id += 1
        worker = Worker(self._next_id, stage, preloaded=bool(modules), cold=cold)
        worker.imports = ImportGraph(self._context.policy.app.partition(":")[0])
        self.workers[worker.id] = worker
        self._context.out.emit(c.Spawn(worker.id, modules))
        return worker

    def move(self, worker: Worker, trigger: Trigger) -> None:
        """A decision about a worker: its new stage comes from the table."""
        worker.stage = after_decision(worker.stage, trigger, worker.id)

    def kill(self, worker: Worker) -> None:
        self.move(worker, Trigger.KILL)
        self._context.out.emit(c.Kill(worker.id))

    def forget(self, worker: Worker) -> None:
        """It exited, or never started: it is gone."""
        worker.stage = WorkerStage.GONE
        del self.workers[worker.id]

    def apps_running(self) -> bool:
        """Whether any worker holds an app (loading, serving, draining, or killed after a load)."""
        return any(w.holds_app for w in self.workers.values())

    def apps_running_besides(self, worker: Worker) -> bool:
        """Whether another generation's app (not an error page) may still run beside `worker`."""
        return any(w is not worker and w.holds_app and not w.error_page for w in self.workers.values())
