"""breakpoint() and pdb.set_trace() in a worker: the debugger runs in asgireload's terminal.

A worker has no terminal of its own (it leads its own session, its stdin is /dev/null), so the
standard pdb would read end-of-file and quit. Here the app's breakpoint asks the supervisor for
its terminal over the worker's debug socketpair (`paused`), synchronously, from whichever thread
stopped: the event loop may be the one that is blocked. The supervisor stops reading keys and
lends the terminal's descriptors; pdb runs on them; on continue or quit the worker says `resumed`
and closes its copies. Where there is no terminal to lend (output piped, `Reloader`, the pytest
fixture) the supervisor says why, and breakpoint() raises that at once: the request fails with a
message instead of hanging.

An app (or a debugger such as debugpy) that chose its own breakpoint hook keeps it: nothing is
installed over a hook that is not the interpreter's, and PYTHONBREAKPOINT, set before the worker
started or by the app later, is obeyed as the interpreter would.
"""

from __future__ import annotations

import bdb
import contextlib
import inspect
import io
import logging
import os
import pdb
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO

from .. import _protocol as protocol
from .. import _wire

PROMPT = "(Pdb) "
STEP_GRACE = 1.0  # seconds a step keeps the terminal while the app runs, waiting for its next stop


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


class _Lease:
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


class Debugger:
    """Lends the terminal to pdb, one breakpoint at a time (other threads wait their turn)."""

    def __init__(self, debug_fd: int) -> None:
        self._channel = socket.socket(fileno=debug_fd)
        self._channel.setblocking(True)
        self._turn = threading.Lock()
        self._counting = threading.Lock()
        self._holder: int | None = None  # the thread whose pdb has the terminal
        self._lease: _Lease | None = None
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

    def borrow(self, where: str, announce: bool = True) -> _Lease:
        """Ask for the terminal (waiting while another thread has it); NoTerminal if there is none."""
        with self._counting:
            self._stopped += 1
        try:
            return self._borrow(where, announce)
        except BaseException:
            with self._counting:
                self._stopped -= 1
            raise

    def _borrow(self, where: str, announce: bool) -> _Lease:
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
            lease = _Lease(self._channel, *fds)
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

    def give_back(self, lease: _Lease | None) -> None:
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


class TerminalPdb(pdb.Pdb):
    """pdb on the lent terminal: it borrows it at a stop and gives it back when the app runs free.

    `c` and `q` give the terminal back at once. A step (`n`, `s`, `r`, `until`) keeps it until
    the next stop, so keys typed during the step are pdb's, not asgireload's; but that stop may
    never come (a coroutine stepped off its end), so STEP_GRACE without one gives it back too.
    Only the first stop after the app ran freely is announced; the steps in between are not.
    """

    def __init__(self, debugger: Debugger) -> None:
        # nosigint: Ctrl-C reaches a worker only while it has the terminal (the supervisor
        # forwards it); after `c` it stops the server, as everywhere else in asgireload.
        super().__init__(nosigint=True)
        self.prompt = PROMPT
        self.use_rawinput = False
        self._debugger = debugger
        self._lease: _Lease | None = None
        self._stepping = False  # the last command was a step: the next stop is not announced
        self._keeping = threading.Lock()  # the stop and the grace timer, one at a time
        self._grace: threading.Timer | None = None  # running while a step keeps the terminal
        debugger.session = self

    def do_interact(self, arg: str) -> None:
        """`interact` reads and writes sys.stdin and sys.stdout (/dev/null here): the lent terminal
        stands in for them while it runs."""
        previous = sys.stdin, sys.stdout
        sys.stdin, sys.stdout = self.stdin, self.stdout
        if self._lease is not None:
            self._lease.stdin.prompt = ""  # the console's prompts are its own: not drawn again
        try:
            super().do_interact(arg)
        finally:
            sys.stdin, sys.stdout = previous
            if self._lease is not None:
                self._lease.stdin.prompt = self.prompt

    def take_terminal(self, where: str) -> None:
        self._lease = self._debugger.borrow(where, announce=not self._stepping)
        self._lease.stdin.prompt = self.prompt
        self.stdin, self.stdout = self._lease.stdin, self._lease.stdout

    # Each stop (what pdb prints at it, like --Return--, and its prompt) runs with the terminal.
    def user_line(self, frame: FrameType) -> None:
        self._with_terminal(frame, super().user_line, frame)

    def user_return(self, frame: FrameType, return_value: Any) -> None:
        self._with_terminal(frame, super().user_return, frame, return_value)

    def user_exception(self, frame: FrameType, exc_info: Any) -> None:
        if self._a_stepped_coroutine_returned(frame, exc_info):
            return
        self._with_terminal(frame, super().user_exception, frame, exc_info)

    if sys.version_info >= (3, 13):

        def user_opcode(self, frame: FrameType) -> None:
            """3.13+: breakpoint() and set_trace() stop at once, at an instruction, not a line."""
            self._with_terminal(frame, super().user_opcode, frame)

    def _a_stepped_coroutine_returned(self, frame: FrameType, exc_info: Any) -> bool:
        """Since 3.12 (tracing built on sys.monitoring), a coroutine that returns while stepped
        (`r`, or `n` off its end) shows its awaiting frame a StopIteration without a traceback,
        which pdb stops at as "Internal StopIteration" inside the server's middleware. 3.11 ran on,
        as the step ends with the coroutine: so does this pdb, on every version."""
        stepped = self.stopframe
        return (
            exc_info[0] is StopIteration
            and exc_info[2] is None
            and stepped is not None
            and frame is not stepped
            and bool(stepped.f_code.co_flags & inspect.CO_COROUTINE)
        )

    def user_call(self, frame: FrameType, argument_list: None) -> None:
        if self.stop_here(frame):  # (also called for calls into a file that has breakpoints)
            self._with_terminal(frame, super().user_call, frame, argument_list)

    def _with_terminal(self, frame: FrameType, stop: Callable[..., None], *args: Any) -> None:
        with self._keeping:
            self._end_grace()
            if self._lease is None:
                try:
                    self.take_terminal(_where(frame))
                except NoTerminal:
                    self.set_continue()  # a breakpoint set earlier, hit with no terminal: go on
                    return
        self._set_interrupt(_interrupt_prompt)  # CTRL+C at the prompt: --KeyboardInterrupt--
        keep = False
        try:
            stop(*args)
            keep = self._stepping
        finally:
            with self._keeping:
                if keep:
                    self._keep_for_step()
                else:
                    self._give_back()

    def _keep_for_step(self) -> None:
        """A step (n, s, r, until) keeps the terminal while the app runs to the next stop: keys
        typed meanwhile are pdb's and CTRL+C interrupts the step. If no stop comes within
        STEP_GRACE (the app ran off the traced code), the terminal goes back to asgireload."""
        self._set_interrupt(self._interrupt_step)
        self._grace = threading.Timer(STEP_GRACE, self._grace_over)
        self._grace.daemon = True
        self._grace.start()

    def _grace_over(self) -> None:
        with self._keeping:
            if self._grace is threading.current_thread():
                self._grace = None
                self._give_back()

    def _end_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def in_grace(self) -> bool:
        """Whether the app runs one step with the terminal kept (not at the prompt)."""
        return self._grace is not None

    def release(self) -> None:
        """Give the kept terminal back now (a new breakpoint() in the thread takes over)."""
        with self._keeping:
            self._end_grace()
            self._give_back()

    def _give_back(self) -> None:
        lease, self._lease = self._lease, None
        self._debugger.give_back(lease)

    def _set_interrupt(self, handler: Callable[[FrameType | None], None]) -> None:
        if threading.current_thread() is threading.main_thread():
            self._debugger.on_interrupt = handler

    def _interrupt_step(self, frame: FrameType | None) -> None:
        """CTRL+C during a step: stop where the app is, as pdb does."""
        sys.settrace(None)  # the step traces every call: set_trace's own would stop in bdb
        self.message("\nProgram interrupted. (Use 'cont' to resume).")
        self.set_trace(frame)

    def set_step(self) -> None:
        self._stepping = True
        super().set_step()

    def set_next(self, frame: FrameType) -> None:
        self._stepping = True
        super().set_next(frame)

    def set_return(self, frame: FrameType) -> None:
        self._stepping = True
        super().set_return(frame)

    def set_until(self, frame: FrameType, lineno: int | None = None) -> None:
        self._stepping = True
        super().set_until(frame, lineno)

    def set_continue(self) -> None:
        self._stepping = False
        super().set_continue()

    def set_quit(self) -> None:
        self._stepping = False
        super().set_quit()


_debugger: Debugger | None = None


def install(debug_fd: int | None) -> None:
    """Make breakpoint() and pdb.set_trace() debug in the supervisor's terminal.

    Leaves a breakpoint hook someone else installed (a debugger like debugpy) alone.
    """
    global _debugger
    if debug_fd is None:
        return
    _debugger = Debugger(debug_fd)
    if threading.current_thread() is threading.main_thread():
        # SIGINT reaches a worker only from the supervisor, forwarding CTRL+C to a paused pdb; one
        # that arrives just after `c` must not reach asyncio's handler, which would end the worker.
        # (A handler, not SIG_IGN: the app's child processes get the default back at exec.)
        signal.signal(signal.SIGINT, _interrupted)
        # a child forked by the app (multiprocessing's fork) gets Python's CTRL+C back
        os.register_at_fork(after_in_child=_default_interrupt)
    logging.getLogger("uvicorn.error").addFilter(_quit_in_one_line)
    if sys.breakpointhook is sys.__breakpointhook__:
        sys.breakpointhook = breakpointhook
    if pdb.set_trace is _original_set_trace:
        pdb.set_trace = set_trace


def _default_interrupt() -> None:
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    """CTRL+C, forwarded by the supervisor while this worker has the terminal; one that arrives
    just after the terminal went back has nothing to interrupt."""
    handler = _debugger.on_interrupt if _debugger is not None else None
    if handler is not None:
        handler(frame)


def _interrupt_prompt(frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _quit_in_one_line(record: logging.LogRecord) -> bool:
    """`q` (or CTRL+D) at the prompt fails the request on purpose: one line, not a traceback."""
    if record.exc_info and isinstance(record.exc_info[1], bdb.BdbQuit):
        record.msg, record.args = f"{record.getMessage().strip()}: quit from the debugger (q).", ()
        record.exc_info, record.exc_text = None, None
    return True


def paused() -> bool:
    """Whether the app is stopped at a breakpoint in this worker (its drain waits for it)."""
    return _debugger is not None and _debugger.paused


def breakpointhook(*args: Any, **kwargs: Any) -> Any:
    """sys.breakpointhook: PYTHONBREAKPOINT if set (by the app too), else pdb in the terminal."""
    if os.environ.get("PYTHONBREAKPOINT"):
        return sys.__breakpointhook__(*args, **kwargs)
    _stop_in(sys._getframe(1), called="breakpoint()")
    return None


def set_trace(*, header: str | None = None, commands: list[str] | None = None) -> None:
    """pdb.set_trace(), in the terminal (`commands`, new in 3.14, run first at its prompt)."""
    _stop_in(sys._getframe(1), header, called="pdb.set_trace()", commands=commands)


_original_set_trace = pdb.set_trace


# what skips each kind of stop where there is no terminal: PYTHONBREAKPOINT applies to breakpoint()
# only, never to a pdb.set_trace() written in the code
_HOW_TO_SKIP = {
    "breakpoint()": "set PYTHONBREAKPOINT=0 to skip breakpoints.",
    "pdb.set_trace()": "remove the call (PYTHONBREAKPOINT does not apply to pdb.set_trace(); "
    "breakpoint() obeys it).",
}


def _stop_in(
    frame: FrameType, header: str | None = None, *, called: str, commands: list[str] | None = None
) -> None:
    debugger = _debugger
    if debugger is None:
        _original_set_trace(header=header, **({"commands": commands} if commands else {}))
        return
    if debugger.holds_terminal():
        kept = debugger.session
        if kept is None or not kept.in_grace():
            return  # a breakpoint() reached in code run at the prompt: it is stopped already
        kept.release()  # a step ran on to this breakpoint(): it starts the next session
    session = TerminalPdb(debugger)
    try:
        session.take_terminal(_where(frame))
    except NoTerminal as exc:
        raise NoTerminal(
            f"{called} at {_where(frame)}: {exc} Run asgireload in a terminal to debug there, "
            f"run it under a debugger such as debugpy, or {_HOW_TO_SKIP[called]}"
        ) from None
    if header is not None:
        session.message(header)
    if commands:
        session.rcLines.extend(commands)
    session.set_trace(frame)


def _where(frame: FrameType) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"
