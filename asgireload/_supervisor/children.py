"""The supervisor's child processes, of every kind, and the one way each of them ends.

A child is a spawned worker (asyncio started it and reaps it), a template (started with
posix_spawn in templatespawn.py; reaped here, through a pidfd) or a worker forked by a template
(not this process's child: its exit is seen through a pidfd the template sent, its status comes
from the template, which reaps it). They differ only in how their exit is learnt; each sets
`Child.exited` and `Child.returncode`, and from there they end the same way:

    Child.kill()     SIGKILL for it, its process group (it leads a session of its own) and,
                     unless told not to, every process carrying its tag (see _reaper.py)
    Child.aclose(w)  the shielded close trio and anyio use: `w` seconds to exit by itself (it was
                     asked already: a drain, end of file on its channel), then kill(), then a
                     bounded wait for it to be reaped; a stuck process (uninterruptible sleep on
                     a hung mount) never blocks the supervisor, and cancelling it does not stop
                     it half-way: the kill is sent before CancelledError propagates.

What the supervisor holds of a child beyond the process (channels, pipes) is released by its
owner: WorkerProcess.release (workers.py), TemplateHandle.release (forkserver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from .. import _reaper
from . import templatespawn

KILL_WAIT = 2.0  # seconds to wait for a killed child to be reaped
STATUS_WAIT = 1.0  # seconds a forked worker's exit waits for the template's report of its status


class Child:
    """A child process: its pid, its tag, whether and how it exited, and how it ends."""

    def __init__(self, pid: int, tag: str | None) -> None:
        self.pid = pid
        self.tag = tag  # in the environment of everything it starts: see _reaper.py
        self.returncode: int | None = None
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} returncode={self.returncode}>"

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    async def wait(self) -> int | None:
        """Wait until it has exited (not for its output pipe to close); its return code."""
        await asyncio.shield(self.exited)
        return self.returncode

    def kill(self, tagged: bool = True) -> None:
        """SIGKILL it, its process group and, if `tagged`, every process carrying its tag (the
        group and the tag even once it exited: what it started goes too)."""
        if self.alive:  # (one just forked may not lead its group yet)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
        _reaper.kill_generation(self.pid, self.tag if tagged else None)

    async def aclose(self, wait: float, tagged: bool = True) -> bool:
        """`wait` seconds to exit by itself, then kill() and a bounded wait to reap it. Returns
        whether it was still running at the deadline. Cancelled, it still kills first."""
        try:
            if self.alive and wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.wait()
            return self.alive
        finally:
            self.kill(tagged)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KILL_WAIT):
                    await self.wait()

    def release(self) -> None:
        """Close what this side holds of the process (after aclose, or once it exited)."""

    def _set_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class SpawnedChild(Child):
    """A worker started with asyncio's subprocess_exec: asyncio reaps it, and `exited` (set by
    its protocol's process_exited) says when: the exit, not the output pipe's end, which a child
    of the app that inherited it may hold for as long as it lives."""

    def __init__(
        self, tag: str | None, transport: asyncio.SubprocessTransport, exited: asyncio.Future[None]
    ) -> None:
        super().__init__(transport.get_pid(), tag)
        self.transport = transport
        exited.add_done_callback(lambda _: self._on_exit())

    def _on_exit(self) -> None:
        self.returncode = self.transport.get_returncode()
        self._set_exited()

    def release(self) -> None:
        self.transport.close()  # the output pipe too, even if a stray process still holds it


class ForkedChild(Child):
    """A worker a template forked: the template reaps it and reports its status."""

    def __init__(self, pid: int, pidfd: int) -> None:
        super().__init__(pid, None)  # its tag is the worker's to know (see workers.attach)
        self._loop = asyncio.get_running_loop()
        self._pidfd: int | None = pidfd
        self._gone = False
        self._orphaned = False  # its template is gone: no status will come
        self._loop.add_reader(pidfd, self._on_exit)

    def _on_exit(self) -> None:
        self._close_pidfd()
        self._gone = True
        if self.returncode is not None or self._orphaned:
            self._set_exited()
        else:
            self._loop.call_later(STATUS_WAIT, self._set_exited)

    def status(self, returncode: int) -> None:
        """The template reaped it: how it ended."""
        self.returncode = returncode
        if self._gone:
            self._set_exited()

    def orphan(self) -> None:
        """Its template is gone: its exit alone is news now."""
        self._orphaned = True
        if self._gone:
            self._set_exited()

    def release(self) -> None:
        """Stop watching its pidfd (it was killed and waited for: its exit, if the loop has not
        seen it yet, is no news any more)."""
        self._close_pidfd()
        self._set_exited()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class TemplateChild(Child):
    """A template (templatespawn.TemplateProcess), reaped here when its pidfd says it exited.
    Killing it alone (tagged=False) leaves the workers it forked: they lead sessions of their own."""

    def __init__(self, process: templatespawn.TemplateProcess) -> None:
        super().__init__(process.pid, process.tag)
        self.process = process
        asyncio.get_running_loop().add_reader(process.pidfd, self._on_exit)

    def _on_exit(self) -> None:
        if self.process.reap() is not None:
            self._unwatch()
            os.close(self.process.pidfd)
            self.process.pidfd = -1
            self.returncode = self.process.returncode
            self._set_exited()

    def release(self) -> None:
        """The supervisor is done with it: killed, reaped if it can be within a second (see
        templatespawn.close), and nothing of it left open here."""
        self._unwatch()
        templatespawn.close(self.process)
        if self.process.returncode is not None:
            self.returncode = self.process.returncode
            self._set_exited()

    def _unwatch(self) -> None:
        if self.process.pidfd >= 0:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.process.pidfd)


def end_forker(handle: Any, error: Exception) -> None:
    """End a process that forks workers, as the fork server holds it (a template's or a project
    layer's handle): killed alone (its workers lead sessions of their own), its channel closed,
    the fork requests waiting on it failed with `error`, its workers' exits no news any more."""
    handle.child.kill(tagged=False)
    with contextlib.suppress(ValueError, OSError):
        asyncio.get_running_loop().remove_reader(handle.channel.fileno())
    handle.channel.close()
    handle.receiver.close()
    for answer in handle.answers:
        if not answer.done():
            answer.set_exception(error)
    handle.answers.clear()
    for worker in handle.forked.values():
        worker.orphan()
