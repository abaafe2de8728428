"""`events()` streams: every stream ends when the server stops, however many tasks iterate it
and whenever it was made; cancelling a wait loses no event.

The first tests run a real server (Reloader, real workers); the last are units of EventStream
alone, fed by hand the way the supervisor feeds it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from asgireload import Reloader, ReloadEvent
from asgireload.events import EventStream

END = 5.0  # seconds a stream may take to end once the server has stopped (it should be at once)


async def collect(stream: EventStream, into: list[int]) -> None:
    async for event in stream:
        into.append(event.generation)


async def test_two_tasks_iterating_one_stream_both_end_when_the_server_stops(plain_app: Path) -> None:
    first: list[int] = []
    second: list[int] = []
    async with Reloader("main:app", app_dir=plain_app) as server:
        stream = server.events()
        tasks = [asyncio.create_task(collect(stream, first)), asyncio.create_task(collect(stream, second))]
        await server.reload()
        await server.reload()
    try:
        async with asyncio.timeout(END):
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    assert sorted(first + second) == [2, 3]  # each outcome went to one of them


async def test_every_stream_gets_every_outcome_and_ends(plain_app: Path) -> None:
    seen: list[list[int]] = [[], [], []]
    async with Reloader("main:app", app_dir=plain_app) as server:
        tasks = [asyncio.create_task(collect(server.events(), into)) for into in seen]
        await server.reload()
        await server.reload()
    async with asyncio.timeout(END):
        await asyncio.gather(*tasks)
    assert seen == [[2, 3], [2, 3], [2, 3]]


async def test_a_stream_made_after_the_server_stopped_ends_at_once(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server:
        await server.reload()
    assert server.state == "stopped"
    got = []
    async with asyncio.timeout(1):
        async for event in server.events():
            got.append(event)
    assert got == []


async def test_a_stream_made_during_the_stop_ends_with_it(plain_app: Path) -> None:
    seen: list[int] = []
    reloader = Reloader("main:app", app_dir=plain_app)
    server = await reloader.__aenter__()
    stopping = asyncio.create_task(reloader.__aexit__(None, None, None))
    await asyncio.sleep(0)  # the stop has begun: the server is draining, not yet stopped
    listener = asyncio.create_task(collect(server.events(), seen))
    async with asyncio.timeout(20):
        await stopping
    async with asyncio.timeout(END):
        await listener
    assert seen == []


# ------------------------------------------------------------------------ EventStream alone


def outcome(generation: int) -> ReloadEvent:
    return ReloadEvent(generation=generation, outcome="ready", changed=(), duration=0.0)


def publish(subscribers: list[asyncio.Queue[ReloadEvent | None]], item: ReloadEvent | None) -> None:
    """What the supervisor does: an outcome to every subscriber, or None when it stops."""
    for queue in subscribers:
        queue.put_nowait(item)


async def test_events_before_the_end_are_delivered_then_every_task_ends() -> None:
    subscribers: list[asyncio.Queue[ReloadEvent | None]] = []
    stream = EventStream(subscribers)
    seen: list[list[int]] = [[], [], []]
    tasks = [asyncio.create_task(collect(stream, into)) for into in seen]
    await asyncio.sleep(0)  # all three wait on the stream
    publish(subscribers, outcome(2))
    publish(subscribers, outcome(3))
    publish(subscribers, None)
    async with asyncio.timeout(1):
        await asyncio.gather(*tasks)
    assert sorted(g for into in seen for g in into) == [2, 3]
    assert subscribers == []  # unsubscribed
    with pytest.raises(StopAsyncIteration):
        await anext(stream)  # and it stays ended


async def test_aclose_ends_the_tasks_waiting_on_the_stream() -> None:
    subscribers: list[asyncio.Queue[ReloadEvent | None]] = []
    stream = EventStream(subscribers)
    seen: list[int] = []
    waiting = asyncio.create_task(collect(stream, seen))
    await asyncio.sleep(0)
    await stream.aclose()
    async with asyncio.timeout(1):
        await waiting
    assert (seen, subscribers) == ([], [])


async def test_cancelling_a_wait_loses_no_event() -> None:
    subscribers: list[asyncio.Queue[ReloadEvent | None]] = []
    stream = EventStream(subscribers)
    waiting = asyncio.create_task(anext(stream))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    publish(subscribers, outcome(2))
    async with asyncio.timeout(1):
        assert (await anext(stream)).generation == 2


def test_a_stream_made_ended_is_not_subscribed() -> None:
    subscribers: list[asyncio.Queue[ReloadEvent | None]] = []
    stream = EventStream(subscribers, ended=True)
    assert subscribers == []
    assert "ended" in repr(stream)
