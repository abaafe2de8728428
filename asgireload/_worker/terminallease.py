"""The supervisor's terminal, borrowed by a worker for pdb over its debug socketpair.

A stop asks for it (`paused`), synchronously, from whichever thread stopped: the event loop may be
the one that is blocked. The supervisor stops reading keys and lends the terminal's descriptors
(`lent`, with two descriptors), or says why it cannot (no terminal: output piped, `Reloader`, the
pytest fixture), which becomes `NoTerminal`. Giving it back closes this process's copies and says
`resumed`. One thread at a time has it; the others wait their turn (debugger.py runs pdb on it).
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from .. import _protocol as protocol
from .. import _wire

if TYPE_CHECKING:
    from .debugger import TerminalPdb

PROMPT = "(Pdb) "


class NoTerminal(RuntimeError):
    """breakpoint() was called where asgireload has no terminal to run the debugger in."""


class _TerminalInput(io.TextIOWrapper):
    """The lent terminal's input. pdb reads a line at its prompt: while it waits, the supervisor
    knows the prompt is shown, and puts the log lines it prints meanwhile on lines of their own."""

    def __init__(self, fd: int, channel: socket.socket) -> None:
        super().__init__(io.BufferedReader(io.FileIO(fd, "r")), encoding="utf-8", errors="replace")
        self._channel = channel
        self.prompt = PROMPT

    def readline(self, size: int | None = -1, /) -> str:  # type: ignore[override]
        self._say(protocol.Prompting(True, self.prompt))
        try:
            return super().readline(-1 if size is None else size)
        finally:
            self._say(protocol.Prompting(False))

    def _say(self, message: protocol.Prompting) -> None:
        with contextlib.suppress(OSError):
            self._channel.sendall(protocol.encode(message))


class TerminalLease:
    """The supervisor's terminal, lent to this worker until `give_back()`."""

    def __init__(self, channel: socket.socket, reading: int, writing: int) -> None:
        self._channel = channel
        self.stdin = _TerminalInput(reading, channel)
        self.stdout: TextIO = open(writing, "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115

    def give_back(self) -> None:
        for stream in (self.stdout, self.stdin):
            with contextlib.suppress(OSError, ValueError):
                stream.close()
        with contextlib.suppress(OSError):
            self._channel.sendall(protocol.encode(protocol.Resumed()))


class TerminalLender:
    """Lends the terminal to pdb, one breakpoint at a time (other threads wait their turn)."""

    def __init__(self, debug_fd: int) -> None:
        self._channel = socket.socket(fileno=debug_fd)
        self._channel.setblocking(True)
        self._turn = threading.Lock()
        self._counting = threading.Lock()
        self._holder: int | None = None  # the thread whose pdb has the terminal
        self._lease: TerminalLease | None = None
        self._answers = _wire.LineReceiver(self._channel, protocol.DEBUG_MAX_LINE, protocol.DEBUG_MAX_LINE)
        # what a CTRL+C forwarded by the supervisor does now (main thread only): interrupt the
        # prompt, interrupt a step, or nothing once the terminal is given back
        self.on_interrupt: Callable[[FrameType | None], None] | None = None
        self.session: TerminalPdb | None = None  # the latest pdb session (to end a kept step)
        self._stopped = 0  # threads stopped at a breakpoint: at the prompt, or waiting their turn

    @property
    def paused(self) -> bool:
        """Whether the app is stopped at a breakpoint, at the prompt or waiting its turn for the
        terminal (a draining server then waits for it)."""
        return self._stopped > 0

    def borrow(self, where: str, announce: bool = True) -> TerminalLease:
        """Ask for the terminal (waiting while another thread has it); NoTerminal if there is none."""
        with self._counting:
            self._stopped += 1
        try:
            return self._borrow(where, announce)
        except BaseException:
            with self._counting:
                self._stopped -= 1
            raise

    def _borrow(self, where: str, announce: bool) -> TerminalLease:
        if not self._turn.acquire(blocking=False):
            self._say_waiting(where)
            self._turn.acquire()
        try:
            main = threading.current_thread() is threading.main_thread()
            paused = protocol.Paused(where, interruptible=main, announce=announce)
            self._channel.sendall(protocol.encode(paused))
            answer, fds = self._receive()
            if not isinstance(answer, protocol.Lent) or not answer.granted or len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                reason = answer.reason if isinstance(answer, protocol.Lent) else ""
                raise NoTerminal(reason or "asgireload could not lend its terminal to the debugger.")
            lease = TerminalLease(self._channel, *fds)
        except BaseException:
            self._turn.release()
            raise
        self._holder, self._lease = threading.get_ident(), lease
        return lease

    def _say_waiting(self, where: str) -> None:
        """Another thread has the prompt: say, at that prompt, that this one waits its turn."""
        lease = self._lease
        if lease is not None:
            with contextlib.suppress(OSError, ValueError):
                lease.stdout.write(
                    f"\n*** Another request stopped at a breakpoint ({where}); it gets the prompt "
                    f"once this one continues.\n{PROMPT}"
                )

    def give_back(self, lease: TerminalLease | None) -> None:
        if lease is None:
            return
        self._holder, self._lease, self.on_interrupt = None, None, None
        try:
            lease.give_back()
        finally:
            with self._counting:
                self._stopped -= 1
            self._turn.release()

    def holds_terminal(self) -> bool:
        return self._holder == threading.get_ident()

    def _receive(self) -> tuple[protocol.Message | None, list[int]]:
        """One answer from the supervisor, with the descriptors that came with it."""
        try:
            while (received := self._answers.next()) is None:
                if not self._answers.read():
                    return None, []
            data, fds = received
        except (OSError, protocol.ProtocolError):
            return None, []
        try:
            return protocol.message_of(data, protocol.DEBUG_SUPERVISOR_MESSAGES), fds
        except protocol.ProtocolError:
            return None, fds
