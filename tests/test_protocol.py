"""The control messages (one decoder, checked against their fields) and the channel on the event
loop (framing and limits, over a real socketpair)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket

import pytest

from asgireload import _protocol as protocol
from asgireload._channel import Channel


def test_a_message_round_trips() -> None:
    message = protocol.Files(
        (("/a/b.py", 1, 2, 3), ("/a/gone.py", None, None, None)),
        ("ünïcode",),
        (("app.main", "/a/main.py", ("app.routes", "app")), ("app", "/a/__init__.py", ())),
    )
    line = protocol.encode(message)
    assert line.endswith(b"\n")
    assert protocol.decode(line, protocol.WORKER_MESSAGES) == message


FAILURE = protocol.Failure("import", "RuntimeError: boom", "Traceback ...", ("/a/main.py",), ("/a/x.py",))


@pytest.mark.parametrize(
    "message",
    [
        protocol.Hello(pid=12, preload_failed=(("fastapi", "ImportError: no"), ("jinja2", "OSError: x"))),
        protocol.Ready(3, error_page=True),
        protocol.Failed(3, FAILURE),
        protocol.Draining(),
        protocol.Load(4, {"KEY": "value"}, FAILURE),
        protocol.Load(4),
        protocol.Serve(),
        protocol.ShowFailure(dataclasses.replace(FAILURE, kind="crash", exit_reason="killed by SIGKILL")),
        protocol.Drain(2.5),
        protocol.Paused("/a/main.py:12", interruptible=False, announce=False),
        protocol.Resumed(),
        protocol.Lent(False, "no terminal"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_every_message_round_trips(message: protocol.Message) -> None:
    allowed = {
        **protocol.WORKER_MESSAGES,
        **protocol.SUPERVISOR_MESSAGES,
        **protocol.DEBUG_WORKER_MESSAGES,
        **protocol.DEBUG_SUPERVISOR_MESSAGES,
    }
    assert protocol.decode(protocol.encode(message), allowed) == message


def test_the_debug_channel_carries_only_its_own_messages() -> None:
    with pytest.raises(protocol.ProtocolError, match="unknown message type 'ready'"):
        protocol.decode(protocol.encode(protocol.Ready(1)), protocol.DEBUG_WORKER_MESSAGES)
    with pytest.raises(protocol.ProtocolError, match="unknown message type 'paused'"):
        protocol.decode(protocol.encode(protocol.Paused("x:1")), protocol.WORKER_MESSAGES)
    with pytest.raises(protocol.ProtocolError, match="whose 'granted' is '1'"):
        protocol.decode(b'{"type": "lent", "granted": 1}', protocol.DEBUG_SUPERVISOR_MESSAGES)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"type": "hello", "pid": 1, "protocol": 1}', "whose 'protocol' is '1', not 2"),
        (b'{"type": "hello", "pid": 1}', "a 'hello' message without 'protocol'"),
        (b'{"type": "hello", "protocol": 2}', "a 'hello' message without 'pid'"),
        (b'{"type": "hello", "pid": true, "protocol": 2}', "whose 'pid' is 'True'"),
        (
            b'{"type": "files", "files": [["a", "b", 3, 4]]}',
            "a malformed file entry ['a', 'b', 3, 4]: 'files[0][1]' is 'b', not an integer or null",
        ),
        (b'{"type": "files", "modules": []}', "a 'files' message without 'files'"),
        (b'{"type": "files", "files": [], "modules": [1]}', "whose 'modules[0]' is '1', not text"),
        (b'{"type": "files", "files": [], "imports": {}}', "whose 'imports' is '{}'"),
        (b'{"type": "files", "files": [], "imports": [["m", "/a.py"]]}', "a malformed import entry"),
        (
            b'{"type": "files", "files": [], "imports": [["m", "/a.py", [1]]]}',
            "a malformed import entry",
        ),
        (b'{"type": "files", "files": [], "imports": [[1, "/a.py", []]]}', "a malformed import entry"),
        (b'{"type": "ready", "generation": "1"}', "whose 'generation' is '1'"),
        (b'{"type": "failed", "generation": 1}', "a 'failed' message without 'failure'"),
        (b'{"type": "failed", "generation": 1, "failure": []}', "whose 'failure' is '[]', not an object"),
        (
            b'{"type": "failed", "generation": 1, "failure": {"kind": "x", "summary": 3}}',
            "whose 'failure.summary' is '3', not text",
        ),
        (
            b'{"type": "failed", "generation": 1, "failure": {"kind": "x", "summary": "s", "files": [1]}}',
            "whose 'failure.files[0]' is '1', not text",
        ),
    ],
)
def test_a_message_with_a_wrong_field_is_a_protocol_error(line: bytes, problem: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=re.escape(problem)):
        protocol.decode(line, protocol.WORKER_MESSAGES)


def test_a_worker_cannot_send_what_only_the_supervisor_sends() -> None:
    with pytest.raises(protocol.ProtocolError, match="unknown message type 'serve'"):
        protocol.decode(protocol.encode(protocol.Serve()), protocol.WORKER_MESSAGES)


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
        protocol.encode(protocol.Files(modules=("x" * protocol.MAX_LINE,)))


async def test_the_channel_reads_messages_then_end_of_file() -> None:
    ours, theirs = socket.socketpair()
    channel = await Channel.open(ours, protocol.WORKER_MESSAGES)
    try:
        theirs.sendall(protocol.encode(protocol.Hello(pid=1)))
        theirs.close()
        assert await channel.receive() == protocol.Hello(pid=1)
        assert await channel.receive() is None
    finally:
        channel.close()


async def test_the_channel_refuses_a_line_over_the_limit() -> None:
    ours, theirs = socket.socketpair()
    channel = await Channel.open(ours, protocol.WORKER_MESSAGES)
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
    channel = await Channel.open(ours, protocol.WORKER_MESSAGES)
    try:
        theirs.sendall(b'{"type": "hel')
        theirs.close()
        with pytest.raises(protocol.ProtocolError, match="middle of a message"):
            await channel.receive()
    finally:
        channel.close()


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":"files","files":[["/tmp/a\\u0000b.py",1,2,3]],"modules":[]}\n',  # a NUL in a path
        b'{"type":"files","files":[["/tmp/\\ud800.py",1,2,3]],"modules":[]}\n',  # not encodable
        b'{"type":"failed","generation":1,"failure":{"kind":"import","summary":"x","files":["a\\u0000"]}}\n',
        b"[" * 200_000 + b"]" * 200_000 + b"\n",  # nested past the parser's recursion limit
    ],
    ids=["nul-in-files", "unencodable", "nul-in-failure", "deep-nesting"],
)
def test_what_the_supervisor_could_not_use_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(line, protocol.WORKER_MESSAGES)


def test_a_path_that_is_not_utf8_is_still_a_path() -> None:
    assert protocol.is_path("/tmp/caf\udce9/main.py")  # os.fsdecode's surrogate escape of b"\xe9"
    assert not protocol.is_path("/tmp/a\x00b")
