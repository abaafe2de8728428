"""uvicorn's Server, run the way a reloader needs it.

Three differences from `uvicorn.Server.serve()`:
- no signal handlers: the supervisor (or the embedding program) decides when to stop;
- it wakes once a second (for the Date header), not ten times, so an idle worker costs nothing;
- its drain never closes a keep-alive connection under a client that is about to reuse it.
  uvicorn closes idle connections at once on shutdown, which races a client sending its next
  request (it gets "server disconnected" instead of a response). Here each connection, once
  idle, is handed to the new generation (see _handoff.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import h11
import uvicorn

logger = logging.getLogger("asgireload")

DRAIN_POLL = 0.005  # seconds between looks at the connections of a draining server

HandOff = Callable[[list[int]], bool]


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stop_requested = asyncio.Event()
        self._adopting: set[asyncio.Task[Any]] = set()

    async def start(self, sockets: list[socket.socket]) -> bool:
        """Run lifespan start-up and start accepting; False if start-up failed."""
        if not await self.start_lifespan():
            return False
        await self.start_accepting(sockets)
        return self.started and not self.should_exit

    async def start_lifespan(self) -> bool:
        """Run lifespan start-up without accepting anything yet; False if it failed."""
        if not self.config.loaded:
            self.config.load()
        self.lifespan = self.config.lifespan_class(self.config)
        await self.lifespan.startup()
        return not self.lifespan.should_exit

    async def start_accepting(self, sockets: list[socket.socket]) -> None:
        """Start accepting on `sockets` (after `start_lifespan`)."""
        lifespan = self.lifespan

        class _AlreadyStarted:  # uvicorn's startup() runs lifespan start-up first: it ran already
            state = lifespan.state
            should_exit = False

            async def startup(self) -> None:
                return None

        self.lifespan = _AlreadyStarted()
        try:
            await self.startup(sockets=sockets)
        finally:
            self.lifespan = lifespan

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def serve_until_stopped(self) -> None:
        """Serve until `request_stop()`; keeps uvicorn's per-second housekeeping."""
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._stop_requested.wait()
            if self._stop_requested.is_set():
                return

    def adopt(self, fds: list[int]) -> None:
        """Serve connections an older generation handed over, as if just accepted."""
        loop = asyncio.get_running_loop()
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop
            )

        for fd in fds:
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                continue
            task = loop.create_task(loop.connect_accepted_socket(create_protocol, sock))
            self._adopting.add(task)
            task.add_done_callback(_forget(self._adopting, sock))

    async def drain(
        self,
        timeout: float,
        hand_off: HandOff | None = None,
        on_stopped: Callable[[], None] | None = None,
    ) -> None:
        """Stop accepting, let requests in flight finish (up to `timeout`), then lifespan shut-down.

        With `hand_off`, idle keep-alive connections are passed on at once, so the client's next
        request on one reaches the new generation; a connection busy with a request closes after
        its response (the client's next request opens a new connection, to the new generation).
        Without it, idle connections close at once. `on_stopped` is called as soon as no new
        request can reach this server: from then on it only finishes what it has.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for server in self.servers:
            server.close()
        if self._adopting:  # connections handed to us a moment ago: serve them like the rest
            await asyncio.gather(*self._adopting, return_exceptions=True)
        handled: set[Any] = set()  # connections that will close, or pass on, by themselves
        while True:
            for connection in list(self.server_state.connections):
                if connection in handled:
                    continue
                cycle = getattr(connection, "cycle", _WEBSOCKET)
                if cycle is _WEBSOCKET:
                    connection.shutdown()  # closes with 1012, service restart
                    handled.add(connection)
                elif cycle is not None and not cycle.response_complete:
                    if hand_off is not None:
                        _pass_on_after_response(connection, cycle, hand_off, handled)
                    else:
                        cycle.keep_alive = False  # it closes after this response
                    handled.add(connection)
                elif not _is_idle(connection):
                    continue  # a response still flushing, or half a request: look again soon
                elif hand_off is not None:
                    _pass_on(connection, hand_off)
                else:
                    connection.shutdown()
                    handled.add(connection)
            if on_stopped is not None:
                on_stopped()
                on_stopped = None
            if not (self.server_state.connections or self.server_state.tasks):
                break
            if loop.time() >= deadline:
                self._cut_remaining()
                break
            await asyncio.sleep(DRAIN_POLL)
        if not self.force_exit:
            await self.lifespan.shutdown()

    def _cut_remaining(self) -> None:
        count = len(self.server_state.tasks)
        if count:
            logger.warning("Drain timeout reached: cancelling %d request(s) still running.", count)
        for task in list(self.server_state.tasks):
            task.cancel()
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()


_WEBSOCKET: Any = object()


def _is_idle(connection: Any) -> bool:
    """Between requests, with nothing buffered in either direction."""
    cycle = connection.cycle
    if cycle is not None and not cycle.response_complete:
        return False
    transport = connection.transport
    if transport.is_closing() or transport.get_write_buffer_size():
        return False
    if getattr(connection, "pipeline", None):  # httptools: requests read but not yet answered
        return False
    parser = getattr(connection, "conn", None)  # h11 keeps its state where we can see it
    if isinstance(parser, h11.Connection):
        return parser.our_state is h11.IDLE and parser.their_state is h11.IDLE and not parser.trailing_data[0]
    return True


def _pass_on(connection: Any, hand_off: HandOff) -> None:
    """Give the connection's socket away and forget it here without closing it."""
    sock = connection.transport.get_extra_info("socket")
    if sock is None:
        return
    duplicate = os.dup(sock.fileno())
    try:
        sent = hand_off([duplicate])
    finally:
        os.close(duplicate)
    if sent:
        connection.transport.abort()  # closes our descriptor only: the socket lives on, elsewhere


def _pass_on_after_response(connection: Any, cycle: Any, hand_off: HandOff, handled: set[Any]) -> None:
    """Pass a busy connection on the moment its response is complete, before it reads more.

    Closing it after the response instead would race a client that sends its next request at
    once (it would write into a connection being closed and get a reset).
    """
    original = cycle.on_response

    def on_response() -> None:
        original()
        if _is_idle(connection):
            _pass_on(connection, hand_off)
        else:  # a pipelined request, or a response still flushing: the drain loop looks again
            handled.discard(connection)

    cycle.on_response = on_response


def _forget(tasks: set[Any], sock: socket.socket) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            sock.close()

    return done
