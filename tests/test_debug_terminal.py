"""The supervisor's side of breakpoint(): DebugTerminal against fake workers (socketpairs).

A fake worker is the other end of a debug socketpair: it sends `paused` and `resumed` lines and
reads the answers with the descriptors that come with them, as _worker/terminallease.py does. The
"terminal" is a pipe, so the test can check which descriptors were lent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator

import pytest

from asgireload import _protocol as protocol
from asgireload._supervisor.debugging import DebugTerminal, warn_about_breakpoint_hook

DEADLINE = 10.0


class FakeWorker:
    def __init__(self, terminal: DebugTerminal, name: str) -> None:
        self.ours, theirs = socket.socketpair()
        self.states: list[tuple[bool, bool]] = []
        self.detach = terminal.attach(lambda: name, os.getpid(), theirs, self._emit)
        self.theirs = theirs
        self.changed = asyncio.Event()

    def _emit(self, paused: bool, announce: bool) -> None:
        self.states.append((paused, announce))
        self.changed.set()

    def send(self, message: protocol.Message) -> None:
        self.ours.sendall(protocol.encode(message))

    async def wait_for_states(self, expected: list[tuple[bool, bool]]) -> None:
        async with asyncio.timeout(DEADLINE):
            while self.states != expected:
                self.changed.clear()
                await self.changed.wait()

    async def answer(self) -> tuple[protocol.Message | None, list[int]]:
        """The supervisor's next answer; non-blocking, so no thread is left waiting for one."""
        loop = asyncio.get_running_loop()
        self.ours.setblocking(False)
        async with asyncio.timeout(DEADLINE):
            while True:
                try:
                    data, fds, _flags, _address = socket.recv_fds(self.ours, 4096, 4)
                    break
                except BlockingIOError:
                    readable = loop.create_future()
                    loop.add_reader(self.ours.fileno(), readable.set_result, None)
                    try:
                        await readable
                    finally:
                        loop.remove_reader(self.ours.fileno())
        if not data:
            return None, fds
        return protocol.decode(data.rstrip(b"\n"), protocol.DEBUG_SUPERVISOR_MESSAGES), fds

    def close(self) -> None:
        self.detach()
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)


def identical(fd: int, other: int) -> bool:
    a, b = os.fstat(fd), os.fstat(other)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


async def test_one_worker_at_a_time_has_the_terminal_and_keys_stop_meanwhile(pipe: tuple[int, int]) -> None:
    lent: list[bool] = []
    terminal = DebugTerminal(pipe, on_lend=lent.append)
    first, second = FakeWorker(terminal, "generation 1"), FakeWorker(terminal, "generation 2")
    try:
        first.send(protocol.Paused("/p/main.py:3"))
        answer, fds = await first.answer()
        assert answer == protocol.Lent(True)
        assert len(fds) == 2
        assert identical(fds[0], pipe[0])
        assert identical(fds[1], pipe[1])
        for fd in fds:
            os.close(fd)
        assert lent == [True]
        assert first.states == [(True, True)]

        second.send(protocol.Paused("/p/main.py:3"))  # waits: no answer until the first resumes
        # it is paused while it waits its turn (no drain deadline kills it), announced once lent
        await second.wait_for_states([(True, False)])
        first.send(protocol.Resumed())
        answer, fds = await second.answer()
        assert answer == protocol.Lent(True)
        for fd in fds:
            os.close(fd)
        assert first.states == [(True, True), (False, True)]
        assert second.states == [(True, False), (True, True)]
        assert lent == [True, True]  # never given back to the keys in between

        second.close()  # it died at its prompt: the terminal comes back
        assert lent == [True, True, False]
        assert terminal.holder_pid is None
        assert not terminal.interrupt()  # CTRL+C is the server's again
    finally:
        first.close()
        second.close()


async def test_a_queued_worker_is_refused_if_asgireload_went_to_the_background_meanwhile(
    pipe: tuple[int, int],
) -> None:
    lent: list[bool] = []
    foreground = [True]
    terminal = DebugTerminal(pipe, on_lend=lent.append, in_foreground=lambda: foreground[0])
    first, second = FakeWorker(terminal, "generation 1"), FakeWorker(terminal, "generation 2")
    try:
        first.send(protocol.Paused("/p/main.py:3"))
        _answer, fds = await first.answer()
        for fd in fds:
            os.close(fd)
        second.send(protocol.Paused("/p/main.py:3"))
        await second.wait_for_states([(True, False)])
        foreground[0] = False  # suspended and put in the background (bg) since
        first.send(protocol.Resumed())
        answer, fds = await second.answer()
        assert isinstance(answer, protocol.Lent)
        assert (answer.granted, fds) == (False, [])
        assert "background" in answer.reason
        assert second.states == [(True, False), (False, False)]  # no longer paused
        assert lent == [True, False]  # the keys are back (read again once in the foreground)
        assert terminal.holder_pid is None
    finally:
        first.close()
        second.close()


async def test_without_a_terminal_the_answer_says_why() -> None:
    terminal = DebugTerminal.none("no terminal here.")
    worker = FakeWorker(terminal, "generation 1")
    try:
        worker.send(protocol.Paused("/p/main.py:3"))
        answer, fds = await worker.answer()
        assert (answer, fds) == (protocol.Lent(False, "no terminal here."), [])
        assert worker.states == []  # never paused, as far as the machine knows
    finally:
        worker.close()


async def test_a_background_job_lends_nothing(pipe: tuple[int, int]) -> None:
    terminal = DebugTerminal(pipe, in_foreground=lambda: False)
    worker = FakeWorker(terminal, "generation 1")
    try:
        worker.send(protocol.Paused("/p/main.py:3"))
        answer, fds = await worker.answer()
        assert isinstance(answer, protocol.Lent)
        assert not answer.granted
        assert fds == []
        assert "background" in answer.reason
    finally:
        worker.close()


@pytest.mark.parametrize("garbage", [b"not json\n", b'{"type": "lent", "granted": true}\n', b"x" * 5000])
async def test_garbage_closes_the_channel_so_the_worker_stops_waiting(
    pipe: tuple[int, int], garbage: bytes
) -> None:
    lent: list[bool] = []
    terminal = DebugTerminal(pipe, on_lend=lent.append)
    worker = FakeWorker(terminal, "generation 1")
    try:
        worker.ours.sendall(garbage)
        answer, fds = await worker.answer()  # end of file: its breakpoint() fails at once
        assert (answer, fds) == (None, [])
        assert lent == []
    finally:
        with contextlib.suppress(OSError):
            worker.close()


@pytest.mark.parametrize("hook", ["ipdb.set_trace", "pudb.set_trace", " IPython.embed "])
def test_a_breakpoint_hook_that_needs_its_own_terminal_is_warned_about(hook: str) -> None:
    message = warn_about_breakpoint_hook({"PYTHONBREAKPOINT": hook})
    assert message is not None
    assert f"PYTHONBREAKPOINT={hook.strip()} is set" in message
    assert "Unset it" in message


@pytest.mark.parametrize("environ", [{}, {"PYTHONBREAKPOINT": "0"}, {"PYTHONBREAKPOINT": "pdb.set_trace"}])
def test_pdb_and_no_hook_need_no_warning(environ: dict[str, str]) -> None:
    assert warn_about_breakpoint_hook(environ) is None
