"""What a reloading server tells the code that runs it: its state, each generation's outcome, and
why the app is broken (`Failure`, defined with the control messages that carry it)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Literal

from ._protocol import Failure as Failure

State = Literal["starting", "ready", "failed", "reloading", "stopped"]


@dataclasses.dataclass(frozen=True)
class ReloadEvent:
    """One generation's outcome, as `Reloader.events()` yields it."""

    generation: int
    outcome: Literal["ready", "failed"]
    changed: tuple[str, ...]
    duration: float  # seconds from the change (or the request) to the outcome
    summary: str = ""
    traceback: str = ""


class EventStream:
    """An async iterator of ReloadEvents; it receives every outcome from its creation on.

    It ends (StopAsyncIteration) when the server stops, for every task iterating it: several
    tasks may share one stream (each event goes to one of them) and all of them finish. A
    stream created once the server has stopped (`ended=True`) is over from the start.

    Cancelling a task waiting in `async for` (or `anext`) cancels only that wait: no event is
    lost, the next iteration receives it, and the stream stays subscribed until it ends or
    `aclose()` is called.
    """

    def __init__(self, subscribers: list[asyncio.Queue[ReloadEvent | None]], *, ended: bool = False) -> None:
        self._queue: asyncio.Queue[ReloadEvent | None] = asyncio.Queue()
        self._subscribers = subscribers
        self._ended = ended
        if not ended:
            subscribers.append(self._queue)

    def __repr__(self) -> str:
        return f"<EventStream {'ended' if self._ended else 'open'}, {self._queue.qsize()} waiting>"

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ReloadEvent:
        """The next outcome; StopAsyncIteration once the server stopped or the stream was closed.
        Cancelling it cancels this wait only: the event it would have returned stays queued."""
        if self._ended:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:  # the server stopped, or the stream was closed
            self._end()
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Unsubscribe; every task waiting on this stream ends its iteration. It does not wait
        for anything, so cancelling it changes nothing."""
        self._end()

    def _end(self) -> None:
        self._ended = True
        if self._queue in self._subscribers:
            self._subscribers.remove(self._queue)
        self._queue.put_nowait(None)  # the end, again, for the next task waiting on this stream
