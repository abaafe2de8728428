"""The command line's signals, handled as uvicorn's multiprocess supervisor does: a handler only
queues the signal, and a task in the event loop acts on it (`handle_int`, `handle_term`, ...).

CTRL+C, `q`, SIGTERM and the terminal hanging up (SIGHUP) stop; SIGUSR1 reloads. A second CTRL+C
(or `q`, or a SIGTERM more than REPEAT_GRACE later) kills the workers at once. A SIGHUP that was
ignored when asgireload started (`nohup asgireload ...`) stays ignored. Only the entry points
that own the terminal use this; the library (`serve()`, `Reloader`) installs no handler.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from . import terminal
from .debugging import DebugTerminal
from .supervisor import Supervisor

logger = logging.getLogger("asgireload")

QUIT_KEY = "q pressed"
REPEAT_GRACE = 1.0  # seconds in which a repeated SIGTERM is the same request to stop, not a second


class CommandLineSignals:
    """Runs the supervisor's main task; signals queued by their handlers stop or reload it."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.stopping = False
        self._first_signal = 0.0
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._main: asyncio.Task[None] | None = None
        self._acting: asyncio.Task[None] | None = None
        self._debug_terminal: DebugTerminal | None = None
        self._handlers: dict[int, Callable[[], None]] = {
            signal.SIGINT: self.handle_int,
            signal.SIGTERM: self.handle_term,
            signal.SIGUSR1: self.handle_usr1,
        }
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            self._handlers[signal.SIGHUP] = self.handle_hup

    def start(self, main: Coroutine[Any, Any, None], debug_terminal: DebugTerminal) -> asyncio.Task[None]:
        """Start `main` (stopping cancels it), install the handlers and the task that acts on them."""
        self._debug_terminal = debug_terminal
        self._main = asyncio.create_task(main)
        for signum in self._handlers:
            self._loop.add_signal_handler(signum, self._queue.put_nowait, signum)
        self._acting = asyncio.create_task(self._act(), name="asgireload-signals")
        return self._main

    def close(self) -> None:
        """Remove the handlers; a signal queued and not acted on yet is dropped."""
        for signum in self._handlers:
            self._loop.remove_signal_handler(signum)
        if self._acting is not None:
            self._acting.cancel()

    async def _act(self) -> None:
        while True:
            signum = await self._queue.get()
            try:
                self._handlers[signum]()
            except Exception as exc:  # as the loop treats a failing callback: logged, the next acts
                self._loop.call_exception_handler({"message": f"Handling signal {signum}", "exception": exc})

    def stop(self, reason: str, then: str = "; press CTRL+C again to stop at once") -> None:
        if not self.stopping:
            self.stopping = True
            self._first_signal = self._loop.time()
            logger.info("Shutting down (%s)%s.", reason, then)
            assert self._main is not None
            self._main.cancel()
        elif reason in ("CTRL+C", QUIT_KEY) or self._loop.time() - self._first_signal > REPEAT_GRACE:
            # `timeout` and process managers send SIGTERM to a process and then to its group at
            # once: only a signal that comes later (or a second CTRL+C) means "stop at once"
            logger.warning("Stopping at once.")
            self.supervisor.kill_all()

    def quit(self) -> None:
        """The `q` key."""
        self.stop(QUIT_KEY)

    def handle_int(self) -> None:
        # while a worker is paused, CTRL+C is its debugger's; once stopping, it stops at once
        assert self._debug_terminal is not None
        if self.stopping or not self._debug_terminal.interrupt():
            self.stop("CTRL+C")

    def handle_term(self) -> None:
        self.stop("SIGTERM")

    def handle_hup(self) -> None:
        if terminal.terminal_hung_up():
            reason = "the terminal hung up"
            terminal.let_go_of_a_hung_up_terminal()
        else:
            reason = "SIGHUP; to reload by signal, send SIGUSR1"
        if not self.stopping:  # a second hang-up (a shell passing it on) is not a second CTRL+C
            self.stop(reason, then="")

    def handle_usr1(self) -> None:
        self.supervisor.request_reload("SIGUSR1")
