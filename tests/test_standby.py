"""The warm standby: replaced when it dies or its packages change, never waited on forever,
and a package that cannot be preloaded is reported once and imported with the app instead.

The tests that count who imported a package spawn their workers (fork=False): with the fork
server, the template imports it too (see test_forkserver.py)."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import httpx
import pytest

from asgireload import Reloader

from .conftest import PLAIN_APP, until, write

# An "installed package" (see the `installed` fixture): preloading only considers installed code.
FAKEPKG = """
import os
with open({log!r}, "a") as log:
    log.write(f"imported {{os.getpid()}}\\n")
if not os.environ.get("APP_SETS_THIS"):
    {when_unset}
"""


def install_fakepkg(site: Path, log: Path, when_unset: str, extra: str = "") -> None:
    """An installed package that logs each import, and does `when_unset` unless the app set it up."""
    write(site / "fakepkg.py", FAKEPKG.format(log=str(log), when_unset=when_unset) + extra)


def fakepkg_app(body: str = "v1") -> str:
    """main.py: it sets what fakepkg needs, then imports it (what a preload cannot do)."""
    return PLAIN_APP.replace(
        'BODY = "v1"', f'os.environ["APP_SETS_THIS"] = "1"\nimport fakepkg\nBODY = {body!r}'
    )


def app_using_fakepkg(project: Path, body: str = "v1") -> None:
    write(project / "main.py", fakepkg_app(body))


def imports(log: Path) -> list[int]:
    return [int(line.split()[1]) for line in log.read_text().splitlines()] if log.exists() else []


async def test_a_standby_that_dies_is_replaced_without_a_reload(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        await until(lambda: "standby" in server.pids, what="a standby")
        first = server.pids["standby"]
        os.kill(first, signal.SIGKILL)
        await until(lambda: server.pids.get("standby") not in (None, first), what="a new standby")
        assert server.generation == 1
        await server.edit(plain_app / "main.py", PLAIN_APP.replace('"v1"', '"v2"'))
        assert (await client.get(server.url)).text == "v2"


async def test_the_standby_preloads_installed_packages(tmp_path: Path, installed: Path) -> None:
    log = tmp_path / "imports.log"
    install_fakepkg(installed, log, "pass")
    app_using_fakepkg(tmp_path / "app")
    async with (
        Reloader("main:app", app_dir=tmp_path / "app", fork=False) as server,
        httpx.AsyncClient() as client,
    ):
        await until(
            lambda: "standby" in server.pids and len(imports(log)) == 2, what="the standby to preload"
        )
        standby = server.pids["standby"]
        assert imports(log) == [server.pids["serving"], standby]
        await server.edit(tmp_path / "app" / "main.py", (tmp_path / "app" / "main.py").read_text() + "\n")
        assert server.pids["serving"] == standby
        assert imports(log).count(standby) == 1  # the reload did not import fakepkg again
        assert (await client.get(server.url)).text == "v1"


async def test_a_changed_package_replaces_the_standby(tmp_path: Path, installed: Path) -> None:
    log = tmp_path / "imports.log"
    install_fakepkg(installed, log, "pass")
    app_using_fakepkg(tmp_path / "app")
    async with Reloader("main:app", app_dir=tmp_path / "app", fork=False) as server:
        await until(lambda: len(imports(log)) == 2, what="the standby to preload")
        standby = server.pids["standby"]
        install_fakepkg(installed, log, "pass", extra="VERSION = 2\n")
        await until(lambda: server.pids.get("standby") not in (None, standby), what="a fresh standby")
        assert server.generation == 1  # an upgraded package replaces the standby, it does not reload


async def test_a_package_that_fails_to_preload_is_reported_once(
    tmp_path: Path, installed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asgireload")
    log = tmp_path / "imports.log"
    install_fakepkg(installed, log, "raise RuntimeError('unset')")
    app_using_fakepkg(tmp_path / "app")
    async with Reloader("main:app", app_dir=tmp_path / "app") as server, httpx.AsyncClient() as client:
        for body in ("v2", "v3"):
            event = await server.edit(tmp_path / "app" / "main.py", fakepkg_app(body))
            assert event.outcome == "ready"
            assert (await client.get(server.url)).text == body
    warnings = [r.getMessage() for r in caplog.records if "Preloading 'fakepkg' failed" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "RuntimeError: unset" in warnings[0]


# A framework whose modules all need its settings first, as Django's contrib apps' models do.
FRAMEWORK_MODULE = """
import os
if not os.environ.get("APP_SETS_THIS"):
    raise RuntimeError("settings are not configured")
"""


@pytest.mark.parametrize("fork", [True, False])
async def test_many_packages_failing_to_preload_alike_are_reported_once(
    tmp_path: Path, installed: Path, caplog: pytest.LogCaptureFixture, fork: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="asgireload")
    names = [f"fakefw.contrib{number}" for number in range(5)]
    write(installed / "fakefw" / "__init__.py", "")
    for name in names:
        write(installed / "fakefw" / f"{name.split('.')[1]}.py", FRAMEWORK_MODULE)
    main = tmp_path / "app" / "main.py"

    def source(body: str) -> str:
        imports = "\n".join(f"import {name}" for name in names)
        setup = f'os.environ["APP_SETS_THIS"] = "1"\n{imports}'
        return PLAIN_APP.replace('BODY = "v1"', f"{setup}\nBODY = {body!r}")

    write(main, source("v1"))
    async with (
        Reloader("main:app", app_dir=tmp_path / "app", fork=fork) as server,
        httpx.AsyncClient() as client,
    ):
        for number in range(2, 2 + len(names) + 1):
            event = await server.edit(main, source(f"v{number}"))
            assert event.outcome == "ready"
            assert (await client.get(server.url)).text == f"v{number}"
    warnings = [r.getMessage() for r in caplog.records if "Preloading" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "RuntimeError: settings are not configured), and 4 more" in warnings[0]


async def test_a_standby_stuck_preloading_is_not_waited_on(
    tmp_path: Path, installed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asgireload")
    log = tmp_path / "imports.log"
    install_fakepkg(installed, log, "import time; time.sleep(60)")
    app_using_fakepkg(tmp_path / "app")
    async with (
        Reloader("main:app", app_dir=tmp_path / "app", fork=False) as server,
        httpx.AsyncClient() as client,
    ):
        await until(lambda: len(imports(log)) == 2, what="the standby to hang in its preload")
        stuck = server.pids["standby"]
        event = await server.edit(tmp_path / "app" / "main.py", fakepkg_app("v2"))
        assert event.outcome == "ready"
        assert (await client.get(server.url)).text == "v2"
        assert server.pids["serving"] != stuck
        assert stuck not in server.pids.values()
    assert any("starting a fresh one" in r.getMessage() for r in caplog.records)


async def test_a_standby_that_keeps_dying_is_not_replaced_in_a_loop(
    plain_app: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asgireload")
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        killed: list[int] = []
        for _ in range(3):
            await until(lambda: server.pids.get("standby") not in (None, *killed), what="a new standby")
            killed.append(server.pids["standby"])
            os.kill(killed[-1], signal.SIGKILL)
        await until(lambda: any("died 3 times" in r.getMessage() for r in caplog.records), what="the warning")
        assert "standby" not in server.pids
        # the app still reloads (from a fresh worker), and a healthy generation brings a standby back
        event = await server.edit(plain_app / "main.py", PLAIN_APP.replace('"v1"', '"v2"'))
        assert event.outcome == "ready"
        assert (await client.get(server.url)).text == "v2"
        await until(lambda: "standby" in server.pids, what="a standby after a healthy generation")
