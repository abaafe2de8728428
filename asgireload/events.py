"""What a reloading server tells the code that runs it: its state and each generation's outcome."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Literal

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
    """An async iterator of ReloadEvents; it receives every outcome from its creation on."""

    def __init__(self, subscribers: list[asyncio.Queue[ReloadEvent | None]]) -> None:
        self._queue: asyncio.Queue[ReloadEvent | None] = asyncio.Queue()
        self._subscribers = subscribers
        subscribers.append(self._queue)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ReloadEvent:
        if self._queue not in self._subscribers:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:  # the server stopped
            await self.aclose()
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        if self._queue in self._subscribers:
            self._subscribers.remove(self._queue)
