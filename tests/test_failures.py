"""When the app breaks: the error response, recovery, crash loops and a hostile control channel."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
from pathlib import Path

import httpx
import pytest
import websockets

from asgireload import Reloader

from .conftest import PLAIN_APP, until, write

TEXT = {"accept": "text/plain"}
HTML = {"accept": "text/html,application/xhtml+xml"}
RECOVER = 5.0  # generous for a loaded CI machine; recovery is typically ~50 ms


def with_body(body: str) -> str:
    return PLAIN_APP.replace('BODY = "v1"', f"BODY = {body!r}")


async def error_response(client: httpx.AsyncClient, url: str, headers: dict[str, str] = TEXT) -> str:
    response = await client.get(url, headers=headers)
    assert response.status_code == 500, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.text


async def break_then_fix(tmp_path: Path, server: Reloader, broken: dict[str, str], expect: list[str]) -> None:
    """Save broken files, see the error page name the problem, restore, see the app again."""
    originals = {name: (tmp_path / name).read_text() for name in broken if (tmp_path / name).exists()}
    async with httpx.AsyncClient() as client:
        target = server.generation + 1
        for name, source in broken.items():
            write(tmp_path / name, source)
        event = await server.wait_for_generation(target, timeout=RECOVER)
        assert event.outcome == "failed"
        assert server.state == "failed"
        text = await error_response(client, server.url)
        for needle in expect:
            assert needle in text
        target = server.generation + 1
        for name, source in originals.items():
            write(tmp_path / name, source)
        event = await server.wait_for_generation(target, timeout=RECOVER)
        assert event.outcome == "ready", event
        response = await client.get(server.url)
        assert (response.status_code, response.text) == (200, "v1")


async def test_a_syntax_error_shows_the_file_and_line_then_recovers(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server:
        broken = with_body("v1") + "\ndef broken(:\n"
        await break_then_fix(
            plain_app, server, {"main.py": broken}, ["SyntaxError", 'main.py", line 18', "def broken(:"]
        )


async def test_an_indentation_error(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server:
        broken = with_body("v1") + "\nif True:\nx = 1\n"
        await break_then_fix(plain_app, server, {"main.py": broken}, ["IndentationError"])


async def test_an_exception_while_importing_another_module(tmp_path: Path) -> None:
    write(tmp_path / "helper.py", "VALUE = 1\n")
    write(tmp_path / "main.py", "import helper\n" + PLAIN_APP)
    async with Reloader("main:app", app_dir=tmp_path) as server:
        broken = {"helper.py": "VALUE = 1\nraise RuntimeError('the database is down')\n"}
        await break_then_fix(tmp_path, server, broken, ["RuntimeError", "the database is down", "helper.py"])


async def test_the_attribute_missing_after_an_edit(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server:
        broken = with_body("v1").replace("async def app(", "async def application(")
        await break_then_fix(plain_app, server, {"main.py": broken}, ["has no attribute 'app'"])


FACTORY_APP = PLAIN_APP + "\n\ndef create_app():\n    return app\n"


async def test_a_factory_that_raises(tmp_path: Path) -> None:
    write(tmp_path / "main.py", FACTORY_APP)
    async with Reloader("main:create_app", app_dir=tmp_path, factory=True) as server:
        broken = FACTORY_APP.replace("    return app", "    raise ValueError('no settings')")
        await break_then_fix(tmp_path, server, {"main.py": broken}, ["ValueError", "no settings"])


async def test_lifespan_start_up_that_raises(tmp_path: Path) -> None:
    write(tmp_path / "main.py", PLAIN_APP)
    async with Reloader("main:app", app_dir=tmp_path, lifespan="on") as server:
        broken = PLAIN_APP.replace(
            "            message = await receive()\n",
            "            message = await receive()\n"
            "            if message['type'] == 'lifespan.startup':\n"
            "                raise ConnectionError('cache unreachable')\n",
        )
        await break_then_fix(tmp_path, server, {"main.py": broken}, ["ConnectionError", "cache unreachable"])


async def test_lifespan_start_up_that_reports_failure(tmp_path: Path) -> None:
    write(tmp_path / "main.py", PLAIN_APP)
    async with Reloader("main:app", app_dir=tmp_path) as server:
        broken = PLAIN_APP.replace(
            '            await send({"type": message["type"] + ".complete"})',
            '            if message["type"] == "lifespan.startup":\n'
            '                failed = {"type": "lifespan.startup.failed", "message": "migrations pending"}\n'
            "                await send(failed)\n"
            "                return\n"
            '            await send({"type": message["type"] + ".complete"})',
        )
        await break_then_fix(tmp_path, server, {"main.py": broken}, ["migrations pending"])


@pytest.mark.parametrize(
    ("death", "reason"),
    [("os._exit(3)", "exited with code 3"), ("os.kill(os.getpid(), signal.SIGSEGV)", "SIGSEGV")],
)
async def test_a_worker_that_dies_before_ready(plain_app: Path, death: str, reason: str) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server:
        broken = "import os, signal, sys\nprint('dying now', file=sys.stderr, flush=True)\n" + death + "\n"
        await break_then_fix(plain_app, server, {"main.py": broken + with_body("v1")}, [reason])
        assert "dying now" in server.output  # the crash's own output is shown


DIE_APP = PLAIN_APP.replace(
    'if scope["type"] != "http":\n        return',
    'if scope["type"] != "http":\n        return\n    if scope["path"] == "/die":\n        os._exit(1)',
)


async def test_a_worker_that_dies_while_serving_is_restarted(tmp_path: Path) -> None:
    write(tmp_path / "main.py", DIE_APP)
    async with Reloader("main:app", app_dir=tmp_path) as server, httpx.AsyncClient() as client:
        target = server.generation + 1
        with pytest.raises(httpx.HTTPError):
            await client.get(server.url + "/die")
        event = await server.wait_for_generation(target, timeout=RECOVER)
        assert event.outcome == "ready"  # no file changed: the restart came from the backoff timer
        response = await client.get(server.url)
        assert (response.status_code, response.text) == (200, "v1")


async def test_a_crash_loop_backs_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "main.py", "import os\nos._exit(1)\n")
    caplog.set_level(logging.INFO, logger="asgireload")
    async with Reloader("main:app", app_dir=tmp_path) as server, httpx.AsyncClient() as client:
        assert server.state == "failed"
        text = await error_response(client, server.url)
        assert "exited with code 1" in text
        failures = 0
        cpu_before = sum(os.times()[:2])
        window = 2.5

        async def collect() -> None:
            nonlocal failures
            async for event in server.events():
                assert event.outcome == "failed"
                failures += 1

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(collect(), window)
        cpu = sum(os.times()[:2]) - cpu_before
        # delays 0.1, 0.2, 0.4, 0.8, 1.6 s: a handful of restarts, never a hot loop. The gaps
        # between failures also hold each worker's start-up, which a loaded machine stretches,
        # so the doubling is read from what the supervisor announced, not from the clock.
        assert 2 <= failures <= 6, failures
        delays = [float(x) for x in re.findall(r"Restarting main:app in ([\d.]+) s", caplog.text)]
        assert len(delays) >= failures, caplog.text
        assert all(later == min(earlier * 2, 5.0) for earlier, later in itertools.pairwise(delays)), delays
        assert cpu < window * 0.5, f"the supervisor used {cpu:.2f} s of CPU in {window} s"


async def test_the_file_a_syntax_error_names_is_watched_though_it_never_imported(tmp_path: Path) -> None:
    write(tmp_path / "helper.py", "WORD = 'v1'\n")
    write(tmp_path / "main.py", PLAIN_APP.replace('BODY = "v1"', "from helper import WORD as BODY"))
    write(tmp_path / "helper.py", "WORD = (\n")  # broken before the first start
    async with Reloader("main:app", app_dir=tmp_path) as server, httpx.AsyncClient() as client:
        assert server.state == "failed"
        assert "helper.py" in await error_response(client, server.url)
        assert server.is_watching(tmp_path / "helper.py")
        target = server.generation + 1
        write(tmp_path / "helper.py", "WORD = 'v1'\n")
        assert (await server.wait_for_generation(target, timeout=RECOVER)).outcome == "ready"
        assert (await client.get(server.url)).text == "v1"


async def test_the_error_page_escapes_what_it_shows(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        target = server.generation + 1
        write(plain_app / "main.py", "raise RuntimeError('<script>alert(1)</script>')\n")
        await server.wait_for_generation(target, timeout=RECOVER)
        page = await error_response(client, server.url, HTML)
        assert "<script>alert(1)</script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


async def test_a_websocket_handshake_is_refused_while_broken(plain_app: Path) -> None:
    write(plain_app / "main.py", "raise RuntimeError('broken on purpose')\n")
    async with Reloader("main:app", app_dir=plain_app) as server:
        url = server.url.replace("http://", "ws://") + "/ws"
        async with websockets.connect(url) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(10):
                    await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1011
        assert "broken on purpose" in closed.value.rcvd.reason


async def test_a_non_loopback_bind_hides_tracebacks(
    plain_app: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asgireload")
    write(plain_app / "main.py", "raise RuntimeError('secret detail')\n")
    async with Reloader("main:app", app_dir=plain_app, host="0.0.0.0") as server:
        async with httpx.AsyncClient() as client:
            text = await error_response(client, f"http://127.0.0.1:{server.port}/")
        assert "secret detail" not in text
        assert "main.py" not in text
        assert "RuntimeError" in text
    assert any("--show-errors" in r.getMessage() for r in caplog.records)


async def test_the_failure_replaces_a_healthy_generation_by_default(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        await server.edit(plain_app / "main.py", "raise RuntimeError('new bug')\n")
        assert "new bug" in await error_response(client, server.url)


async def test_keep_last_good_keeps_the_healthy_generation(
    plain_app: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asgireload")
    reloader = Reloader("main:app", app_dir=plain_app, keep_last_good=True)
    async with reloader as server, httpx.AsyncClient() as client:
        event = await server.edit(plain_app / "main.py", "raise RuntimeError('new bug')\n")
        assert event.outcome == "failed"
        response = await client.get(server.url)
        assert (response.status_code, response.text) == (200, "v1")
        event = await server.edit(plain_app / "main.py", with_body("v2"))
        assert event.outcome == "ready"
        assert (await client.get(server.url)).text == "v2"
    assert any("new bug" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


async def test_the_traceback_is_logged_once_per_failure(
    plain_app: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asgireload")
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        await server.edit(plain_app / "main.py", "raise RuntimeError('logged once')\n")
        for _ in range(5):
            await error_response(client, server.url)
    logged = [r for r in caplog.records if "logged once" in r.getMessage()]
    assert len(logged) == 1


async def test_a_worker_stuck_at_import_is_reported_and_does_not_block_a_newer_edit(
    plain_app: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asgireload")
    stuck = "import time\ntime.sleep(60)\n" + with_body("stuck")
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        write(plain_app / "main.py", stuck)
        await until(
            lambda: any("still starting" in r.getMessage() for r in caplog.records),
            timeout=15,
            what="the still-starting warning",
        )
        assert any("importing main:app" in r.getMessage() for r in caplog.records)
        assert (await client.get(server.url)).text == "v1"  # the old generation serves meanwhile
        event = await server.edit(plain_app / "main.py", with_body("v2"))
        assert event.outcome == "ready"
        assert (await client.get(server.url)).text == "v2"


HOSTILE = """
import os, sys, time, json

def _hostile():
    if sys.argv[:1] != ["-m"] or not sys.argv[-1].isdigit():
        return  # not a worker (python -P -m asgireload._worker CONTROL_FD)
    try:
        os.close(os.open({marker!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return  # only the first worker misbehaves
    fd = int(sys.argv[-1])
    hello = b'{{"type":"hello","pid":%d,"protocol":2}}\\n' % os.getpid()
    mode = {mode!r}
    if mode == "malformed":
        os.write(fd, b"this is not json\\n")
    elif mode == "before-hello":
        os.write(fd, b'{{"type":"ready","generation":1}}\\n')
    elif mode == "unknown-type":
        os.write(fd, hello + b'{{"type":"boom"}}\\n')
    elif mode == "bad-entry":
        os.write(fd, hello + b'{{"type":"files","files":[["a", "b", 3, 4]],"modules":[]}}\\n')
    elif mode == "long-line":
        os.write(fd, hello)
        try:
            for _ in range(20):
                os.write(fd, b"x" * 65536)
        except OSError:
            pass
    elif mode == "flood":
        os.write(fd, hello)
        try:
            for _ in range(20000):
                os.write(fd, b'{{"type":"files","files":[],"modules":[]}}\\n')
        except OSError:
            pass
    elif mode == "close-early":
        os.write(fd, hello)
        os.close(fd)
    time.sleep(60)  # the supervisor must kill us

_hostile()
"""


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("malformed", "not JSON"),
        ("before-hello", "before 'hello'"),
        ("unknown-type", "unknown message type"),
        ("bad-entry", "malformed file entry"),
        ("long-line", "longer than"),
        ("flood", "messages in a second"),
        ("close-early", "closed its control channel"),
    ],
)
async def test_a_hostile_control_channel_ends_that_worker_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mode: str, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="asgireload")
    site = tmp_path / "site"
    write(site / "sitecustomize.py", HOSTILE.format(marker=str(tmp_path / "hostile-once"), mode=mode))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    write(tmp_path / "app" / "main.py", PLAIN_APP)
    # spawned workers: the hostile code runs at an interpreter's start-up, which a forked one skips
    async with Reloader("main:app", app_dir=tmp_path / "app", fork=False) as server:
        assert (tmp_path / "hostile-once").exists()
        if server.state != "ready":  # generation 1 was the hostile one; the backoff restarts it
            event = await server.wait_for_generation(2, timeout=RECOVER)
            assert event.outcome == "ready"
        async with httpx.AsyncClient() as client:
            response = await client.get(server.url)
            assert (response.status_code, response.text) == (200, "v1")
    assert any(reason in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def _listening_sockets() -> tuple[dict[str, int], set[str]]:
    """inode -> port of listening TCP sockets, and inodes of listening Unix sockets."""
    tcp = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    tcp[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    with open("/proc/net/unix") as lines:
        unix = {f.split()[6] for f in list(lines)[1:] if int(f.split()[3], 16) & 0x10000}
    return tcp, unix


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with os.scandir(f"/proc/{pid}/fd") as entries:
        for entry in entries:
            try:
                target = os.readlink(entry.path)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.exists("/proc/net/unix"), reason="reads Linux's /proc")
async def test_the_only_listening_socket_is_the_apps(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server:
        ours = _socket_inodes(os.getpid())
        for child in _children(os.getpid()):
            ours |= _socket_inodes(child)
        listening_tcp, listening_unix = _listening_sockets()
        assert [port for inode, port in listening_tcp.items() if inode in ours] == [server.port]
        assert not (listening_unix & ours)
