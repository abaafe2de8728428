"""The fork server (Linux): workers forked from a template, its fall-backs, and the warm cache.

End to end on real processes: which process is whose child is read from /proc, what a package
imported where from a log the package itself writes, and what the templates did from the events
the fork server took (ForkServer.history, its state in ForkServer.life). The cache lives in the
session's XDG_CACHE_HOME (see conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest

from asgireload import Reloader
from asgireload._supervisor import forkserver, templatespawn
from asgireload._supervisor import templatetable as tt
from asgireload._supervisor.settings import worker_settings
from asgireload.config import Config

from .conftest import PLAIN_APP, until, write
from .test_cli import app_source, asgireload_processes_in, run_cli, write_atomically
from .test_lifecycle import our_processes

pytestmark = pytest.mark.skipif(forkserver.unsafe_to_fork() is not None, reason="the fork server needs Linux")

# An installed package that logs which process imported it (and may do more at import).
LOGGING_PACKAGE = """
import os
with open({log!r}, "a") as log:
    log.write(f"{{os.getpid()}}\\n")
{extra}
"""


def install(site: Path, name: str, log: Path, extra: str = "") -> None:
    write(site / f"{name}.py", LOGGING_PACKAGE.format(log=str(log), extra=extra))


def app_importing(name: str, body: str = "v1", before: str = "") -> str:
    return PLAIN_APP.replace('BODY = "v1"', f"{before}\nimport {name}\nBODY = {body!r}")


def importers(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as file:
        return int(file.read().rsplit(")", 1)[1].split()[1])


def tag_of(pid: int) -> str:
    with open(f"/proc/{pid}/environ", "rb") as file:
        for entry in file.read().split(b"\0"):
            if entry.startswith(b"ASGIRELOAD_TAG="):
                return entry.split(b"=", 1)[1].decode()
    return ""


def cache_file(app_dir: Path) -> Path | None:
    """The warm cache file of the project in `app_dir`, if one was written."""
    folder = Path(os.environ["XDG_CACHE_HOME"]) / "asgireload"
    for path in folder.glob("*.json") if folder.is_dir() else ():
        try:
            if json.loads(path.read_text()).get("app_dir") == str(app_dir):
                return path
        except ValueError:
            continue
    return None


def cached_modules(app_dir: Path) -> list[str]:
    path = cache_file(app_dir)
    try:
        return list(json.loads(path.read_text())["modules"]) if path is not None else []
    except (ValueError, KeyError):
        return []


def fork_server(server: Reloader) -> forkserver.ForkServer:
    processes = server._running._processes
    assert processes is not None
    assert processes.forkserver is not None
    return processes.forkserver


def warm_ups(server: forkserver.ForkServer) -> list[tt.Warmed]:
    """What the templates said each time they imported what they were asked to (the preload list)."""
    return [event for event in server.history if isinstance(event, tt.Warmed)]


# ------------------------------------------------------------------ forked workers


async def test_workers_are_forked_from_the_template(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        await until(lambda: {"standby", "template"} <= set(server.pids), what="a standby and a template")
        first = server.pids["serving"]
        assert parent_of(first) != os.getpid()  # even the first worker is forked
        for number in range(2, 5):
            event = await server.edit(plain_app / "main.py", PLAIN_APP.replace('"v1"', f'"v{number}"'))
            assert event.outcome == "ready"
            assert (await client.get(server.url)).text == f"v{number}"
        serving, template = server.pids["serving"], server.pids["template"]
        assert parent_of(serving) in (template, *our_processes())  # forked (by this or a retired template)
        assert parent_of(serving) != os.getpid()
        # each forked worker carries its own generation tag where the reaper looks for it
        tags = {tag_of(serving), tag_of(template)}
        assert len(tags) == 2
        assert all(tag.startswith(f"{os.getpid()}-") for tag in tags)
        workers = set(server.pids.values())
    assert not (workers & our_processes()), "a worker or the template outlived the Reloader"
    assert not our_processes()


@pytest.mark.parametrize("option", ["fork", "standby", "preload"])
async def test_no_fork_no_standby_and_no_preload_spawn_every_worker(plain_app: Path, option: str) -> None:
    async with (
        Reloader("main:app", app_dir=plain_app, **{option: False}) as server,
        httpx.AsyncClient() as client,
    ):
        event = await server.edit(plain_app / "main.py", PLAIN_APP.replace('"v1"', '"v2"'))
        assert event.outcome == "ready"
        assert (await client.get(server.url)).text == "v2"
        if option != "standby":
            await until(lambda: "standby" in server.pids, what="a standby")
        assert "template" not in server.pids
        assert all(parent_of(pid) == os.getpid() for pid in server.pids.values())


async def test_a_killed_template_is_replaced_without_a_reload(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        await until(lambda: "template" in server.pids, what="the template")
        killed = server.pids["template"]
        os.kill(killed, signal.SIGKILL)
        await until(lambda: server.pids.get("template") not in (None, killed), what="a new template")
        assert server.generation == 1
        assert (await client.get(server.url)).text == "v1"
        for number in (2, 3):  # the standby forked by the killed one serves; the next comes from the new one
            event = await server.edit(plain_app / "main.py", PLAIN_APP.replace('"v1"', f'"v{number}"'))
            assert event.outcome == "ready"
            assert (await client.get(server.url)).text == f"v{number}"
        await until(lambda: "standby" in server.pids, what="a standby")
        assert parent_of(server.pids["standby"]) == server.pids["template"]
    assert not our_processes()


async def test_an_upgraded_package_replaces_the_template_and_the_standby(
    tmp_path: Path, installed: Path
) -> None:
    log = tmp_path / "imports.log"
    install(installed, "upgraded", log)
    write(tmp_path / "app" / "main.py", app_importing("upgraded"))
    async with Reloader("main:app", app_dir=tmp_path / "app") as server, httpx.AsyncClient() as client:
        await until(lambda: server.pids.get("template") in importers(log), what="the template to import it")
        await until(lambda: "standby" in server.pids, what="a standby")
        template, standby = server.pids["template"], server.pids["standby"]
        install(installed, "upgraded", log, "VERSION = 2")  # pip upgraded it
        await until(lambda: server.pids.get("template") not in (None, template), what="a new template")
        await until(lambda: server.pids.get("standby") not in (None, standby), what="a new standby")
        assert server.generation == 1  # no reload
        await until(lambda: parent_of(server.pids["standby"]) == server.pids["template"], what="a fresh fork")
        assert server.pids["template"] in importers(log)  # the new template imported the new version
        assert (await client.get(server.url)).text == "v1"


async def test_a_thread_started_at_import_makes_it_spawn_instead(tmp_path: Path, installed: Path) -> None:
    log = tmp_path / "imports.log"
    install(
        installed,
        "threadpkg",
        log,
        "import threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True).start()",
    )
    write(tmp_path / "app" / "main.py", app_importing("threadpkg"))
    async with Reloader("main:app", app_dir=tmp_path / "app") as server, httpx.AsyncClient() as client:
        # the template that preloads threadpkg finds a thread running: no more forking
        life = fork_server(server).life
        await until(lambda: life.off is not None, what="the fall-back")
        assert life.off == "2 threads were running in the fork server after its imports"
        assert [event.threads for event in warm_ups(fork_server(server))][-1] == 2
        await until(lambda: "template" not in server.pids, what="the template to go")
        for number in (2, 3):
            event = await server.edit(tmp_path / "app" / "main.py", app_importing("threadpkg", f"v{number}"))
            assert event.outcome == "ready"
            assert (await client.get(server.url)).text == f"v{number}"
        await until(lambda: "standby" in server.pids, what="a standby")
        assert parent_of(server.pids["standby"]) == os.getpid()  # spawned
        assert life.current is None
        assert life.off == "2 threads were running in the fork server after its imports"  # said once
    assert not our_processes()


async def test_a_package_failing_in_the_template_is_imported_by_the_app(
    tmp_path: Path, installed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asgireload")
    log = tmp_path / "imports.log"
    # it imports only once the app has set this variable: never in the template, always in the app
    install(
        installed, "needy", log, "if not os.environ.get('APP_SETS_THIS'):\n    raise RuntimeError('unset')"
    )
    setup = 'import os\nos.environ["APP_SETS_THIS"] = "1"'
    write(tmp_path / "app" / "main.py", app_importing("needy", before=setup))
    async with Reloader("main:app", app_dir=tmp_path / "app") as server, httpx.AsyncClient() as client:
        for number in (2, 3, 4):
            event = await server.edit(
                tmp_path / "app" / "main.py", app_importing("needy", f"v{number}", setup)
            )
            assert event.outcome == "ready"
            assert (await client.get(server.url)).text == f"v{number}"
        # the template that preloads the app's modules fails on this one, and forks on
        warmed = lambda: warm_ups(fork_server(server))  # noqa: E731
        await until(lambda: len(warmed()) == 2, what="the second template")
        assert warmed()[-1].failed == ("needy",)
        event = await server.edit(tmp_path / "app" / "main.py", app_importing("needy", "v5", setup))
        assert (await client.get(server.url)).text == "v5"
        assert "template" in server.pids
    failed = [r.getMessage() for r in caplog.records if "Preloading 'needy' failed" in r.getMessage()]
    assert len(failed) == 1, failed


async def test_no_connection_is_refused_while_the_template_forks_and_is_killed(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        errors: list[str] = []

        async def ask() -> None:
            try:
                response = await client.get(server.url)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))

        await until(lambda: "template" in server.pids, what="the template")
        for number in range(2, 8):
            if number == 4:
                os.kill(server.pids["template"], signal.SIGKILL)
            await ask()
            event = await server.edit(plain_app / "main.py", PLAIN_APP.replace('"v1"', f'"v{number}"'))
            assert event.outcome == "ready"
            await ask()
        assert errors == []
        assert (await client.get(server.url)).text == "v7"
    assert not our_processes()


# ------------------------------------------------------------------ the warm cache


async def test_the_template_preloads_what_the_app_imported_last_time(tmp_path: Path, installed: Path) -> None:
    log = tmp_path / "imports.log"
    install(installed, "warmpkg", log)
    app = tmp_path / "app"
    write(app / "main.py", app_importing("warmpkg"))
    async with Reloader("main:app", app_dir=app):
        await until(lambda: "warmpkg" in cached_modules(app), what="the cache to be written")
    log.unlink()
    async with Reloader("main:app", app_dir=app) as server:
        await until(lambda: "standby" in server.pids, what="a standby")
        template, standby = server.pids["template"], server.pids["standby"]
        assert parent_of(standby) == template
        # the template imported it at start-up; the standby forked from it did not import it again
        assert template in importers(log)
        assert standby not in importers(log)


@pytest.mark.parametrize("damage", ["garbage", "other-python", "packages-changed"])
async def test_an_unusable_cache_is_ignored_and_rewritten(
    tmp_path: Path, installed: Path, damage: str
) -> None:
    log = tmp_path / "imports.log"
    install(installed, "warmpkg", log)
    app = tmp_path / "app"
    write(app / "main.py", app_importing("warmpkg"))
    async with Reloader("main:app", app_dir=app):
        await until(lambda: "warmpkg" in cached_modules(app), what="the cache to be written")
    path = cache_file(app)
    assert path is not None
    written = json.loads(path.read_text())
    if damage == "garbage":
        path.write_bytes(b"\x00{not json")
    elif damage == "other-python":
        path.write_text(json.dumps({**written, "python": "2.7.18 (default)"}))
    else:
        install(installed, "anotherpkg", log)  # pip installed something: the site folder changed
    async with Reloader("main:app", app_dir=app) as server, httpx.AsyncClient() as client:
        assert (await client.get(server.url)).text == "v1"
        await until(lambda: bool(warm_ups(fork_server(server))), what="the template")
        assert warm_ups(fork_server(server))[0].preloaded == 0  # the cache was not used
        await until(lambda: "warmpkg" in cached_modules(app), what="the cache to be rewritten")
    rewritten = json.loads(path.read_text())
    assert rewritten["python"] == sys.version
    if damage == "packages-changed":
        assert rewritten["fingerprint"] != written["fingerprint"]


# ------------------------------------------------------------------ units


def test_a_tracer_in_the_supervisor_turns_forking_off() -> None:
    previous = sys.gettrace()
    sys.settrace(lambda *args: None)
    try:
        assert forkserver.unsafe_to_fork() == "a debugger, tracer or coverage follows the supervisor"
    finally:
        sys.settrace(previous)


# ------------------------------------------------------------------ the command's early template
#
# `asgireload` starts the template before it imports its own modules (templatespawn.start_early).
# It must then be exactly the template a later start would have made, or be ended unused.

STARTED_AGAIN = r"Starting the fork server again: the one the command started (.*)\."


def templates_in(folder: Path) -> set[int]:
    """Running templates (and workers they forked, which show the same command line) started in
    `folder`, whose working folder they keep."""
    return {p.pid for p in asgireload_processes_in(folder) if b"_worker.template" in cmdline_of(p.pid)}


def early_template(supervisor: int, folder: Path) -> int:
    """The template `asgireload` started first (its workers, forked, show its command line too)."""
    found = [
        pid for pid in templates_in(folder) if b"--early" in cmdline_of(pid) and parent_of(pid) == supervisor
    ]
    assert len(found) == 1, found
    return found[0]


def cmdline_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


async def test_the_command_forks_every_worker_from_the_template_it_started_first(tmp_path: Path) -> None:
    write(tmp_path / "main.py", app_source("first"))
    async with run_cli(tmp_path, "--port", "0", "--log-level", "debug", "--no-live-reload") as cli:
        port = await cli.started()
        early = early_template(cli.pid, tmp_path)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "first"
            workers = await cli.collect_workers()
            assert {parent_of(worker.pid) for worker in workers} == {early}
            write_atomically(tmp_path / "main.py", app_source("second"))
            await cli.wait_for_line(r"Reloaded in \d+ ms \(generation 2\)")
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "second"
        cli.send(signal.SIGINT)
        assert await cli.exited() == 0
        cli.assert_nothing_left()


# websockets reads WEBSOCKETS_* variables when it is imported, and uvicorn's default websocket
# protocol imports it: the early template has, before any env file could be read.
READS_WEBSOCKETS_ENV = """
import websockets.http11

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = str(websockets.http11.MAX_NUM_HEADERS).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        # on the command line: no early template is started at all
        pytest.param(("--env-file", ".env"), {}, [], id="flag"),
        # elsewhere: the early template was started before the file was read, and is not used
        pytest.param(
            (),
            {"ASGIRELOAD_ENV_FILE": ".env"},
            ["imported its modules before the env file's values were set"],
            id="environment",
        ),
    ],
)
async def test_an_env_file_value_that_uvicorns_protocols_read_at_import_reaches_every_worker(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], said: list[str]
) -> None:
    write(tmp_path / "main.py", READS_WEBSOCKETS_ENV)
    write(tmp_path / ".env", "WEBSOCKETS_MAX_NUM_HEADERS=77\n")
    args = ("--port", "0", "--log-level", "debug", "--no-live-reload", *args)
    async with run_cli(tmp_path, *args, env=env) as cli:
        port = await cli.started()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "77"
            again = [m[1] for _, line in cli.lines if (m := re.search(STARTED_AGAIN, line))]
            assert again == said, cli.transcript()
            write_atomically(tmp_path / "main.py", READS_WEBSOCKETS_ENV + "\n# edited\n")
            await cli.wait_for_line(r"Reloaded in \d+ ms \(generation 2\)")
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "77"  # a forked standby
        workers = await cli.collect_workers()
        assert all(parent_of(worker.pid) != cli.pid for worker in workers)  # forked still, by another
        templates = {parent_of(worker.pid) for worker in workers}
        assert not any(b"--early" in cmdline_of(pid) for pid in templates), cli.transcript()


@pytest.mark.parametrize(
    ("where", "env"),
    [
        pytest.param("pyproject", {}, id="pyproject"),
        pytest.param("environment", {"ASGIRELOAD_FORK": "false"}, id="environment"),
    ],
)
async def test_a_command_told_not_to_fork_elsewhere_than_its_flags_keeps_no_template(
    tmp_path: Path, where: str, env: dict[str, str]
) -> None:
    write(tmp_path / "main.py", app_source("first"))
    if where == "pyproject":
        write(tmp_path / "pyproject.toml", "[tool.asgireload]\nfork = false\n")
    async with run_cli(tmp_path, "--port", "0", "--no-live-reload", env=env) as cli:
        port = await cli.started()
        workers = await cli.collect_workers()
        assert {parent_of(worker.pid) for worker in workers} == {cli.pid}  # spawned
        assert not templates_in(tmp_path), cli.transcript()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "first"


async def test_the_commands_first_template_imports_the_warm_cache_before_the_first_worker(
    tmp_path: Path, installed: Path
) -> None:
    log = tmp_path / "imports.log"
    install(installed, "earlywarmpkg", log)
    install(installed, "earlybrokenpkg", tmp_path / "broken.log", extra="raise RuntimeError('gone')")
    project = tmp_path / "project"
    write(project / "main.py", app_importing("earlywarmpkg", body="warm"))
    args = ("main:app", "--port", "0", "--log-level", "debug", "--no-live-reload")
    async with run_cli(project, *args) as cli:
        await cli.started()
        await until(lambda: "earlywarmpkg" in cached_modules(project), what="the cache to be written")
        cli.send(signal.SIGINT)
        assert await cli.exited() == 0
    # a module that no longer imports, in the cache: it costs the template that attempt only
    cache = cache_file(project)
    assert cache is not None
    data = json.loads(cache.read_text())
    cache.write_text(json.dumps({**data, "modules": ["earlybrokenpkg", *data["modules"]]}))
    log.unlink()
    async with run_cli(project, *args) as cli:
        port = await cli.started()
        early = early_template(cli.pid, project)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "warm"
        workers = await cli.collect_workers()
        assert {parent_of(worker.pid) for worker in workers} == {early}
        # imported once, by the template, before it forked the first worker: no worker imports it
        assert importers(log) == [early]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["main:app"], (".", "main:app")),
        (["--port", "8000", "pkg.web:make_app", "--factory"], (".", "pkg.web:make_app")),
        (["--app-dir", "src", "main:app"], ("src", "main:app")),
        (["main:app", "--app-dir=src"], ("src", "main:app")),
        (["--host", "::1", "main:app"], (".", "main:app")),  # an address is no import string
        (["--port", "8000"], None),  # found in the project or its pyproject.toml: not guessed
        (["main.py"], None),
    ],
)
def test_the_early_template_reads_the_app_off_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: tuple[str, str] | None
) -> None:
    monkeypatch.chdir(tmp_path)
    found = templatespawn._app_of(argv)
    assert found == (() if expected is None else (os.path.abspath(expected[0]), expected[1]))


# An app whose import starts a child that outlives the import (as a dev server's helper would).
STARTS_A_CHILD = """
import pathlib, subprocess
child = subprocess.Popen(["sleep", "600"])
(pathlib.Path(__file__).parent / "child.pid").write_text(str(child.pid))

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""

# `asgireload ... &` in a script starts it with SIGINT ignored (`nohup` or a service manager may
# ignore SIGTERM); the supervisor handles both anyway, so the templates it starts later get the
# default, and so must the early one.
WITH_SIGINT_IGNORED = (
    "-c",
    "import os, signal, sys; [signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)]; "
    "os.execv(sys.executable, [sys.executable, '-m', 'asgireload', *sys.argv[1:]])",
)


# glibc's posix_spawn leaves its two internal signals (32 and 33, for thread cancellation and
# set*id) ignored in the child; glibc installs its own handlers whenever it needs them, and no
# program can set them (sigaction refuses), so they are left out of the comparison.
GLIBC_INTERNAL = (1 << 31) | (1 << 32)


def signal_state(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("SigIgn", "SigBlk", "SigCgt"):
            fields[name] = int(value, 16) & ~GLIBC_INTERNAL
    return fields


async def test_workers_and_their_children_get_the_same_signals_whichever_way_they_started(
    tmp_path: Path,
) -> None:
    states, templates = {}, {}
    for how, args, env in [
        ("the early template", (), {}),
        ("a template started later", (), {"ASGIRELOAD_ENV_FILE": ".env"}),
        ("spawning", ("--no-fork",), {}),
    ]:
        project = tmp_path / how.replace(" ", "-")
        write(project / "main.py", STARTS_A_CHILD)
        write(project / ".env", "SOMETHING=1\n")
        command_line = ("main:app", "--port", "0", "--log-level", "debug", "--no-live-reload", *args)
        async with run_cli(project, *command_line, command=WITH_SIGINT_IGNORED, env=env) as cli:
            await cli.started()
            await cli.collect_workers()
            child = int((project / "child.pid").read_text())
            serving = parent_of(child)
            states[how] = (signal_state(serving), signal_state(child)["SigIgn"])
            if how != "spawning":
                template = parent_of(serving)
                assert (b"--early" in cmdline_of(template)) == (how == "the early template"), cli.transcript()
                templates[how] = signal_state(template)
    assert states["the early template"] == states["a template started later"] == states["spawning"], states
    assert templates["the early template"] == templates["a template started later"], templates


def zombies_and_pidfds() -> tuple[list[int], list[str]]:
    """This process's unreaped children, and the pidfds it holds."""
    zombies = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] == "Z" and int(fields[1]) == os.getpid():
                    zombies.append(int(entry))
    pidfds = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if "pidfd" in (target := os.readlink(f"/proc/self/fd/{fd}")):
                pidfds.append(f"{fd} -> {target}")
    return zombies, pidfds


@pytest.mark.parametrize("wait_for", ["nothing", "the new template"])
async def test_stopping_as_a_template_is_replaced_leaves_no_zombie_and_no_pidfd(
    tmp_path: Path, installed: Path, wait_for: str
) -> None:
    log = tmp_path / "imports.log"
    install(installed, "replacedpkg", log)
    write(tmp_path / "app" / "main.py", app_importing("replacedpkg"))
    async with Reloader("main:app", app_dir=tmp_path / "app") as server:
        await until(lambda: server.pids.get("template") in importers(log), what="the template to import it")
        template = server.pids["template"]
        install(installed, "replacedpkg", log, "VERSION = 2")  # pip upgraded it: a new template
        if wait_for == "the new template":
            await until(lambda: server.pids.get("template") not in (None, template), what="a new template")
    assert zombies_and_pidfds() == ([], [])
    assert not our_processes()


@pytest.mark.parametrize("output", ["inherited", "captured"])
async def test_closing_the_fork_server_right_after_a_replacement_reaps_every_template(
    plain_app: Path, output: str
) -> None:
    # Driven directly: the window between a replacement and a stop is too short to hit with a
    # Reloader. The replaced template never forked, so it is ended at once, not retired.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    lines: list[str] = []
    server = forkserver.ForkServer(listener, lines.append if output == "captured" else None)
    try:
        config = Config(app="main:app", app_dir=str(plain_app))
        server.start(worker_settings(config, (str(plain_app),), (), None, "run", -1, -1, -1))
        await until(lambda: server.pid is not None, what="a template")
        first = server.pid
        server.replace()
        await server.aclose()
    finally:
        listener.close()
    assert zombies_and_pidfds() == ([], []), first
    assert not our_processes()
