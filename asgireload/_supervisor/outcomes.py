"""Each generation's outcome: kept, streamed, and waited on. The one path an outcome takes.

`report` records an outcome (ready or failed), puts it on every subscribed EventStream and wakes
every waiter; `wake` wakes them for another reason (the server stopped, or failed), and `end`
ends every stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..events import EventStream, ReloadEvent
from .commands import ReportOutcome


class Outcomes:
    def __init__(self) -> None:
        self._by_generation: dict[int, ReloadEvent] = {}
        self._subscribers: list[asyncio.Queue[ReloadEvent | None]] = []
        self._changed = asyncio.Condition()
        self._ended = False
        self._waking: set[asyncio.Task[None]] = set()

    def __bool__(self) -> bool:
        return bool(self._by_generation)

    def report(self, command: ReportOutcome) -> ReloadEvent:
        failure = command.failure
        event = ReloadEvent(
            generation=command.generation,
            outcome=command.outcome,
            changed=command.changed,
            duration=command.duration,
            summary=failure.summary if failure is not None else "",
            traceback=failure.traceback if failure is not None else "",
        )
        self._by_generation[command.generation] = event
        for queue in self._subscribers:
            queue.put_nowait(event)
        self.wake()
        return event

    def first_from(self, generation: int) -> ReloadEvent | None:
        """The outcome of `generation`, or of the first later one that has one."""
        later = [g for g in self._by_generation if g >= generation]
        return self._by_generation[min(later)] if later else None

    async def wait(
        self, generation: int, timeout: float | None, unless: Callable[[], bool]
    ) -> ReloadEvent | None:
        """The outcome of `generation` or a later one; None if `unless()` became true first.

        Raises TimeoutError after `timeout` seconds. Cancelling it cancels the wait only."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: unless() or self.first_from(generation) is not None)
        return self.first_from(generation)

    def stream(self) -> EventStream:
        """Every outcome from now on; over from the start once `end` was called."""
        return EventStream(self._subscribers, ended=self._ended)

    def wake(self) -> None:
        """Let every waiter look again (at its `unless`, too)."""
        task = asyncio.get_running_loop().create_task(self._notify())
        self._waking.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(self._waking.discard)

    def end(self) -> None:
        """The server stopped: every stream ends, every waiter looks again."""
        self._ended = True
        for queue in self._subscribers:
            queue.put_nowait(None)
        self.wake()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
