"""End to end: connections handed from a draining generation to the new one, at request boundaries.

Raw sockets, so the bytes (and when the server has read them) are under the test's control; every
test runs with both HTTP implementations asgireload allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import select
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvicorn
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from asgireload import Reloader, _handoff
from asgireload._worker import httpprotocols
from asgireload._worker.requestframing import FramingError, RequestFraming
from asgireload._worker.server import Server

from .conftest import until, write

both_http = pytest.mark.parametrize("http", ["h11", "httptools"])
linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="reads the server's receive queues in /proc/net/tcp"
)

APP = """
import asyncio
import pathlib

BODY = "v1"
HERE = pathlib.Path(__file__).parent


async def wait_for(name):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (HERE / name).exists() and loop.time() < deadline:
        await asyncio.sleep(0.005)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        (HERE / "slow-started").write_text("")
        await wait_for("go")
    elif scope["path"] == "/hang":
        (HERE / "hang-started").write_text("")
        await wait_for("never")
    received = b""
    more = scope["method"] == "POST"
    while more:
        message = await receive()
        received += message.get("body", b"")
        more = message.get("more_body", False)
    body = f"{BODY} {scope['path']}{' ' + received.decode() if received else ''}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""

V2 = APP.replace('BODY = "v1"', 'BODY = "v2"')


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def post(path: str, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def post_chunked(path: str, *chunks: bytes) -> bytes:
    framed = b"".join(b"%x;note=1\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    return head + framed + b"0\r\nX-Trailer: yes\r\n\r\n"


async def read_response(reader: asyncio.StreamReader) -> tuple[int, str]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    length = int(lengths[0].split(b":")[1]) if lengths else 0
    return status, (await reader.readexactly(length)).decode()


def unread_by_server(server_port: int, client_port: int) -> int | None:
    """Bytes the client sent that the server has not read yet (None: no such connection)."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                return int(queues.split(":")[1], 16)
    return None


async def all_read(server: Reloader, writer: asyncio.StreamWriter) -> None:
    """Wait until the server's worker has read every byte sent so far on this connection."""
    await writer.drain()
    client_port = writer.get_extra_info("sockname")[1]
    await until(lambda: unread_by_server(server.port, client_port) == 0, what="the server to read the bytes")


@contextlib.asynccontextmanager
async def connection(server: Reloader) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@both_http
@linux_only
async def test_a_request_split_across_a_reload_runs_the_new_code(tmp_path: Path, http: str) -> None:
    write(tmp_path / "main.py", APP)
    async with (
        Reloader("main:app", app_dir=tmp_path, http=http) as server,
        connection(server) as (reader, writer),
    ):
        async with asyncio.timeout(20):
            writer.write(get("/first"))
            assert await read_response(reader) == (200, "v1 /first")
            request = get("/split")
            writer.write(request[:20])  # half the head: read by the old generation, not yet a request
            await all_read(server, writer)
            await server.edit(tmp_path / "main.py", V2)
            writer.write(request[20:])
            assert await read_response(reader) == (200, "v2 /split")


@both_http
@linux_only
async def test_pipelined_requests_behind_a_slow_one_run_the_new_code(tmp_path: Path, http: str) -> None:
    write(tmp_path / "main.py", APP)
    async with (
        Reloader("main:app", app_dir=tmp_path, http=http) as server,
        connection(server) as (reader, writer),
    ):
        async with asyncio.timeout(20):
            pipelined = [
                get("/p0"),
                post("/p1", b"body one"),
                post_chunked("/p2", b"body", b" two"),
                get("/p3"),
            ]
            writer.write(get("/slow") + b"".join(pipelined))
            await until(lambda: (tmp_path / "slow-started").exists(), what="the slow request to start")
            await all_read(server, writer)
            await server.edit(tmp_path / "main.py", V2)
            (tmp_path / "go").write_text("")
            # the slow request was under way: it finishes on the old code; nothing after it does
            assert await read_response(reader) == (200, "v1 /slow")
            answers = [await read_response(reader) for _ in range(4)]
            assert answers == [
                (200, "v2 /p0"),
                (200, "v2 /p1 body one"),
                (200, "v2 /p2 body two"),
                (200, "v2 /p3"),
            ]
            writer.write(get("/after"))
            assert await read_response(reader) == (200, "v2 /after")


@both_http
@linux_only
async def test_a_request_cut_at_the_drain_deadline_is_one_warning(tmp_path: Path, http: str) -> None:
    write(tmp_path / "main.py", APP)
    reloader = Reloader("main:app", app_dir=tmp_path, http=http, drain_timeout=0.3)
    async with reloader as server, connection(server) as (reader, writer):
        async with asyncio.timeout(20):
            writer.write(get("/hang"))
            await until(lambda: (tmp_path / "hang-started").exists(), what="the hanging request to start")
            old = server.pids["serving"]
            await server.edit(tmp_path / "main.py", V2)
            assert await reader.read() == b""  # cut at the deadline: the connection closes
            await until(lambda: not _alive(old), what="the old generation to exit")
    lines = server.output.splitlines()
    cut = [line for line in lines if "Drain timeout reached" in line]
    assert len(cut) == 1, server.output
    assert "WARNING" in cut[0], server.output
    assert "Traceback" not in server.output
    assert "CancelledError" not in server.output
    assert not [line for line in lines if line.startswith("ERROR")], server.output


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # gone (possibly between two looks)
        return False


CLIENTS = 1500


@pytest.fixture
def enough_descriptors() -> object:
    """This process holds both ends' share: the clients, and the supervisor's held connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 3 * CLIENTS + 500
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs an open-file limit of {needed}; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@both_http
@pytest.mark.usefixtures("enough_descriptors")
async def test_many_idle_clients_survive_a_sequential_reload(tmp_path: Path, http: str) -> None:
    write(tmp_path / "main.py", APP)
    clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def ask(client: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str) -> tuple[int, str]:
        reader, writer = client
        writer.write(get(path))
        return await read_response(reader)

    async def everyone(path: str) -> set[tuple[int, str]]:
        answers: set[tuple[int, str]] = set()
        for start in range(0, CLIENTS, 250):
            batch = clients[start : start + 250]
            answers.update(await asyncio.gather(*(ask(client, path) for client in batch)))
        return answers

    async with Reloader("main:app", app_dir=tmp_path, http=http, sequential=True) as server:
        try:
            async with asyncio.timeout(60):
                for _ in range(CLIENTS):
                    clients.append(await asyncio.open_connection("127.0.0.1", server.port))
                assert await everyone("/") == {(200, "v1 /")}  # each one accepted, now idle
                event = await server.edit(tmp_path / "main.py", V2)
                assert event.outcome == "ready"
                assert await everyone("/") == {(200, "v2 /")}  # none closed: all held, then served
        finally:
            for _, writer in clients:
                writer.close()
            await asyncio.gather(*(w.wait_closed() for _, w in clients), return_exceptions=True)


# ---------------------------------------------------------------- units: framing and records


def pieces(framing: RequestFraming, stream: bytes, step: int) -> list[tuple[bytes, bool]]:
    """Feed `stream` in slices of `step` bytes, as a socket might; the pieces the framing cuts."""
    out: list[tuple[bytes, bool]] = []
    buffer = b""
    for start in range(0, len(stream), step):
        buffer += stream[start : start + step]
        while buffer:
            size, ends = framing.take(buffer)
            if not size:
                break
            out.append((buffer[:size], ends))
            buffer = buffer[size:]
    assert buffer == b""
    return out


def requests_in(cut: list[tuple[bytes, bool]]) -> list[bytes]:
    """Join the pieces into whole requests, checking each ends exactly where the framing says."""
    requests, current = [], b""
    for piece, ends in cut:
        current += piece
        if ends:
            requests.append(current)
            current = b""
    assert current == b""
    return requests


@pytest.mark.parametrize("step", [1, 3, 7, 64, 100_000])
def test_framing_finds_where_each_request_ends(step: int) -> None:
    stream = [
        get("/a"),
        post("/b", b"x" * 300),
        post_chunked("/c", b"abc", b"d" * 40),
        b"\r\n" + get("/d"),  # an empty line before a request line is allowed
        b"GET /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ]
    assert requests_in(pieces(RequestFraming(), b"".join(stream), step)) == stream


def test_framing_waits_for_the_end_of_a_head() -> None:
    framing = RequestFraming()
    head = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    assert framing.take(head[:-1]) == (0, False)
    assert framing.take(head + b"GET") == (len(head), True)


@pytest.mark.parametrize(
    "stream",
    [
        b"POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /" + b"a" * 70_000,
        b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello: https:// to an http port
        b"GET / HTTP/1.1\nHost: t\n",  # bare newlines: the parser decides, at once
        b"GET / HTTP/1.1\r\nHost: t\x00\r\n",
        b"A" * 40,
    ],
)
def test_framing_gives_up_on_what_is_not_http(stream: bytes) -> None:
    with pytest.raises(FramingError):
        RequestFraming().take(stream)


def test_records_carry_a_descriptor_and_its_bytes_in_order() -> None:
    left, right = socket.socketpair()
    pipes = [os.pipe() for _ in range(3)]
    try:
        payloads = [b"", b"GET / HTTP/1.1\r\n", b"x" * 300_000]  # the last is bigger than the buffer
        received: list[_handoff.Connection] = []
        receiver = _handoff.ConnectionReceiver(right)
        right.setblocking(False)
        sender = threading.Thread(
            target=lambda: [
                _handoff.send_connection(left, w, p) for (_, w), p in zip(pipes, payloads, strict=True)
            ]
        )
        sender.start()
        deadline = time.monotonic() + 10
        while len(received) < 3 and time.monotonic() < deadline:
            select.select([right], [], [], 0.1)
            received += receiver.receive()
        sender.join(10)
        assert [c.pending for c in received] == payloads
        for connection, (read_end, _) in zip(received, pipes, strict=True):
            os.write(connection.fd, b"!")  # the same pipe as the one sent
            assert os.read(read_end, 1) == b"!"
            os.close(connection.fd)
    finally:
        left.close()
        right.close()
        for read_end, write_end in pipes:
            os.close(read_end)
            os.close(write_end)


async def test_the_supervisor_finishes_a_record_its_worker_was_too_busy_to_take() -> None:
    supervisor_end, worker_end = socket.socketpair()
    supervisor_end.setblocking(False)
    held = _handoff.Held()
    read_end, write_end = os.pipe()
    try:
        records = [_handoff.Connection(os.dup(write_end), b"y" * 400_000) for _ in range(3)]
        held.forward(supervisor_end, records)  # more than the socket takes at once: the rest waits
        arrived: list[_handoff.Connection] = []
        stop = _handoff.listen(worker_end, arrived.extend)
        try:
            await until(lambda: len(arrived) == 3, what="the three records")
        finally:
            stop()
        assert [len(c.pending) for c in arrived] == [400_000] * 3
        _handoff._close_all([c.fd for c in arrived])
    finally:
        held.close()
        supervisor_end.close()
        worker_end.close()
        os.close(read_end)
        os.close(write_end)


def test_held_connections_leave_room_to_spawn() -> None:
    assert _handoff.over_budget(limit=1024, open_count=900, reserve=64) == 0
    assert _handoff.over_budget(limit=1024, open_count=1000, reserve=64) == 40
    assert _handoff.over_budget(limit=1024, open_count=1024, reserve=64) == 64


@pytest.mark.parametrize("name", ["h11", "httptools", "auto"])
def test_uvicorns_http_protocols_are_the_reloadable_kind(name: str) -> None:
    assert httpprotocols.reloadable(import_from_string(HTTP_PROTOCOLS[name])) is not None


@both_http
async def test_a_connection_adopted_while_draining_moves_on_unserved(http: str) -> None:
    served: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: Callable[..., Awaitable[None]]) -> None:
        served.append(str(scope["path"]))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    server = Server(uvicorn.Config(app, http=http, lifespan="off", log_config=None))
    assert await server.start_lifespan()
    client, accepted = socket.socketpair()
    handed: list[tuple[int, bytes]] = []

    def hand_off(fd: int, pending: bytes) -> bool:
        handed.append((os.dup(fd), pending))
        return True

    try:
        request = get("/adopted")
        server.adopt([_handoff.Connection(os.dup(accepted.fileno()), request)])
        async with asyncio.timeout(10):
            await server.drain(5.0, hand_off=hand_off)  # the adoption completes during the drain
        assert served == []
        assert [pending for _, pending in handed] == [request]
    finally:
        _handoff._close_all([fd for fd, _ in handed])
        client.close()
        accepted.close()


@pytest.mark.parametrize(
    "request_bytes",
    [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, b"GET / HTTP/1.1\nHost: x\n\n"],
    ids=["tls-hello", "bare-newlines"],
)
@both_http
async def test_bytes_that_never_end_a_head_are_answered_at_once(
    tmp_path: Path, http: str, request_bytes: bytes
) -> None:
    write(tmp_path / "main.py", APP)
    async with Reloader("main:app", app_dir=tmp_path, http=http) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(request_bytes)
            await writer.drain()
            async with asyncio.timeout(5):  # uvicorn answers at once; waiting for more bytes would hang
                answer = await reader.read(1024)
            assert answer.startswith(b"HTTP/1.1 ") or answer == b"", answer[:80]
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
