"""The terminal the command line runs in: keys, job control, hang-ups, the standard streams.

Only the entry points that own the terminal (`asgireload APP`, `run()`) use this module; the
library (`serve()`, `Reloader`) never touches the terminal or its signals.

- Keys (keyboard.py) are read only while asgireload is in the terminal's foreground process
  group: a background job (`asgireload main:app &`) that read the terminal would be stopped by
  SIGTTIN, and reloading with it. `fg` (SIGCONT) brings the keys back.
- SIGTTIN and SIGTTOU are ignored, so a background supervisor is never stopped by the kernel.
- SIGHUP stops (the terminal hung up); `terminal_hung_up()` tells a closed window from a
  SIGHUP sent by hand, for the log.
- A closed stdin, stdout or stderr is opened on /dev/null before anything else opens a file
  (otherwise the listening socket would take its number); a broken one (a pipe whose reader
  has gone) is refused in one line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import stat
import sys
from collections.abc import Iterator

logger = logging.getLogger("asgireload")

STREAM_NAMES = {0: "stdin", 1: "stdout", 2: "stderr"}


class BrokenStream(Exception):
    """stdout or stderr leads nowhere: nothing asgireload or the app prints could be seen."""


def in_foreground() -> bool:
    """Whether this process may read its terminal without being stopped (SIGTTIN).

    A terminal that is not this process's controlling terminal (ENOTTY) has no job control,
    so reading it is always allowed.
    """
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError as exc:
        return exc.errno == errno.ENOTTY


@contextlib.contextmanager
def job_control_ignored() -> Iterator[None]:
    """Ignore SIGTTIN and SIGTTOU, so a background job is never stopped by the terminal.

    Ignored, not handled: with a handler the kernel would keep interrupting the read (or the
    write, under `stty tostop`), which Python retries for ever; ignored, the read fails with
    EIO and the write goes through. The previous dispositions come back on leaving.
    """
    previous = {}
    for signum in (signal.SIGTTIN, signal.SIGTTOU):
        with contextlib.suppress(ValueError, OSError):
            previous[signum] = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, handler)


def terminal_hung_up() -> bool:
    """Whether stdin, stdout or stderr is a terminal that has hung up (its window was closed)."""
    return any(
        _is_character_device(fd) and _poll(fd, select.POLLOUT) & (select.POLLHUP | select.POLLERR)
        for fd in (0, 1, 2)
    )


def let_go_of_a_hung_up_terminal() -> None:
    """Point stdout and stderr that are a hung-up terminal at /dev/null. Every write to such a
    terminal fails (EIO), the last lines of the shutdown included; on 3.15 the interpreter's own
    last flush of them at exit fails too, which made the exit status 120 instead of 0."""
    hung_up = [
        fd
        for fd in (1, 2)
        if _is_character_device(fd) and _poll(fd, select.POLLOUT) & (select.POLLHUP | select.POLLERR)
    ]
    if not hung_up:
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in hung_up:
            os.dup2(null, fd)
    finally:
        os.close(null)


def ensure_standard_streams() -> list[str]:
    """Open a closed stdin, stdout or stderr on /dev/null (their names are returned); raise
    BrokenStream for a broken one.

    Called first thing, before any file or socket is opened: a closed descriptor 0, 1 or 2
    would otherwise be taken by the next one (the listening socket), and every worker, which
    inherits 0, 1 and 2, would set up uvicorn's logging on no stream at all and die.
    """
    reopened = []
    for fd in (0, 1, 2):  # in order: each reopened number is the lowest free one
        if not _is_open(fd):
            _reopen_on_devnull(fd)
            _replace_python_stream(fd)
            reopened.append(STREAM_NAMES[fd])
    for fd in (1, 2):
        if _is_broken(fd):
            raise BrokenStream(
                f"{STREAM_NAMES[fd]} is a pipe whose reader has exited, so nothing printed would be "
                f"seen; run asgireload without that pipe, or redirect {STREAM_NAMES[fd]} to a file "
                "(or to /dev/null to drop it)."
            )
    return reopened


def report_broken_stream(exc: BrokenStream) -> None:
    """One line, on whichever of stderr and stdout still works."""
    for fd in (2, 1):
        if not _is_broken(fd):
            with contextlib.suppress(OSError):
                os.write(fd, f"asgireload: error: {exc}\n".encode())
                return


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _is_character_device(fd: int) -> bool:
    try:
        return stat.S_ISCHR(os.fstat(fd).st_mode)
    except OSError:
        return False


def _is_broken(fd: int) -> bool:
    """A pipe or socket whose other end has gone (writing to it would fail with EPIPE)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return False
    return bool(_poll(fd, select.POLLOUT) & select.POLLERR)


def _poll(fd: int, events: int) -> int:
    poller = select.poll()
    poller.register(fd, events)
    try:
        return sum(revents for _, revents in poller.poll(0))
    except OSError:
        return 0


def _reopen_on_devnull(fd: int) -> None:
    """Make `fd` /dev/null, inheritable like a standard stream (workers get 0, 1 and 2)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    if devnull == fd:
        os.set_inheritable(fd, True)
    else:
        os.dup2(devnull, fd)
        os.close(devnull)


def _replace_python_stream(fd: int) -> None:
    """Python set sys.stdin/stdout/stderr to None for a descriptor closed at start-up."""
    name = STREAM_NAMES[fd]
    if getattr(sys, name) is None:
        mode = "r" if fd == 0 else "w"
        setattr(sys, name, open(fd, mode, buffering=1, closefd=False, errors="backslashreplace"))  # noqa: SIM115
