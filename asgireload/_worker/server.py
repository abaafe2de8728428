"""uvicorn's Server, run the way a reloader needs it.

Four differences from `uvicorn.Server.serve()`:
- no signal handlers: the supervisor (or the embedding program) decides when to stop;
- it wakes once a second (for the Date header), not ten times, so an idle worker costs nothing;
- lifespan start-up and accepting are two steps, so a generation can start up while the old one
  still serves, and accept only once the supervisor wants it to;
- its drain never closes a keep-alive connection under a client that is about to reuse it, and
  never answers a new request with the old code. uvicorn closes idle connections at once on
  shutdown, which races a client sending its next request (it gets "server disconnected").
  Here each connection, at its next request boundary, is handed to the new generation with the
  bytes it read but did not serve (see httpprotocols.py, drainable.py and _handoff.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from .._handoff import Connection
from . import debugger, httpprotocols
from .drainable import DrainSwitch, HandOff

logger = logging.getLogger("asgireload")

DRAIN_POLL = 0.005  # seconds between looks at the connections of a draining server
STALL = 0.5  # a gap between two looks longer than this: the loop was stopped by a debugger


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stop_requested = asyncio.Event()
        self._adopting: set[asyncio.Task[Any]] = set()
        self._draining = DrainSwitch()
        self.servers: list[asyncio.Server] = []  # none until start_accepting()

    async def start(self, sockets: list[socket.socket]) -> bool:
        """Run lifespan start-up, then start accepting; False (accepting nothing) if start-up failed."""
        if not await self.start_lifespan():
            return False
        await self.start_accepting(sockets)
        return True

    async def start_lifespan(self) -> bool:
        """Run lifespan start-up without accepting anything yet; False if it failed."""
        if not self.config.loaded:
            self.config.load()
        self.lifespan = self.config.lifespan_class(self.config)
        await self.lifespan.startup()
        return not self.lifespan.should_exit

    async def start_accepting(self, sockets: list[socket.socket]) -> None:
        """Accept connections on `sockets` (after `start_lifespan`)."""
        loop = asyncio.get_running_loop()
        self.servers = [
            await loop.create_server(
                self._create_protocol, sock=sock, ssl=self.config.ssl, backlog=self.config.backlog
            )
            for sock in sockets
        ]
        self.started = True

    def _create_protocol(self, pending: bytes = b"") -> asyncio.Protocol:
        config = self.config
        options: dict[str, Any] = {
            "config": config,
            "server_state": self.server_state,
            "app_state": self.lifespan.state,
            "_loop": asyncio.get_running_loop(),
        }
        reloadable = httpprotocols.reloadable(config.http_protocol_class)
        if reloadable is None:  # not one of uvicorn's HTTP protocols: closed at its boundary instead
            return config.http_protocol_class(**options)
        return reloadable(**options, draining=self._draining, pending=pending)

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

    def adopt(self, connections: list[Connection]) -> None:
        """Serve connections an older generation handed over, as if just accepted, reading first
        the bytes that came with each."""
        loop = asyncio.get_running_loop()
        for connection in connections:
            try:
                sock = socket.socket(fileno=connection.fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.close(connection.fd)
                continue

            def create_protocol(pending: bytes = connection.pending) -> asyncio.Protocol:
                return self._create_protocol(pending)

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

        From the first look on, no connection starts a new request. Each is passed on at its next
        request boundary with `hand_off` (the descriptor and the bytes it read but did not serve),
        so the client's next request reaches the new generation; without it, it is closed there.
        Websockets are closed with 1012. `on_stopped` is called as soon as no new request can
        start here: from then on this server only finishes what it has.
        """
        loop = asyncio.get_running_loop()
        last_look = loop.time()
        deadline = last_look + timeout
        for server in self.servers:
            server.close()
        self._draining.start(hand_off)  # connections that arrive from now on drain at once
        if self._adopting:  # connections handed to us a moment ago: drain them like the rest
            await asyncio.gather(*self._adopting, return_exceptions=True)
        told: set[Any] = set()  # websockets (and any other protocol) already told to close
        while True:
            for connection in list(self.server_state.connections):
                if httpprotocols.drain(connection, hand_off):
                    continue
                if connection not in told:
                    told.add(connection)
                    connection.shutdown()  # a websocket closes with 1012, service restart
            if on_stopped is not None:
                on_stopped()
                on_stopped = None
            if not (self.server_state.connections or self.server_state.tasks):
                break
            now = loop.time()
            if now - last_look > STALL:
                # the loop itself was stopped (pdb on the main thread, a debugpy stop): that time
                # was the debugger's, not the requests'
                deadline += now - last_look
            last_look = now
            if debugger.paused():  # a request stopped at a breakpoint gets its full time once resumed
                deadline = now + timeout
            elif now >= deadline:
                self._cut_remaining()
                break
            await asyncio.sleep(DRAIN_POLL)
        if not self.force_exit:
            await self.lifespan.shutdown()

    def _cut_remaining(self) -> None:
        """The drain deadline: one warning, then the requests still running are cancelled quietly
        (uvicorn would log each cancellation as an error with its traceback)."""
        count = len(self.server_state.tasks)
        if count:
            logger.warning("Drain timeout reached: cancelling %d request(s) still running.", count)
        logging.getLogger("uvicorn.error").addFilter(_drop_cancellations)
        for task in list(self.server_state.tasks):
            task.cancel()
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()


def _drop_cancellations(record: logging.LogRecord) -> bool:
    """A request cancelled at the drain deadline was reported already, in one line."""
    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


def _forget(tasks: set[Any], sock: socket.socket) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            sock.close()

    return done
