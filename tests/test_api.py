"""The Python API: serve(), run(), Reloader, and the pytest plugin in nested test runs."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from asgireload import ConfigError, Reloader, ReloadTimeout, serve
from asgireload._supervisor.machineevents import ReloadRequested
from asgireload.errors import AsgireloadError
from asgireload.serving import resolve_import_string

from .conftest import PLAIN_APP, until, write

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent.parent


def children() -> set[int]:
    found = set()
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[1] == me:
                        found.add(int(entry))
            except OSError:
                continue
    return found


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def get_over_uds(path: Path) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get("http://app/")


async def serving_on(path: Path) -> httpx.Response:
    """The first answer on a Unix socket, waited for with a deadline."""
    async with asyncio.timeout(20):
        while True:
            try:
                return await get_over_uds(path)
            except httpx.TransportError:
                await asyncio.sleep(0.02)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
async def test_serve_an_import_string_then_cancel_leaves_nothing(plain_app: Path) -> None:
    before_fds, before_children = open_fds(), children()
    sock = plain_app / "app.sock"
    task = asyncio.create_task(serve("main:app", reload=True, app_dir=plain_app, uds=str(sock)))
    assert (await serving_on(sock)).text == "v1"
    assert children() - before_children  # real worker processes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert children() == before_children
    assert open_fds() == before_fds
    assert not sock.exists()


async def test_serve_an_app_object_from_an_imported_module(tmp_path: Path) -> None:
    write(tmp_path / "objmod" / "__init__.py", "")
    write(tmp_path / "objmod" / "web.py", PLAIN_APP)
    sys.path.insert(0, str(tmp_path))
    try:
        from objmod.web import app  # type: ignore[import-not-found]

        assert resolve_import_string(app, {}) == ("objmod.web:app", {"app_dir": str(tmp_path)})
        sock = tmp_path / "app.sock"
        task = asyncio.create_task(serve(app, reload=True, uds=str(sock)))
        try:
            assert (await serving_on(sock)).text == "v1"
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("objmod.web", "objmod"):
            sys.modules.pop(name, None)


async def test_an_app_that_cannot_be_resolved_is_a_clear_error() -> None:
    def make() -> object:
        async def local_app(scope: object, receive: object, send: object) -> None:
            pass

        return local_app

    with pytest.raises(ConfigError, match="pass an import string instead"):
        await serve(make(), reload=True)


async def test_an_app_held_by_two_modules_is_ambiguous(tmp_path: Path) -> None:
    write(tmp_path / "first_holder.py", PLAIN_APP)
    write(tmp_path / "second_holder.py", "from first_holder import app as application\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import second_holder  # type: ignore[import-not-found]

        with pytest.raises(ConfigError, match=r"first_holder:app, second_holder:application"):
            await serve(second_holder.application, reload=True)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("first_holder", None)
        sys.modules.pop("second_holder", None)


async def test_serve_without_reload_runs_in_this_process(tmp_path: Path) -> None:
    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"in process"})  # type: ignore[operator]

    before = children()
    sock = tmp_path / "app.sock"
    task = asyncio.create_task(serve(app, uds=str(sock), lifespan="off", log_level="warning"))
    try:
        assert (await serving_on(sock)).text == "in process"
        assert children() == before
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    ("options", "message"),
    [({"port": "eighty"}, "port (--port)"), ({"drain_timeout": -3}, "drain_timeout (--drain-timeout)")],
)
async def test_options_of_the_wrong_type_name_the_option(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        await serve("main:app", reload=True, **options)


def test_a_script_run_as_main_serves_its_own_app(tmp_path: Path) -> None:
    sock = tmp_path / "app.sock"
    script = write(
        tmp_path / "main.py",
        PLAIN_APP
        + f"""

if __name__ == "__main__":
    from asgireload import run
    run(app, uds={str(sock)!r})
""",
    )
    process = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:

        async def check() -> None:
            assert (await serving_on(sock)).text == "v1"
            source = script.read_text().replace('BODY = "v1"', 'BODY = "v2"')
            write(script, source)
            await until(lambda: "generation 2" in _peek(process), timeout=20, what="the reload's log line")
            assert (await get_over_uds(sock)).text == "v2"

        asyncio.run(check())
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


_seen: dict[int, str] = {}


def _peek(process: subprocess.Popen[str]) -> str:
    """What the process wrote to stderr so far, read without blocking."""
    import fcntl

    assert process.stderr is not None
    fd = process.stderr.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        chunk = os.read(fd, 65536).decode(errors="replace")
    except BlockingIOError:
        chunk = ""
    _seen[process.pid] = _seen.get(process.pid, "") + chunk
    return _seen[process.pid]


async def test_forced_reload_and_events(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server:
        events = server.events()
        event = await server.reload()
        assert (event.generation, event.outcome, event.changed) == (2, "ready", ())
        assert (await anext(events)).generation == 2
        write(plain_app / "main.py", "raise KeyError('missing setting')\n")
        failed = await anext(events)
        assert failed.outcome == "failed"
        assert "KeyError: 'missing setting'" in failed.traceback
        assert server.state == "failed"
        assert server.failure is not None
        assert "missing setting" in server.failure.summary
        await events.aclose()


async def test_two_reloaders_at_once(tmp_path: Path) -> None:
    write(tmp_path / "a" / "main.py", PLAIN_APP.replace('BODY = "v1"', 'BODY = "a"'))
    write(tmp_path / "b" / "main.py", PLAIN_APP.replace('BODY = "v1"', 'BODY = "b"'))
    async with (
        Reloader("main:app", app_dir=tmp_path / "a") as first,
        Reloader("main:app", app_dir=tmp_path / "b") as second,
        httpx.AsyncClient() as client,
    ):
        assert first.port != second.port
        await second.edit(tmp_path / "b" / "main.py", PLAIN_APP.replace('BODY = "v1"', 'BODY = "b2"'))
        assert (await client.get(first.url)).text == "a"
        assert (await client.get(second.url)).text == "b2"
        assert first.generation == 1


async def test_a_reloader_cannot_be_entered_twice(plain_app: Path) -> None:
    reloader = Reloader("main:app", app_dir=plain_app)
    async with reloader:
        with pytest.raises(AsgireloadError, match="entered only once"):
            await reloader.__aenter__()


async def test_a_wait_always_has_a_deadline(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server:
        with pytest.raises(ReloadTimeout, match="generation 9 did not become ready"):
            await server.wait_for_generation(9, timeout=0.2)


async def test_an_internal_error_stops_the_server_and_fails_the_wait(
    plain_app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_children, before_fds = children(), open_fds()
    server = await Reloader("main:app", app_dir=plain_app).__aenter__()
    try:
        machine = server._running._machine
        assert machine is not None
        handle = machine.handle

        def broken(event: object) -> object:
            if isinstance(event, ReloadRequested):
                raise RuntimeError("a bug")
            return handle(event)  # type: ignore[arg-type]

        monkeypatch.setattr(machine, "handle", broken)
        with pytest.raises(AsgireloadError, match=r"internal error .*RuntimeError\('a bug'\)"):
            await server.reload(timeout=10)  # fails at once, not at its deadline
        await until(lambda: server.state == "stopped", what="the supervisor to stop itself")
    except BaseException:
        await server.__aexit__(None, None, None)
        raise
    with pytest.raises(AsgireloadError, match="the supervisor stopped on an internal error"):
        await server.__aexit__(None, None, None)  # raised again on the way out: nobody may miss it
    assert children() == before_children
    assert open_fds() == before_fds


async def test_cancelling_during_start_up_leaves_nothing(tmp_path: Path) -> None:
    write(
        tmp_path / "main.py",
        "import pathlib, time\n(pathlib.Path(__file__).parent / 'importing').write_text('')\n"
        "time.sleep(60)\n" + PLAIN_APP,
    )
    before_children, before_fds = children(), open_fds()
    entering = asyncio.create_task(Reloader("main:app", app_dir=tmp_path).__aenter__())
    await until(lambda: (tmp_path / "importing").exists(), what="the worker to start importing")
    entering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await entering
    assert children() == before_children
    assert open_fds() == before_fds


def _nested(pytester: pytest.Pytester, test_source: str, *args: str) -> pytest.RunResult:
    """Run a test file in a fresh pytest process; the fixture comes from the installed entry point."""
    pytester.makepyfile(test_nested=textwrap.dedent(test_source))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", *args, timeout=120)


ASYNCIO = ("-p", "asyncio", "-o", "asyncio_default_fixture_loop_scope=function")
USER_TEST = (ROOT / "examples" / "test_with_fixture.py").read_text()


@pytest.mark.parametrize("mode", ["auto", "strict"])
def test_the_fixture_under_pytest_asyncio(pytester: pytest.Pytester, mode: str) -> None:
    source = USER_TEST
    if mode == "strict":
        source = "import pytest\n" + source.replace(
            "async def test_", "@pytest.mark.asyncio\nasync def test_"
        )
    result = _nested(pytester, source, *ASYNCIO, f"--asyncio-mode={mode}")
    result.assert_outcomes(passed=2)


def test_the_fixture_under_anyio(pytester: pytest.Pytester) -> None:
    source = (
        "import pytest\n\n"
        "@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n\n"
        + USER_TEST.replace("async def test_", "@pytest.mark.anyio\nasync def test_")
    )
    result = _nested(pytester, source, "-p", "anyio", "-p", "no:asyncio")
    result.assert_outcomes(passed=2)


def test_the_fixture_in_a_module_scoped_async_fixture(pytester: pytest.Pytester) -> None:
    source = """
    import httpx
    import pytest
    import pytest_asyncio
    from asgireload import Reloader

    APP = '''
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"shared"})
    '''

    @pytest_asyncio.fixture(scope="module", loop_scope="module")
    async def server(tmp_path_factory):
        root = tmp_path_factory.mktemp("app")
        (root / "main.py").write_text(APP)
        async with Reloader("main:app", app_dir=root) as running:
            yield running

    @pytest.mark.asyncio(loop_scope="module")
    async def test_one(server):
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.url)).text == "shared"

    @pytest.mark.asyncio(loop_scope="module")
    async def test_two(server):
        assert server.generation == 1
    """
    result = _nested(pytester, source, *ASYNCIO, "--asyncio-mode=strict")
    result.assert_outcomes(passed=2)


async def test_events_end_when_the_server_stops(plain_app: Path) -> None:
    seen = []
    async with Reloader("main:app", app_dir=plain_app) as server:

        async def listen() -> None:
            async for event in server.events():
                seen.append(event.generation)

        listener = asyncio.create_task(listen())
        await server.reload()
    async with asyncio.timeout(5):
        await listener
    assert seen == [2]


async def test_entering_has_a_deadline(tmp_path: Path) -> None:
    write(tmp_path / "main.py", "import time\ntime.sleep(60)\n" + PLAIN_APP)
    before = children()
    with pytest.raises(ReloadTimeout, match="generation 1 did not become ready"):
        async with Reloader("main:app", app_dir=tmp_path, start_timeout=1.0):
            pass
    assert children() == before


# ------------------------------------------------------------------------ edit() of unwatched files


async def test_editing_a_file_nobody_watches_fails_at_once_and_writes_nothing(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    write(app_dir / "main.py", PLAIN_APP)
    page = write(app_dir / "templates" / "page.html", "<p>v1</p>")
    unimported = write(app_dir / "unused.py", "X = 1\n")
    outside = write(tmp_path / "shared" / "helpers.py", "X = 1\n")
    cases = [
        (page, r"--reload-include '\*\.html'"),
        (unimported, r"import it from the app"),
        (outside, rf"--reload-dir {outside.parent}"),
    ]
    async with Reloader("main:app", app_dir=app_dir) as server:
        for path, advice in cases:
            before = path.read_text()
            with pytest.raises(AsgireloadError) as raised:
                async with asyncio.timeout(1):
                    await server.edit(path, "changed")
            message = str(raised.value)
            assert str(path) in message
            assert re.search(advice, message), message
            assert "reload=True" in message
            assert path.read_text() == before
        assert server.generation == 1


async def test_edit_with_reload_true_reloads_a_file_read_at_start_up(tmp_path: Path) -> None:
    write(tmp_path / "settings.txt", "from settings v1")
    write(
        tmp_path / "main.py",
        PLAIN_APP.replace(
            'BODY = "v1"',
            'BODY = (__import__("pathlib").Path(__file__).parent / "settings.txt").read_text()',
        ),
    )
    async with Reloader("main:app", app_dir=tmp_path) as server, httpx.AsyncClient() as client:
        assert (await client.get(server.url)).text == "from settings v1"
        assert not server.is_watching(tmp_path / "settings.txt")
        event = await server.edit(tmp_path / "settings.txt", "from settings v2", reload=True)
        assert (event.generation, event.outcome) == (2, "ready")
        assert (await client.get(server.url)).text == "from settings v2"


async def test_a_file_that_reload_include_will_pick_up_counts_as_watched(tmp_path: Path) -> None:
    write(tmp_path / "main.py", PLAIN_APP)
    async with Reloader("main:app", app_dir=tmp_path, reload_includes=("*.html",)) as server:
        event = await server.edit(tmp_path / "new.html", "<p>new</p>")  # created: found by the scan
        assert (event.generation, event.outcome, event.changed) == (2, "ready", (str(tmp_path / "new.html"),))


# ------------------------------------------------------------------------ asyncio only

NEEDS_ASYNCIO = "asgireload needs asyncio, but {what} under trio, where no asyncio event loop runs"


def test_serve_under_trio_is_one_clear_error(plain_app: Path) -> None:
    trio = pytest.importorskip("trio")
    before_children, before_fds = children(), open_fds()
    with pytest.raises(AsgireloadError, match=re.escape(NEEDS_ASYNCIO.format(what="serve() was awaited"))):
        trio.run(functools.partial(serve, "main:app", reload=True, app_dir=plain_app, port=0))
    assert (children(), open_fds()) == (before_children, before_fds)


def test_a_reloader_under_trio_is_one_clear_error(plain_app: Path) -> None:
    trio = pytest.importorskip("trio")
    before_children, before_fds = children(), open_fds()

    async def enter() -> None:
        async with Reloader("main:app", app_dir=plain_app):
            pass

    with pytest.raises(AsgireloadError, match=re.escape(NEEDS_ASYNCIO.format(what="a Reloader was entered"))):
        trio.run(enter)
    assert (children(), open_fds()) == (before_children, before_fds)


TRIO_TESTS = """
import gc
import socket

import pytest

from asgireload import Reloader, serve

PORT = {port}
APP = "async def app(scope, receive, send):\\n    pass\\n"


@pytest.fixture
def anyio_backend():
    return "trio"


@pytest.mark.anyio
async def test_the_fixture(asgireload_server):
    async with asgireload_server("main:app", files={{"main.py": APP}}, port=PORT):
        pass


@pytest.mark.anyio
async def test_a_reloader(tmp_path):
    (tmp_path / "main.py").write_text(APP)
    async with Reloader("main:app", app_dir=tmp_path, port=PORT):
        pass


@pytest.mark.anyio
async def test_serve(tmp_path):
    (tmp_path / "main.py").write_text(APP)
    await serve("main:app", reload=True, app_dir=tmp_path, port=PORT)


def test_nothing_was_left_behind():
    gc.collect()  # a coroutine never awaited would warn now (an error under -W error)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", PORT))  # fails if a socket was left listening on the port
        sock.listen()
"""


def test_the_fixture_under_anyio_with_trio_is_one_clear_error(pytester: pytest.Pytester) -> None:
    pytest.importorskip("trio")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _nested(pytester, TRIO_TESTS.format(port=port), "-p", "anyio", "-p", "no:asyncio")
    result.assert_outcomes(failed=3, passed=1)
    output = result.stdout.str()
    for what in ("the asgireload_server fixture was called", "a Reloader was entered", "serve() was awaited"):
        assert f"AsgireloadError: {NEEDS_ASYNCIO.format(what=what)}" in output, output
    assert "anyio_backend = 'asyncio'" in output
    assert "was never awaited" not in output
    assert "RuntimeWarning" not in output
    assert "no current event loop" not in output
    assert not list(pytester.path.rglob("test_the_fixture0/main.py")), "the fixture wrote files first"
