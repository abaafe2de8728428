"""The one wire of every channel: JSON lines and the descriptors they carry (units over real
socketpairs), and what a child's malformed line does (end to end: the template that sent it is
ended, the supervisor goes on serving and reloading)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest

from asgireload import Reloader, _handoff, _wire
from asgireload._supervisor import forkserver
from asgireload._supervisor import templatetable as tt

from .conftest import PLAIN_APP, until
from .test_forkserver import fork_server
from .test_lifecycle import our_processes

# ------------------------------------------------------------------ framing


def test_the_wire_carries_lines_and_their_descriptors() -> None:
    left, right = socket.socketpair()
    passed, kept = socket.socketpair()
    try:
        _wire.send(left, {"type": "fork", "tag": "t"}, [passed.fileno(), passed.fileno()])
        _wire.send(left, {"type": "retire"})
        receiver = _wire.LineReceiver(right)
        messages: list[tuple[dict[str, object], list[int]]] = []
        while len(messages) < 2:
            received = receiver.receive()
            assert received is not None
            messages += received
        (fork, fds), (retire, none) = messages
        assert fork == {"type": "fork", "tag": "t", "fds": 2}
        assert retire == {"type": "retire"}
        assert none == []
        with socket.socket(fileno=fds[0]) as copy:  # a working descriptor of the same socket
            copy.sendall(b"x")
            assert kept.recv(1) == b"x"
        os.close(fds[1])
    finally:
        for sock in (left, right, passed, kept):
            sock.close()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"not json\n", "not JSON"),
        (b"[1]\n", "not a message"),
        (b'{"no": "type"}\n', "unknown message type None"),
        (b'{"type": "forked", "fds": 1}\n', "without the descriptors it announces"),
        (b'{"type": "forked", "fds": -1}\n', "without the descriptors it announces"),
    ],
)
def test_the_wire_rejects_garbage(line: bytes, problem: str) -> None:
    left, right = socket.socketpair()
    try:
        left.sendall(line)
        with pytest.raises(_wire.ProtocolError, match=problem):
            _wire.LineReceiver(right).receive()
    finally:
        left.close()
        right.close()


def test_descriptors_no_line_announced_are_an_error_and_closed() -> None:
    left, right = socket.socketpair()
    read_end, write_end = os.pipe()
    receiver = _wire.LineReceiver(right)
    try:
        left.sendmsg([b'{"type": "retire"}\n'], _wire.rights([write_end]))
        os.close(write_end)
        with pytest.raises(_wire.ProtocolError, match="descriptors that no message announced"):
            receiver.receive()
        assert os.read(read_end, 1) == b""  # the copy that came was closed: no writer is left
    finally:
        receiver.close()
        os.close(read_end)
        left.close()
        right.close()


def test_a_line_over_the_limit_is_an_error_however_it_arrives() -> None:
    whole, pieces = _wire.Lines(max_line=10), _wire.Lines(max_line=10)
    whole.feed(b'{"type": "far too long"}\n')
    with pytest.raises(_wire.ProtocolError, match="longer than 10 bytes"):
        whole.next()
    for _ in range(3):
        pieces.feed(b"xxxxx")  # no newline yet: found once the buffer passes the limit
    with pytest.raises(_wire.ProtocolError, match="longer than 10 bytes"):
        pieces.next()


def test_a_bad_line_is_dropped_and_the_lines_after_it_are_read() -> None:
    lines = _wire.Lines()
    lines.feed(b'not json\n{"type": "resumed"}\n{"type": "pa')
    with pytest.raises(_wire.ProtocolError, match="not JSON"):
        lines.next()
    assert lines.next() == ({"type": "resumed"}, [])
    assert lines.next() is None
    assert lines.partial  # an end of file now cuts a message
    lines.feed(b'used"}\n')
    assert lines.next() == ({"type": "paused"}, [])


def test_a_line_whose_descriptors_the_kernel_lost_comes_without_any() -> None:
    """MSG_CTRUNC (out of descriptors): that message loses its descriptors, not the channel."""
    lines = _wire.Lines()
    read_end, write_end = os.pipe()
    lines.feed(b'{"type": "fork", "fds": 2}\n', [write_end], lost=True)  # one of two came
    lines.feed(b'{"type": "connection", "fds": 1}\n', [read_end])
    assert lines.next() == ({"type": "fork", "fds": 2}, [])
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(write_end)  # the one that came was closed with its message
    message, fds = lines.next() or ({}, [])
    assert (message, fds) == ({"type": "connection", "fds": 1}, [read_end])
    os.close(read_end)


def test_what_a_message_carries_is_escaped_to_one_ascii_line() -> None:
    line = _wire.frame({"type": "x", "path": "/tmp/caf\udce9\n.py"}, fds=1)
    assert line.count(b"\n") == 1
    assert line.isascii()
    assert _wire.parse(line) == {"type": "x", "path": "/tmp/caf\udce9\n.py", "fds": 1}
    with pytest.raises(_wire.ProtocolError, match="over the limit"):
        _wire.frame({"type": "x", "text": "y" * 100}, limit=50)


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json\n",
        b'{"type": "connection", "pending": "eA=="}\n',
        b'{"type": "connection", "pending": "!"}\n',
    ],
    ids=["not-json", "no-descriptor", "not-base64"],
)
def test_a_hand_off_channel_that_carries_garbage_is_closed_after_the_records_before_it(
    garbage: bytes,
) -> None:
    left, right = socket.socketpair()
    read_end, write_end = os.pipe()
    receiver = _handoff.ConnectionReceiver(right)
    right.setblocking(False)
    try:
        assert _handoff.send_connection(left, write_end, b"GET / HTTP/1.1\r\n")
        left.sendall(garbage)
        records = receiver.receive()
        assert [record.pending for record in records] == [b"GET / HTTP/1.1\r\n"]
        assert receiver.closed
        os.close(records[0].fd)
    finally:
        receiver.close()
        for fd in (read_end, write_end):
            os.close(fd)
        left.close()
        right.close()


# ------------------------------------------------------------------ a child's garbage ends that child


@pytest.mark.skipif(forkserver.unsafe_to_fork() is not None, reason="the fork server needs Linux")
@pytest.mark.parametrize(
    "line",
    [
        b'{"type":"exited","pid":"12","returncode":0}\n',
        b'{"type":"exited","pid":12}\n',
        b'{"type":"forked","pid":12}\n',
        b'{"type":"boom"}\n',
        b"not json\n",
    ],
    ids=["exited-pid-text", "exited-without-status", "forked-without-pidfd", "unknown", "not-json"],
)
async def test_a_malformed_template_line_ends_the_template_not_the_supervisor(
    plain_app: Path, line: bytes
) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        await until(lambda: "template" in server.pids, what="the template")
        fork = fork_server(server)
        template = fork._templates[fork.life.current or 0]
        assert template.pid == server.pids["template"]
        # the line comes in on the template's wire, read the way the event loop reads it
        theirs, ours = socket.socketpair()
        ours.setblocking(False)
        template.receiver = _wire.LineReceiver(ours)
        try:
            theirs.sendall(line)
            fork._readable(template)
        finally:
            theirs.close()
            ours.close()
        assert any(
            isinstance(event, tt.WireBroken) and event.template == template.id for event in fork.history
        )
        await until(lambda: template.pid not in our_processes(), what="the template to be ended")
        assert (await client.get(server.url)).text == "v1"
        event = await server.edit(plain_app / "main.py", PLAIN_APP.replace('"v1"', '"v2"'))
        assert event.outcome == "ready"
        assert (await client.get(server.url)).text == "v2"
        await until(lambda: server.pids.get("template") not in (None, template.pid), what="a new template")
    assert not our_processes()
