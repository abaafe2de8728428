"""What a generation starts ends with it; overlapping generations never surprise the app.

Each test runs real workers on a real socket. Processes are checked through /proc (Linux).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

import httpx
import pytest

from asgireload import Reloader

from .conftest import PLAIN_APP, until, write

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc (Linux)")

# A helper process that records its pid in a folder and then waits to be killed.
CHILD = (
    "import os, sys, time; open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close(); time.sleep(600)"
)

STARTS_CHILDREN = (
    PLAIN_APP
    + """
import pathlib, subprocess, sys

FOLDER = pathlib.Path(__file__).parent / "children" / BODY
FOLDER.mkdir(parents=True, exist_ok=True)
CHILD = {child!r}

def _start():
    # one child with Popen, one from a shell in the background, one that double-forks into
    # its own session (it leaves the process group)
    subprocess.Popen([sys.executable, "-c", CHILD, str(FOLDER)])
    subprocess.Popen(f"{sys.executable} -c {CHILD!r} {FOLDER} &", shell=True).wait()
    daemon = (
        "import os, sys\\n"
        "if os.fork() == 0:\\n"
        "    os.setsid()\\n"
        "    if os.fork() == 0:\\n"
        "        os.execv(sys.executable, [sys.executable, '-c', sys.argv[1], sys.argv[2]])\\n"
        "    os._exit(0)\\n"
        "os.wait()\\n"
    )
    subprocess.Popen([sys.executable, "-c", daemon, CHILD, str(FOLDER)]).wait()

_start()
"""
).replace("{child!r}", repr(CHILD))


def alive(pid: int) -> bool:
    """Running (not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            state = file.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def recorded(folder: Path) -> list[int]:
    return [int(p.name) for p in folder.iterdir()] if folder.is_dir() else []


def own_children() -> list[int]:
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as file:
            pids += [int(p) for p in file.read().split()]
    return [p for p in pids if alive(p)]


def our_processes() -> set[int]:
    """Every process this supervisor started (workers, a fork server's template, what the app
    started), whoever their parent is now: they carry a tag that begins with our pid."""
    needle = f"\0ASGIRELOAD_TAG={os.getpid()}-".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and alive(int(entry)):
            with contextlib.suppress(OSError), open(f"/proc/{entry}/environ", "rb") as file:
                if needle in b"\0" + file.read():
                    found.add(int(entry))
    return found


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def with_body(source: str, body: str) -> str:
    return source.replace('BODY = "v1"', f"BODY = {body!r}")


@linux_only
async def test_what_a_generation_starts_ends_with_it(tmp_path: Path) -> None:
    write(tmp_path / "main.py", STARTS_CHILDREN)
    children = tmp_path / "children"
    everything: list[int] = []
    try:
        async with Reloader("main:app", app_dir=tmp_path) as server:
            await until(lambda: len(recorded(children / "v1")) == 3, what="generation 1's three children")
            for number in range(2, 12):
                body = f"v{number}"
                previous = children / f"v{number - 1}"
                event = await server.edit(tmp_path / "main.py", with_body(STARTS_CHILDREN, body))
                assert event.outcome == "ready", server.output
                await until(lambda b=body: len(recorded(children / b)) == 3, what=f"{body}'s children")
                # the old generation's children, the detached one included, end with it
                await until(
                    lambda p=previous: not any(alive(pid) for pid in recorded(p)),
                    what=f"the children of {previous.name} to end",
                )
                everything += recorded(previous)
            everything += recorded(children / "v11")
        assert len(everything) == 33
        await until(lambda: not any(alive(pid) for pid in everything), what="every child to end at stop")
    finally:
        for pid in everything:
            if alive(pid):
                os.kill(pid, 9)


@linux_only
async def test_the_app_children_do_not_inherit_the_port(tmp_path: Path) -> None:
    # A child of the app must hold none of the worker's inherited sockets: after stop, the port
    # is free even while the child would still run.
    write(
        tmp_path / "main.py",
        PLAIN_APP
        + """
import pathlib, subprocess, sys
here = pathlib.Path(__file__).parent
child = subprocess.Popen(
    [sys.executable, "-c", "import os, time; print(sorted(os.listdir('/proc/self/fd')), flush=True); "
     "time.sleep(600)"],
    stdout=open(here / "fds.txt", "w"), close_fds=False,
)
""",
    )
    async with Reloader("main:app", app_dir=tmp_path) as server:
        port = server.port
        await until(lambda: (tmp_path / "fds.txt").read_text().strip() != "", what="the child's fd list")
        fds = ast.literal_eval((tmp_path / "fds.txt").read_text())  # the list the child printed
        # stdin, stdout, stderr, the fd of its own listing, and the output file: no socket
        assert len(fds) <= 5, fds
    probe = socket.socket()
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
    finally:
        probe.close()


@linux_only
async def test_no_worker_inherits_a_descriptor_the_embedding_program_left_inheritable(
    plain_app: Path,
) -> None:
    # A program embedding the Reloader may hold inheritable descriptors (a pipe for a child of
    # its own, a pty): they are its business, not the app's, whichever way a worker was started.
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    pipe = os.readlink(f"/proc/self/fd/{write_end}")
    try:
        async with Reloader("main:app", app_dir=plain_app) as server:
            await until(lambda: "standby" in server.pids, what="a standby")
            for role, pid in server.pids.items():
                held = set()
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
                assert pipe not in held, f"the {role} process holds the embedding program's pipe"
    finally:
        os.close(read_end)
        os.close(write_end)


@linux_only
async def test_file_descriptors_and_processes_stay_flat_across_reloads(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:

        async def settle() -> int:
            # the old generation has exited and been reaped: only the serving worker and the standby
            # (and the fork server's template, where workers are forked)
            await until(lambda: set(server.pids) - {"template"} == {"serving", "standby"}, what="the standby")
            await until(lambda: our_processes() == set(server.pids.values()), what="only those processes")
            return open_fds()

        # The fork server's first template is replaced once the app's imports are known; the old
        # one exits when the workers it forked have, a few reloads after the new one is ready.
        number = 1
        while number < 2 or (our_processes() != set(server.pids.values()) and number < 20):
            number += 1
            await server.edit(plain_app / "main.py", with_body(PLAIN_APP, f"v{number}"))
        assert (await client.get(server.url)).text == f"v{number}"  # its connection counts both times
        after_first = await settle()
        for later in range(number + 1, 52):
            event = await server.edit(plain_app / "main.py", with_body(PLAIN_APP, f"v{later}"))
            assert event.outcome == "ready"
        response = await client.get(server.url)
        assert response.text == "v51"
        assert await settle() == after_first


LOCKING_APP = (
    PLAIN_APP.replace(
        """            message = await receive()
            await send({"type": message["type"] + ".complete"})""",
        """            message = await receive()
            if message["type"] == "lifespan.startup":
                _take_the_lock()
            await send({"type": message["type"] + ".complete"})""",
    )
    + """
import fcntl, pathlib, time
HERE = pathlib.Path(__file__).parent
_lock = None

def _take_the_lock():
    global _lock
    _lock = open(HERE / "app.lock", "w")
    fcntl.flock(_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails if another generation holds it
    (HERE / f"locked-{BODY}").write_text("")
    deadline = time.monotonic() + 20
    while BODY == "slow" and not (HERE / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
"""
)


async def test_sequential_never_runs_two_generations_at_once(tmp_path: Path) -> None:
    write(tmp_path / "main.py", LOCKING_APP)
    async with Reloader("main:app", app_dir=tmp_path, sequential=True) as server:
        events = server.events()
        # generation 2 takes the lock in its lifespan start-up and stays there...
        target = server.generation + 1
        write(tmp_path / "main.py", with_body(LOCKING_APP, "slow"))
        await until(lambda: (tmp_path / "locked-slow").exists(), what="the slow generation to hold the lock")
        # ...when a newer save supersedes it: it must be gone before generation 3 starts
        write(tmp_path / "main.py", with_body(LOCKING_APP, "v3"))
        event = await server.wait_for_generation(target + 1)
        assert event.outcome == "ready", (event.summary, server.output)
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.url)).text == "v3"
        await events.aclose()


EXTRA_PORT_APP = (
    PLAIN_APP
    + """
import os, socket
# a metrics server's port, bound at import (the prometheus_client.start_http_server pattern)
_metrics = socket.socket()
_metrics.bind(("127.0.0.1", int(os.environ["METRICS_PORT"])))
_metrics.listen()
"""
)

SQLITE_APP = (
    PLAIN_APP
    + """
import pathlib, sqlite3
_db = sqlite3.connect(pathlib.Path(__file__).parent / "app.db", timeout=0.2, isolation_level=None)
_db.execute("PRAGMA locking_mode=EXCLUSIVE")
_db.execute("CREATE TABLE IF NOT EXISTS t (x)")
_db.execute("INSERT INTO t VALUES (1)")  # the first write takes the lock, held until exit
"""
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("source", [EXTRA_PORT_APP, SQLITE_APP], ids=["extra-port", "sqlite-exclusive"])
async def test_an_app_that_holds_something_exclusively_reloads(
    tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("METRICS_PORT", str(free_port()))
    write(tmp_path / "main.py", source)
    caplog.set_level(logging.DEBUG, logger="asgireload")
    async with Reloader("main:app", app_dir=tmp_path) as server, httpx.AsyncClient() as client:
        for number in range(2, 7):
            event = await server.edit(tmp_path / "main.py", with_body(source, f"v{number}"))
            assert event.outcome == "ready", (event.summary, server.output)
            response = await client.get(server.url)
            assert (response.status_code, response.text) == (200, f"v{number}")
    said = [r.getMessage() for r in caplog.records]
    assert sum("exclusively" in line for line in said) == 1, said
    assert sum("trying once more" in line for line in said) == 1, said  # later reloads are sequential


async def test_keep_last_good_names_sequential_when_the_old_generation_holds_the_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("METRICS_PORT", str(free_port()))
    write(tmp_path / "main.py", EXTRA_PORT_APP)
    async with Reloader("main:app", app_dir=tmp_path, keep_last_good=True) as server:
        event = await server.edit(tmp_path / "main.py", with_body(EXTRA_PORT_APP, "v2"))
        assert event.outcome == "failed"
        assert "Address already in use" in event.summary
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.url)).text == "v1"
    assert any("--sequential" in r.getMessage() for r in caplog.records)


SLOW_IMPORT = (
    PLAIN_APP
    + """
import pathlib, time
HERE = pathlib.Path(__file__).parent
if BODY == "superseded":
    (HERE / "importing").write_text("")
    deadline = time.monotonic() + 20
    while not (HERE / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
"""
)


async def test_a_superseded_generation_never_serves(tmp_path: Path) -> None:
    write(tmp_path / "main.py", SLOW_IMPORT)
    async with Reloader("main:app", app_dir=tmp_path) as server:
        waiting = asyncio.create_task(server.edit(tmp_path / "main.py", with_body(SLOW_IMPORT, "superseded")))
        await until(lambda: (tmp_path / "importing").exists(), what="the superseded import to start")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        event = await server.edit(tmp_path / "main.py", with_body(SLOW_IMPORT, "v3"))
        assert event.outcome == "ready"
        (tmp_path / "go").write_text("")  # the superseded import may finish now: it must not serve
        bodies: set[str] = set()
        async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for _ in range(2000):  # a fresh connection every time: each one is a new accept
                bodies.add((await client.get(server.url)).text)
        assert bodies == {"v3"}


async def test_a_crash_is_described_in_plain_words(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server:
        event = await server.edit(plain_app / "main.py", PLAIN_APP + "\nimport os\nos._exit(3)\n")
        assert event.outcome == "failed"
        assert event.summary.startswith("The app's worker process exited with code 3"), event.summary
        async with httpx.AsyncClient() as client:
            page = (await client.get(server.url, headers={"accept": "text/plain"})).text
        assert "Worker exit" not in page
        assert "exited with code 3" in page


STREAMING = (
    PLAIN_APP.replace(
        '    if scope["type"] != "http":\n        return\n',
        '    if scope["type"] != "http":\n        return\n'
        '    if scope["path"] == "/stream":\n'
        "        await _stream(send)\n"
        "        return\n",
    )
    + """
import asyncio, pathlib
HERE = pathlib.Path(__file__).parent

async def _stream(send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"open\\n", "more_body": True})
    deadline = asyncio.get_running_loop().time() + 60
    while not (HERE / "end-stream").exists() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    await send({"type": "http.response.body", "body": b"done\\n"})
"""
)


async def test_a_code_error_is_shown_at_once_while_a_stream_keeps_the_old_generation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A SyntaxError is no conflict over a resource: it is not retried after the old generation,
    # which an open stream would keep draining for up to drain_timeout.
    caplog.set_level(logging.INFO, logger="asgireload")
    write(tmp_path / "main.py", STREAMING)
    async with Reloader("main:app", app_dir=tmp_path, drain_timeout=60) as server:
        try:
            async with httpx.AsyncClient() as client, client.stream("GET", server.url + "/stream") as stream:
                chunks = stream.aiter_raw()
                assert await anext(chunks) == b"open\n"
                event = await server.edit(tmp_path / "main.py", STREAMING + "\ndef broken(:\n", timeout=10)
                assert event.outcome == "failed"
                assert "SyntaxError" in event.summary
                async with httpx.AsyncClient() as other:
                    assert (await other.get(server.url)).status_code == 500  # the page, not a wait
                (tmp_path / "end-stream").write_text("")
                assert b"".join([piece async for piece in chunks]) == b"done\n"  # the stream finished
        finally:
            (tmp_path / "end-stream").write_text("")  # so a failure does not wait out the drain
    assert not any("trying once more" in r.getMessage() for r in caplog.records)


async def test_a_worker_that_cannot_be_started_is_a_failure_then_a_retry(plain_app: Path) -> None:
    import resource

    async with Reloader("main:app", app_dir=plain_app, standby=False) as server:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = server.generation + 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + 2, hard))  # no room for a worker
        try:
            event = await server.edit(plain_app / "main.py", with_body(PLAIN_APP, "v2"))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert event.generation >= target
        assert event.outcome == "failed"
        assert "could not start a worker process" in event.summary
        # the backoff timer tries again, now with descriptors to spare
        event = await server.wait_for_generation(event.generation + 1)
        assert event.outcome == "ready", server.output[-1000:]
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.url)).text == "v2"
