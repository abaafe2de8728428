"""End to end: real worker processes, a real socket on loopback, real HTTP and websockets."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest
import websockets

from asgireload import Reloader
from asgireload.reloader import write_like_an_editor

from .conftest import PLAIN_APP, until, write


def with_body(body: str) -> str:
    return PLAIN_APP.replace('BODY = "v1"', f"BODY = {body!r}")


async def body(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.text


async def test_an_edit_changes_the_response(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        assert server.state == "ready"
        assert await body(client, server.url) == "v1"
        event = await server.edit(plain_app / "main.py", with_body("v2"))
        assert event.outcome == "ready"
        assert event.changed == (str(plain_app / "main.py"),)
        # the same keep-alive client: its connection was handed to the new generation
        assert await body(client, server.url) == "v2"


async def test_a_write_in_place_is_seen(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        target = server.generation + 1
        (plain_app / "main.py").write_text(with_body("v2"))  # same size, same inode
        await server.wait_for_generation(target)
        assert await body(client, server.url) == "v2"


async def test_an_edit_right_after_start_up_is_seen(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        (plain_app / "main.py").write_text(with_body("v2"))
        await server.wait_for_generation(2)
        assert await body(client, server.url) == "v2"


async def test_an_edit_made_while_the_worker_imports_is_never_lost(tmp_path: Path) -> None:
    # The app's start-up waits for a "go" file, so the edit lands after main.py was read
    # but before generation 1 is ready: the worker's report must reveal it.
    write(
        tmp_path / "main.py",
        PLAIN_APP
        + """
import pathlib, time
here = pathlib.Path(__file__).parent
(here / "importing").write_text("")
deadline = time.monotonic() + 20
while not (here / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.005)
""",
    )
    reloader = Reloader("main:app", app_dir=tmp_path)
    entering = asyncio.create_task(reloader.__aenter__())
    try:
        await until(lambda: (tmp_path / "importing").exists(), what="generation 1 to import main.py")
        source = (tmp_path / "main.py").read_text()
        (tmp_path / "main.py").write_text(source.replace('BODY = "v1"', 'BODY = "v2"'))
        (tmp_path / "go").write_text("")
        await entering
        event = await reloader.wait_for_generation(2)
        assert event.outcome == "ready"
        async with httpx.AsyncClient() as client:
            assert await body(client, reloader.url) == "v2"
    finally:
        if not entering.done():
            entering.cancel()
        await reloader.__aexit__(None, None, None)


async def test_delete_then_recreate(tmp_path: Path) -> None:
    write(tmp_path / "words.py", 'WORD = "one"\n')
    write(tmp_path / "main.py", PLAIN_APP.replace('BODY = "v1"', "from words import WORD as BODY"))
    async with Reloader("main:app", app_dir=tmp_path) as server, httpx.AsyncClient() as client:
        assert await body(client, server.url) == "one"
        target = server.generation + 1
        (tmp_path / "words.py").unlink()
        failed = await server.wait_for_generation(target)
        assert failed.outcome == "failed"
        assert "words" in failed.summary
        target = server.generation + 1
        write(tmp_path / "words.py", 'WORD = "two"\n')
        event = await server.wait_for_generation(target)
        assert event.outcome == "ready"
        assert await body(client, server.url) == "two"


async def test_a_module_imported_lazily_is_watched(tmp_path: Path) -> None:
    write(tmp_path / "lazy.py", 'VALUE = "lazy one"\n')
    write(
        tmp_path / "main.py",
        PLAIN_APP.replace(
            'await send({"type": "http.response.body", "body": BODY.encode()})',
            'import lazy\n    await send({"type": "http.response.body", "body": lazy.VALUE.encode()})',
        ),
    )
    async with Reloader("main:app", app_dir=tmp_path) as server, httpx.AsyncClient() as client:
        assert not server.is_watching(tmp_path / "lazy.py")
        assert await body(client, server.url) == "lazy one"
        await until(
            lambda: server.is_watching(tmp_path / "lazy.py"), timeout=2.0, what="lazy.py to be watched"
        )
        await server.edit(tmp_path / "lazy.py", 'VALUE = "lazy two"\n')
        assert await body(client, server.url) == "lazy two"


async def test_a_burst_of_200_files_makes_one_reload(tmp_path: Path) -> None:
    for i in range(200):
        write(tmp_path / "mods" / f"m{i:03}.py", "VALUE = 1\n")
    write(tmp_path / "mods" / "__init__.py", "")
    imports = "\n".join(f"from mods.m{i:03} import VALUE as V{i}" for i in range(200))
    total = " + ".join(f"V{i}" for i in range(200))
    write(tmp_path / "main.py", PLAIN_APP.replace('BODY = "v1"', f"{imports}\nBODY = str({total})"))
    async with Reloader("main:app", app_dir=tmp_path) as server, httpx.AsyncClient() as client:
        assert await body(client, server.url) == "200"
        target = server.generation + 1
        for i in range(200):  # like a checkout: every file rewritten, one after another
            write_like_an_editor(tmp_path / "mods" / f"m{i:03}.py", "VALUE = 2\n")
        event = await server.wait_for_generation(target)
        assert event.outcome == "ready"
        assert len(event.changed) == 200
        assert await body(client, server.url) == "400"
        assert server.generation == target  # one generation, not two


SLOW_APP = PLAIN_APP.replace(
    'if scope["type"] != "http":\n        return',
    """if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        print("slow request started", flush=True)
        import asyncio
        await asyncio.sleep(1.5)
        body = ("slow " + BODY).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return""",
)


async def test_a_slow_request_in_flight_finishes_across_a_reload(tmp_path: Path) -> None:
    write(tmp_path / "main.py", SLOW_APP)
    async with Reloader("main:app", app_dir=tmp_path) as server, httpx.AsyncClient(timeout=20) as client:
        slow = asyncio.create_task(client.get(server.url + "/slow"))
        await until(lambda: "slow request started" in server.output, what="the slow request to start")
        await server.edit(tmp_path / "main.py", SLOW_APP.replace('BODY = "v1"', 'BODY = "v2"'))
        assert await body(client, server.url) == "v2"
        response = await slow
        assert (response.status_code, response.text) == (200, "slow v1")


async def test_a_looping_client_sees_no_error_through_ten_reloads(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server:
        stop = asyncio.Event()
        errors: list[str] = []
        seen: list[str] = []

        async def loop_requests() -> None:
            async with httpx.AsyncClient(timeout=10) as client:
                for _ in range(100_000):  # bounded; stops when the reloads are done
                    if stop.is_set():
                        return
                    try:
                        response = await client.get(server.url)
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                        continue
                    if response.status_code != 200:
                        errors.append(f"status {response.status_code}")
                    seen.append(response.text)

        clients = [asyncio.create_task(loop_requests()) for _ in range(2)]
        try:
            for n in range(2, 12):
                await until(lambda: len(seen) > 0, what="a response")
                event = await server.edit(plain_app / "main.py", with_body(f"v{n}"))
                assert event.outcome == "ready"
                count = len(seen)
                await until(lambda count=count: len(seen) > count + 2, what="more responses")  # type: ignore[misc]
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert errors == []
        assert seen[-1] == "v11"
        assert len(set(seen)) >= 5  # the clients really saw the reloads happen


WS_APP = PLAIN_APP.replace(
    'if scope["type"] != "http":\n        return',
    """if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    if scope["type"] != "http":
        return""",
)


async def test_an_open_websocket_is_closed_with_1012(tmp_path: Path) -> None:
    write(tmp_path / "main.py", WS_APP)
    async with Reloader("main:app", app_dir=tmp_path) as server:
        url = server.url.replace("http://", "ws://") + "/ws"
        async with websockets.connect(url) as ws:
            await server.edit(tmp_path / "main.py", WS_APP.replace('BODY = "v1"', 'BODY = "v2"'))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(10):
                    await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1012


LIFESPAN_APP = PLAIN_APP.replace(
    """    if scope["type"] == "lifespan":
        while True:
            message = await receive()""",
    """    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            with open(os.path.join(os.path.dirname(__file__), "lifespan.log"), "a") as log:
                log.write(f"{message['type']} {os.getpid()}\\n")""",
)


async def test_lifespan_runs_once_per_generation(tmp_path: Path) -> None:
    write(tmp_path / "main.py", LIFESPAN_APP)
    async with Reloader("main:app", app_dir=tmp_path) as server:
        await server.edit(tmp_path / "main.py", LIFESPAN_APP.replace('BODY = "v1"', 'BODY = "v2"'))
        await server.edit(tmp_path / "main.py", LIFESPAN_APP.replace('BODY = "v1"', 'BODY = "v3"'))
    lines = (tmp_path / "lifespan.log").read_text().split()
    events = list(zip(lines[::2], lines[1::2], strict=True))
    pids = {pid for _, pid in events}
    assert len(pids) == 3
    for pid in pids:
        assert [kind for kind, p in events if p == pid] == ["lifespan.startup", "lifespan.shutdown"], (
            server.output
        )


async def test_reload_include_watches_templates(tmp_path: Path) -> None:
    write(tmp_path / "templates" / "index.html", "<p>one</p>")
    write(
        tmp_path / "main.py",
        PLAIN_APP.replace(
            'BODY = "v1"',
            'BODY = open(os.path.join(os.path.dirname(__file__), "templates", "index.html")).read()',
        ),
    )
    async with (
        Reloader("main:app", app_dir=tmp_path, reload_includes=("*.html",)) as server,
        httpx.AsyncClient() as client,
    ):
        assert await body(client, server.url) == "<p>one</p>"
        await until(lambda: server.is_watching(tmp_path / "templates" / "index.html"), what="the template")
        await server.edit(tmp_path / "templates" / "index.html", "<p>two</p>")
        assert await body(client, server.url) == "<p>two</p>"


async def test_installed_packages_and_virtualenvs_are_not_watched(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    write(venv / "pyvenv.cfg", "home = /usr/bin\n")
    package = write(venv / "lib" / "python3" / "site-packages" / "fakepkg.py", "NAME = 'fake'\n")
    write(
        tmp_path / "main.py",
        PLAIN_APP.replace(
            'BODY = "v1"',
            f"import sys\nsys.path.insert(0, {str(package.parent)!r})\n"
            "import fakepkg, httpx\nBODY = fakepkg.NAME",
        ),
    )
    async with Reloader("main:app", app_dir=tmp_path) as server, httpx.AsyncClient() as client:
        assert await body(client, server.url) == "fake"
        assert server.is_watching(tmp_path / "main.py")
        assert not server.is_watching(package)
        assert not server.is_watching(httpx.__file__)
        assert not server.is_watching(os.__file__)


async def test_a_changed_env_file_reaches_the_new_generation(tmp_path: Path) -> None:
    write(tmp_path / ".env", "GREETING=one\n")
    write(tmp_path / "main.py", PLAIN_APP.replace('BODY = "v1"', 'BODY = os.environ["GREETING"]'))
    reloader = Reloader("main:app", app_dir=tmp_path, env_file=tmp_path / ".env")
    async with reloader as server, httpx.AsyncClient() as client:
        assert await body(client, server.url) == "one"
        await server.edit(tmp_path / ".env", "GREETING=two\n")
        assert await body(client, server.url) == "two"


async def test_sequential_mode_reloads_without_errors(plain_app: Path) -> None:
    reloader = Reloader("main:app", app_dir=plain_app, sequential=True)
    async with reloader as server, httpx.AsyncClient() as client:
        assert await body(client, server.url) == "v1"
        await server.edit(plain_app / "main.py", with_body("v2"))
        assert await body(client, server.url) == "v2"
        await server.edit(plain_app / "main.py", with_body("v3"))
        assert await body(client, server.url) == "v3"


async def test_a_hundred_idle_keep_alive_connections_move_to_the_new_generation(plain_app: Path) -> None:
    async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
        )
        return (await reader.readexactly(length)).decode()

    sized = PLAIN_APP.replace('[(b"content-type", b"text/plain")]', '[(b"content-length", b"2")]')
    write(plain_app / "main.py", sized)
    async with Reloader("main:app", app_dir=plain_app) as server:
        connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(100)]
        try:
            async with asyncio.timeout(20):
                assert {await request(r, w) for r, w in connections} == {"v1"}
                await server.edit(plain_app / "main.py", sized.replace('BODY = "v1"', 'BODY = "v2"'))
                # the same connections, now served by the new generation: none was closed
                assert [await request(r, w) for r, w in connections] == ["v2"] * 100
        finally:
            for _, writer in connections:
                writer.close()
            await asyncio.gather(*(w.wait_closed() for _, w in connections), return_exceptions=True)


async def test_a_broken_env_file_is_a_failed_generation_until_fixed(tmp_path: Path) -> None:
    write(tmp_path / ".env", "GREETING=one\n")
    write(tmp_path / "main.py", PLAIN_APP.replace('BODY = "v1"', 'BODY = os.environ["GREETING"]'))
    reloader = Reloader("main:app", app_dir=tmp_path, env_file=tmp_path / ".env")
    async with reloader as server, httpx.AsyncClient() as client:
        event = await server.edit(tmp_path / ".env", "GREETING one\n")
        assert event.outcome == "failed"
        response = await client.get(server.url, headers={"accept": "text/plain"})
        assert response.status_code == 500
        assert "line 1" in response.text
        event = await server.edit(tmp_path / ".env", "GREETING=two\n")
        assert event.outcome == "ready"
        assert await body(client, server.url) == "two"


async def test_sequential_mode_never_runs_two_generations_at_once(tmp_path: Path) -> None:
    write(tmp_path / "main.py", LIFESPAN_APP)
    async with Reloader("main:app", app_dir=tmp_path, sequential=True) as server:
        target = server.generation + 1
        write_like_an_editor(tmp_path / "main.py", LIFESPAN_APP.replace('BODY = "v1"', 'BODY = "v2"'))
        await server.wait_for_generation(target)
        write_like_an_editor(tmp_path / "main.py", LIFESPAN_APP.replace('BODY = "v1"', 'BODY = "v3"'))
        write_like_an_editor(tmp_path / "main.py", LIFESPAN_APP.replace('BODY = "v1"', 'BODY = "v4"'))
        await until(lambda: server.state == "ready" and server.generation > target, what="the last edit")
        await server.wait_for_generation(server.generation)
        async with httpx.AsyncClient() as client:
            assert await body(client, server.url) == "v4"
    kinds = (tmp_path / "lifespan.log").read_text().split()[::2]
    # one at a time: every start-up is followed by its shut-down before the next start-up
    assert kinds == ["lifespan.startup", "lifespan.shutdown"] * (len(kinds) // 2)


async def test_a_connection_busy_during_the_reload_moves_to_the_new_generation(tmp_path: Path) -> None:
    sized = SLOW_APP.replace("[]})", '[(b"content-length", str(len(body)).encode())]})')
    write(tmp_path / "main.py", sized)
    async with Reloader("main:app", app_dir=tmp_path) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            async with asyncio.timeout(20):
                writer.write(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
                await until(lambda: "slow request started" in server.output, what="the slow request")
                await server.edit(tmp_path / "main.py", sized.replace('BODY = "v1"', 'BODY = "v2"'))
                first = await reader.readuntil(b"slow v1")
                assert first.startswith(b"HTTP/1.1 200")
                # the same connection, not closed after its response: now served by generation 2
                writer.write(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
                second = await reader.readuntil(b"slow v2")
                assert second.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()
            await writer.wait_closed()


WSGI_APP = """
BODY = b"wsgi v1"

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [BODY]
"""

ASGI2_APP = """
BODY = b"asgi2 v1"

class App:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        if self.scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": BODY})
"""


@pytest.mark.parametrize(
    ("source", "attribute", "interface", "first"),
    [
        (WSGI_APP, "application", "wsgi", "wsgi v1"),
        (ASGI2_APP, "App", "auto", "asgi2 v1"),
        (ASGI2_APP, "App", "asgi2", "asgi2 v1"),
    ],
)
async def test_wsgi_and_asgi2_apps_reload(
    tmp_path: Path, source: str, attribute: str, interface: str, first: str
) -> None:
    write(tmp_path / "main.py", source)
    reloader = Reloader(f"main:{attribute}", app_dir=tmp_path, interface=interface)
    async with reloader as server, httpx.AsyncClient() as client:
        assert await body(client, server.url) == first
        await server.edit(tmp_path / "main.py", source.replace(" v1", " v2"))
        assert await body(client, server.url) == first.replace("v1", "v2")
