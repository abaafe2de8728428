"""The worker processes, by the machine's ids: started, spoken to, handed connections, ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator

from .. import _handoff, _warmcache
from .. import _protocol as protocol
from . import machineevents as events
from . import workers
from .debugging import DebugTerminal
from .forkserver import ForkServer
from .projectlayers import ProjectLayers
from .workers import WorkerProcess

logger = logging.getLogger("asgireload")


class Processes:
    def __init__(
        self,
        listener: socket.socket,
        emit: workers.Emit,
        output: Callable[[str], None] | None,
        serving: Callable[[], int | None],
        terminal: DebugTerminal | None = None,
        forkserver: ForkServer | None = None,
    ) -> None:
        self._listener = listener
        self._emit = emit  # what they say, and their exits, as the machine's events
        self._output = output
        self._serving = serving  # the id of the worker serving now, if any
        self._terminal = terminal  # lent to a worker stopped at breakpoint(), if asgireload has one
        self._by_id: dict[int, WorkerProcess] = {}
        self._held = _handoff.Held()  # handed-over connections waiting for a generation to serve them
        self.forkserver = forkserver  # where warm workers come from, if forking is possible
        self._memory = _warmcache.Memory()  # the preload list, for the next start-up's template

    @property
    def layers(self) -> ProjectLayers | None:
        """The fork server's project layers, if it has them."""
        return self.forkserver.layers if self.forkserver is not None else None

    def __iter__(self) -> Iterator[WorkerProcess]:
        return iter(list(self._by_id.values()))

    def get(self, worker: int | None) -> WorkerProcess | None:
        return self._by_id.get(worker) if worker is not None else None

    async def spawn(
        self, worker: int, settings: Callable[[int, int, int], protocol.Settings], fork: bool = False
    ) -> events.WorkerStarted | events.SpawnFailed:
        """Start a worker process; the result is the machine's next event. With `fork`, it comes
        from the fork server if there is one (whose template starts with the first worker, with
        the warm cache's preload list).

        Cancelled (by stop()), it finishes the spawn first, so that the process is known and
        stop() ends it, then lets CancelledError through."""
        spawning = asyncio.ensure_future(self._start(worker, settings, fork))
        try:
            process = await asyncio.shield(spawning)
        except workers.SpawnError as exc:
            return events.SpawnFailed(worker, str(exc))
        except asyncio.CancelledError:
            with contextlib.suppress(workers.SpawnError):
                late = await spawning
                self._by_id[late.id] = late
            raise
        self._by_id[process.id] = process
        process.stop_relaying = _handoff.listen(process.handoff, lambda fds: self.relay(process, fds))
        held = self.layers.held_by(worker) if self.layers is not None else 0
        return events.WorkerStarted(worker, process.pid, held)

    async def _start(
        self, worker: int, settings: Callable[[int, int, int], protocol.Settings], fork: bool
    ) -> WorkerProcess:
        forkserver = self.forkserver
        if forkserver is not None:
            wanted = settings(-1, -1, -1)  # a forked worker's descriptors are the template's to tell
            self._memory.remember(wanted)
            if not forkserver.started:
                # the first worker too comes from the template, which imports what the app
                # imported last time after forking it: one interpreter starting up, not two
                forkserver.start(_warmcache.with_cached_preload(wanted))
            forked = await forkserver.fork(worker, wanted, self._emit, self._terminal) if fork else None
            if forked is not None:
                return forked
        return await workers.spawn(worker, settings, self._listener, self._emit, self._output, self._terminal)

    def send(self, worker: int, message: protocol.SupervisorMessage) -> None:
        process = self._by_id.get(worker)
        if process is not None:
            process.send(message)

    def kill(self, worker: int) -> None:
        """SIGKILL it and what it started (Child.kill): its exit is reported as for any exit."""
        process = self._by_id.get(worker)
        if process is not None:
            process.child.kill()

    def kill_all(self) -> None:
        for process in self:
            self.kill(process.id)

    def exited(self, worker: int) -> None:
        """Its exit was reported: close what is left of it."""
        process = self._by_id.pop(worker, None)
        if process is not None:
            process.release()

    def relay(self, sender: WorkerProcess | None, connections: list[_handoff.Connection]) -> None:
        """Pass connections a draining worker handed over to the serving one (or hold them)."""
        target = self.get(self._serving())
        if target is not None and target is not sender and target.alive:
            self._held.forward(target.handoff, connections)
        else:
            self._held.hold(connections)

    def serve_held(self) -> None:
        """A generation serves now: pass it the connections held meanwhile."""
        if self._held:
            self.relay(None, self._held.take())

    async def close_all(self, left_draining: set[int], deadline: float) -> None:
        """Kill every worker but those left to finish their requests, which get `deadline` seconds;
        wait for all of them and close everything. Cancelled, it still kills and closes."""
        processes = list(self._by_id.values())
        try:
            waits = [p.aclose(deadline if p.id in left_draining else 0.0) for p in processes]
            killed = await asyncio.gather(*waits)
            late = sum(k for p, k in zip(processes, killed, strict=True) if p.id in left_draining)
            if late:  # the others were not waited for: they are killed at once, on purpose
                logger.warning("Killed %d worker(s) that did not stop within %.1f s.", late, deadline)
            for process in processes:
                await asyncio.gather(*process.tasks, return_exceptions=True)
        finally:
            self._by_id.clear()
            self._held.close()
            if self.forkserver is not None:
                await self.forkserver.aclose()
