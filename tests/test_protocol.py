"""The control channel's framing and limits, over a real socketpair."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from asgireload import protocol


def test_a_message_round_trips() -> None:
    message = {"type": "files", "files": [["/a/b.py", 1, 2, 3]], "modules": ["ünïcode"]}
    line = protocol.encode(message)
    assert line.endswith(b"\n")
    assert protocol.decode(line, protocol.WORKER_MESSAGES) == message


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "not an object"),
        (b'{"type": "boom"}\n', "unknown message type 'boom'"),
        (b'{"no": "type"}\n', "unknown message type None"),
        (b"\xff\xfe\n", "not JSON"),
    ],
)
def test_garbage_is_a_protocol_error(line: bytes, problem: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=problem):
        protocol.decode(line, protocol.WORKER_MESSAGES)


def test_a_message_over_the_limit_is_refused_when_sent() -> None:
    with pytest.raises(protocol.ProtocolError, match="over the limit"):
        protocol.encode({"type": "files", "files": ["x" * protocol.MAX_LINE]})


async def test_the_channel_reads_messages_then_end_of_file() -> None:
    ours, theirs = socket.socketpair()
    channel = await protocol.Channel.open(ours, protocol.WORKER_MESSAGES)
    try:
        theirs.sendall(protocol.encode({"type": "hello", "pid": 1, "protocol": 1}))
        theirs.close()
        assert await channel.receive() == {"type": "hello", "pid": 1, "protocol": 1}
        assert await channel.receive() is None
    finally:
        channel.close()


async def test_the_channel_refuses_a_line_over_the_limit() -> None:
    ours, theirs = socket.socketpair()
    channel = await protocol.Channel.open(ours, protocol.WORKER_MESSAGES)
    sending = asyncio.create_task(asyncio.to_thread(theirs.sendall, b"x" * (protocol.MAX_LINE + 10)))
    try:
        with pytest.raises(protocol.ProtocolError, match="longer than"):
            await channel.receive()
    finally:
        channel.close()
        theirs.shutdown(socket.SHUT_RDWR)  # unblocks the sender if the buffer is full
        with contextlib.suppress(OSError):
            await sending
        theirs.close()


async def test_a_message_cut_by_end_of_file_is_an_error() -> None:
    ours, theirs = socket.socketpair()
    channel = await protocol.Channel.open(ours, protocol.WORKER_MESSAGES)
    try:
        theirs.sendall(b'{"type": "hel')
        theirs.close()
        with pytest.raises(protocol.ProtocolError, match="middle of a message"):
            await channel.receive()
    finally:
        channel.close()
