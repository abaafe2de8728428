"""Debugging under reload, supervisor side: the terminal lent to breakpoint(), tracers, coverage.

A worker stopped at a breakpoint asks for the terminal over its debug socketpair (see
_worker/debugger.py and the debug block of _protocol.py). `DebugTerminal` lends the terminal
asgireload runs in to one paused worker at a time: the key reader stops first (so `r` + Enter
never takes a line typed at the prompt), the descriptors go with the answer, and the next worker
that stopped waits its turn. Ctrl-C while a worker has the terminal goes to that worker's pdb.
Where asgireload has no terminal (output piped, `serve()`, `Reloader`, the pytest fixture), the
answer is a refusal saying why, and the app's breakpoint() raises it.

`tracer_active()` tells whether a debugger or coverage traces the supervisor: then workers must be
started as new processes the tracer can follow (not forked, not from a warm worker started before
the debugger was attached).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

from .. import _protocol as protocol
from .. import _wire
from .._paths import relative

logger = logging.getLogger("asgireload")

BACKGROUND = "asgireload runs in the background, where the terminal is the shell's (fg brings it)."

# (paused, announce): the worker has the terminal (True) or gave it back (False); whether its
# stop is the first after the app ran freely (not one step of many)
Emit = Callable[[bool, bool], None]


def debugger_attached() -> bool:
    """Whether a debugger (debugpy, pydevd, pdb...) traces this process; then it follows the workers
    too, and one of them may be stopped at a breakpoint without the supervisor knowing."""
    if any(name in sys.modules for name in ("debugpy", "pydevd")):
        return True
    trace = sys.gettrace()
    if trace is None:
        return False
    # coverage's tracer is a C object (coverage.tracer) or a method of coverage.pytracer's class
    owners = (getattr(trace, "__module__", None) or "", getattr(type(trace), "__module__", None) or "")
    return not any(owner.startswith("coverage") for owner in owners)


def tracer_active() -> bool:
    """Whether a debugger or coverage follows this process: workers must then be started as new
    processes the tracer sees start (not forked, nor taken from before the tracer was there)."""
    if debugger_attached() or sys.gettrace() is not None:
        return True
    coverage = sys.modules.get("coverage")
    return coverage is not None and getattr(coverage.Coverage, "current", lambda: None)() is not None


def coverage_misses_workers() -> bool:
    """Coverage measures this process, but nothing will start it in the workers, where the app runs."""
    coverage = sys.modules.get("coverage")
    if coverage is None or getattr(coverage.Coverage, "current", lambda: None)() is None:
        return False
    return not (os.environ.get("COVERAGE_PROCESS_CONFIG") or os.environ.get("COVERAGE_PROCESS_START"))


# hooks that debug over the terminal asgireload lends (the others, like debugpy's, need none)
TERMINAL_HOOKS = {"", "0", "pdb.set_trace", "builtins.breakpoint"}


def warn_about_breakpoint_hook(environ: dict[str, str] | None = None) -> str | None:
    """A PYTHONBREAKPOINT such as ipdb.set_trace or pudb.set_trace reads the worker's own stdin,
    which is not the terminal: its breakpoint() would quit at once. Said once, at start-up."""
    hook = (os.environ if environ is None else environ).get("PYTHONBREAKPOINT", "").strip()
    if hook in TERMINAL_HOOKS:
        return None
    message = (
        f"PYTHONBREAKPOINT={hook} is set: a debugger that reads the terminal (ipdb, pudb) gets "
        "the worker's input instead, which is not this terminal, so its breakpoint() quits at once. "
        "Unset it to debug in this terminal with pdb (a remote debugger is fine as it is)."
    )
    logger.warning(message)
    return message


class _Borrower:
    """One worker's side of the debug socketpair, as the supervisor holds it."""

    def __init__(self, describe: Callable[[], str], pid: int, sock: socket.socket, emit: Emit) -> None:
        self._describe = describe  # "generation 2 (pid 1234)"
        self.pid = pid
        self.sock = sock
        self.emit = emit
        self.interruptible = True
        self.where = ""
        self.announce = True

    @property
    def name(self) -> str:
        return self._describe()


class DebugTerminal:
    """The terminal asgireload was started from, lent to one paused worker at a time.

    `fds` is (read, write), or None with `why_not`, a sentence for breakpoint()'s error. `on_lend`
    is called with True before the terminal is lent (stop reading keys), False when it is back.
    """

    def __init__(
        self,
        fds: tuple[int, int] | None,
        why_not: str = "",
        on_lend: Callable[[bool], None] | None = None,
        in_foreground: Callable[[], bool] = lambda: True,
    ) -> None:
        self.fds = fds
        self.why_not = why_not
        self._on_lend = on_lend or (lambda lent: None)
        self._in_foreground = in_foreground  # a background job must not read the shell's input
        self._holder: _Borrower | None = None
        self._waiting: collections.deque[_Borrower] = collections.deque()
        self.prompt_shown: str | None = None  # the holder's prompt, while it waits for a line

    @classmethod
    def none(cls, why_not: str) -> DebugTerminal:
        return cls(None, why_not)

    @classmethod
    def of_this_process(
        cls, on_lend: Callable[[bool], None], in_foreground: Callable[[], bool]
    ) -> DebugTerminal:
        """Stdin and stdout, if both are the terminal (not piped, not redirected)."""
        try:
            if os.isatty(0) and os.isatty(1):
                warn_about_breakpoint_hook()
                return cls((0, 1), on_lend=on_lend, in_foreground=in_foreground)
        except OSError:
            pass
        return cls(None, "asgireload's input or output is not a terminal (piped or redirected).")

    @property
    def holder_pid(self) -> int | None:
        return self._holder.pid if self._holder is not None else None

    def interrupt(self) -> bool:
        """Ctrl-C: pass it to the paused worker's debugger if one has the terminal (True), else False."""
        holder = self._holder
        if holder is None:
            return False
        if holder.interruptible:
            with contextlib.suppress(OSError):
                os.kill(holder.pid, signal.SIGINT)
        else:
            logger.warning(
                "CTRL+C cannot interrupt the debugger of %s: it stopped in a thread. Type c and Enter "
                "to continue (or q to fail the request), then CTRL+C stops the server.",
                holder.name,
            )
        return True

    def attach(
        self, describe: Callable[[], str], pid: int, sock: socket.socket, emit: Emit
    ) -> Callable[[], None]:
        """Serve a worker's debug socketpair; returns what to call when the worker is gone."""
        loop = asyncio.get_running_loop()
        borrower = _Borrower(describe, pid, sock, emit)
        sock.setblocking(False)
        receiver = _wire.LineReceiver(sock, protocol.DEBUG_MAX_LINE, protocol.DEBUG_MAX_LINE)
        fileno = sock.fileno()

        def readable() -> None:
            try:
                if not receiver.read():
                    detach()
                    return
                while (received := receiver.next()) is not None:
                    self._on_message(
                        borrower, protocol.message_of(received[0], protocol.DEBUG_WORKER_MESSAGES)
                    )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                detach()
            except protocol.ProtocolError as exc:
                logger.error("%s sent %s on its debug channel; closing it.", borrower.name, exc)
                detach(hang_up=True)

        def detach(hang_up: bool = False) -> None:
            receiver.close()
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(fileno)
            if hang_up:  # its breakpoint() then fails at once, instead of waiting for an answer
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._gone(borrower)

        loop.add_reader(fileno, readable)
        return detach

    def _on_message(self, borrower: _Borrower, message: protocol.Message) -> None:
        if isinstance(message, protocol.Paused):
            if borrower is self._holder or borrower in self._waiting:
                return  # it asked already
            borrower.where, borrower.interruptible = message.where, message.interruptible
            borrower.announce = message.announce
            if self.fds is None:
                self._answer(borrower, protocol.Lent(False, self.why_not))
            elif self._holder is None and not self._in_foreground():
                self._answer(borrower, protocol.Lent(False, BACKGROUND))
            elif self._holder is None:
                self._lend(borrower)
            else:
                self._waiting.append(borrower)
                borrower.announce = True  # the terminal was someone else's meanwhile
                borrower.emit(True, False)  # paused while it waits: no drain deadline kills it
                logger.warning(
                    "%s stopped at a breakpoint too (%s); it gets the terminal once %s continues.",
                    borrower.name.capitalize(),
                    self._describe(borrower.where),
                    self._holder.name,
                )
        elif isinstance(message, protocol.Resumed) and borrower is self._holder:
            self._take_back()
        elif isinstance(message, protocol.Prompting) and borrower is self._holder:
            self.prompt_shown = message.prompt if message.shown else None

    def _lend(self, borrower: _Borrower) -> None:
        assert self.fds is not None
        self._on_lend(True)  # no key is read from here on
        if borrower.announce:
            self._announce(borrower)
        if self._answer(borrower, protocol.Lent(True), self.fds):
            self._holder = borrower
            borrower.emit(True, borrower.announce)
        else:
            self._on_lend(False)

    def _announce(self, borrower: _Borrower) -> None:
        logger.warning(
            "%s is paused at a breakpoint (%s): the debugger has this terminal. Type c and Enter to "
            "continue, q to quit there (a request fails; a generation starting up fails to start); "
            "CTRL+C goes to the debugger until then (to stop the server, continue, then CTRL+C). "
            "Reloads go on: a new generation serves new requests.",
            borrower.name.capitalize(),
            self._describe(borrower.where),
        )

    def _take_back(self) -> None:
        holder, self._holder = self._holder, None
        self.prompt_shown = None
        if holder is not None:
            holder.emit(False, holder.announce)
        while self._waiting:
            borrower = self._waiting.popleft()
            if self._in_foreground():
                self._lend(borrower)
            else:  # suspended and resumed with bg since it queued: the terminal is the shell's
                self._answer(borrower, protocol.Lent(False, BACKGROUND))
            if self._holder is None:
                borrower.emit(False, False)  # it was marked paused when it queued
            else:
                return
        self._on_lend(False)

    def _gone(self, borrower: _Borrower) -> None:
        """The worker's debug channel ended (it exited, or was killed while paused)."""
        if borrower in self._waiting:
            self._waiting.remove(borrower)
        if borrower is self._holder:
            self._take_back()

    def _answer(self, borrower: _Borrower, answer: protocol.Lent, fds: tuple[int, ...] = ()) -> bool:
        try:
            _wire.send_line(borrower.sock, protocol.encode(answer, fds=len(fds)), fds)
        except OSError as exc:
            logger.error("Could not answer the debugger of %s: %s.", borrower.name, exc)
            return False
        return True

    def _describe(self, where: str) -> str:
        path, _, line = where.rpartition(":")
        return f"{relative(path)}:{line}" if path else where
