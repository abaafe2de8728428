"""How code reaches a worker: every way a project can lay out its code, edited, then served.

Each case edits a file, brings on the next generation (by that edit, or by hand where the file
is not watched), and checks the response shows the edit: a reloader that serves old code after
"Reloaded" is the one failure a developer cannot see.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from asgireload import Reloader

from .conftest import until, write

SERVE_VALUE = """
{imports}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = str({expression}).encode()
    headers = [(b"content-type", b"text/plain")]
    await send({{"type": "http.response.start", "status": 200, "headers": headers}})
    await send({{"type": "http.response.body", "body": body}})
"""


def app_serving(expression: str, imports: str) -> str:
    return SERVE_VALUE.format(imports=imports, expression=expression)


async def served(server: Reloader) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.get(server.url)
    assert response.status_code == 200, (response.text, server.output)
    return response.text


async def edit_and_check(server: Reloader, path: Path, text: str, expected: str, *, by_hand: bool) -> None:
    if by_hand:
        write(path, text)
        event = await server.reload()
    else:
        assert server.is_watching(path), f"{path} should be watched"
        event = await server.edit(path, text)
    assert event.outcome == "ready", (event.summary, event.traceback, server.output)
    assert await served(server) == expected


async def test_a_plain_module(tmp_path: Path) -> None:
    write(tmp_path / "main.py", app_serving("VALUE", 'VALUE = "one"'))
    async with Reloader("main:app", app_dir=tmp_path) as server:
        assert await served(server) == "one"
        await edit_and_check(
            server, tmp_path / "main.py", app_serving("VALUE", 'VALUE = "two"'), "two", by_hand=False
        )


async def test_a_module_in_a_package(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "sub.py", 'VALUE = "one"\n')
    write(tmp_path / "main.py", app_serving("sub.VALUE", "from pkg import sub"))
    async with Reloader("main:app", app_dir=tmp_path) as server:
        assert await served(server) == "one"
        await edit_and_check(server, tmp_path / "pkg" / "sub.py", 'VALUE = "two"\n', "two", by_hand=False)


# Modules of the standard library whose import does something besides defining names (opens a
# browser, prints, needs a display), which the probe app must not import for real.
IMPORT_SIDE_EFFECTS = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}


def shadowable_standard_names() -> list[str]:
    """Every public top-level standard module that a project file of the same name can shadow on
    this Python: the ones found on sys.path (not built in, not frozen only). Some of them uvicorn
    imports before the app (the standard one wins), the others not (the project's wins)."""
    names = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in IMPORT_SIDE_EFFECTS:
            continue
        if importlib.machinery.PathFinder.find_spec(name) is not None:
            names.append(name)
    return names


STANDARD_NAMES = shadowable_standard_names()

PROBE_APP = (
    "import importlib\n"
    f"NAMES = {STANDARD_NAMES!r}\n"
    "def seen(name):\n"
    "    try:\n"
    "        return getattr(importlib.import_module(name), 'SHADOW_MARK', 'standard')\n"
    "    except Exception as exc:  # a standard module this machine cannot import (no curses...)\n"
    "        return type(exc).__name__\n"
    "SEEN = {n: seen(n) for n in NAMES}\n"
    + SERVE_VALUE.format(imports="import json as _json", expression="_json.dumps(SEEN, sort_keys=True)")
)


# A project module named like a standard one that stands in for it: it runs the standard module
# under its name and marks it, so that whatever imports the name (uvicorn, asgireload, the app)
# works, and the mark tells whose file the import found.
STAND_IN = """\
import importlib.machinery as _machinery, importlib.util as _util, os as _os, sys as _sys

_here = _os.path.dirname(_os.path.abspath(__file__))
_spec = _machinery.PathFinder.find_spec(
    __name__, [p for p in _sys.path if _os.path.abspath(p or ".") != _here]
)
_standard = _util.module_from_spec(_spec)
_sys.modules[__name__] = _standard
_spec.loader.exec_module(_standard)
_standard.SHADOW_MARK = {mark!r}
"""


def write_stand_ins(folder: Path, names: list[str], mark: str) -> None:
    for name in names:
        write(folder / f"{name}.py", STAND_IN.format(mark=mark))


def write_shadowing_project(folder: Path, mark: str) -> None:
    write(folder / "main.py", PROBE_APP)
    write_stand_ins(folder, STANDARD_NAMES, mark)


def under_uvicorn(folder: Path) -> dict[str, str]:
    """What `uvicorn main:app` gives the app for each name: the reference behaviour."""
    # the console script, as a user runs it (`python -m uvicorn` would put the project first
    # on sys.path before uvicorn imports anything, which is not what users run)
    uvicorn = os.path.join(os.path.dirname(sys.executable), "uvicorn")
    process = subprocess.Popen(
        [uvicorn, "main:app", "--port", "0", "--lifespan", "off"],
        cwd=folder,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:
            found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port is not None, f"uvicorn did not start: {process.stderr.read()}"
        return dict(json.loads(httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text))
    finally:
        process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()


async def test_project_modules_named_like_standard_ones_shadow_as_under_uvicorn(tmp_path: Path) -> None:
    write_shadowing_project(tmp_path, "project")
    expected = await asyncio.to_thread(under_uvicorn, tmp_path)
    # the case is real both ways: uvicorn lets some of them shadow, and imported others first
    assert {"project", "standard"} <= set(expected.values()), expected
    async with Reloader("main:app", app_dir=tmp_path, lifespan="off") as server:
        assert json.loads(await served(server)) == expected
        # and an edit of such a module reaches the next generation
        shadowing = [name for name, seen in expected.items() if seen == "project"]
        write_stand_ins(tmp_path, shadowing, "edited")
        event = await server.edit(tmp_path / "main.py", PROBE_APP + "\n")
        assert event.outcome == "ready", server.output
        now = json.loads(await served(server))
        assert {name: now[name] for name in shadowing} == dict.fromkeys(shadowing, "edited")


async def test_a_module_under_a_reload_exclude_glob(tmp_path: Path) -> None:
    write(tmp_path / "generated" / "__init__.py", "")
    write(tmp_path / "generated" / "values.py", 'VALUE = "one"\n')
    write(tmp_path / "main.py", app_serving("values.VALUE", "from generated import values"))
    async with Reloader("main:app", app_dir=tmp_path, reload_excludes=("generated/*",)) as server:
        assert not server.is_watching(tmp_path / "generated" / "values.py")
        await edit_and_check(
            server, tmp_path / "generated" / "values.py", 'VALUE = "two"\n', "two", by_hand=True
        )


async def test_a_module_outside_the_reload_dir_on_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sibling = tmp_path / "sibling"
    write(sibling / "helper.py", 'VALUE = "one"\n')
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(sibling), os.environ.get("PYTHONPATH")]))
    )
    project = tmp_path / "project"
    write(project / "main.py", app_serving("helper.VALUE", "import helper"))
    async with Reloader("main:app", app_dir=project) as server:
        assert await served(server) == "one"
        assert not server.is_watching(sibling / "helper.py")
        await edit_and_check(server, sibling / "helper.py", 'VALUE = "two"\n', "two", by_hand=True)


def install_editable(site: Path, name: str, source: Path) -> None:
    """What `pip install -e` leaves in site-packages: a .pth line and a PEP 610 record."""
    write(site / f"__editable__.{name}-0.1.pth", f"{source}\n")
    info = site / f"{name}-0.1.dist-info"
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    write(
        info / "direct_url.json", json.dumps({"url": source.parent.as_uri(), "dir_info": {"editable": True}})
    )


async def test_a_sibling_package_installed_editable_is_watched(tmp_path: Path, installed: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    install_editable(installed, "sharedlib", checkout / "shared" / "src")
    write(checkout / "shared" / "src" / "sharedlib" / "__init__.py", 'VALUE = "one"\n')
    # the .pth takes effect in new interpreters only, which is what the workers are
    write(checkout / "app" / "main.py", app_serving("sharedlib.VALUE", "import sharedlib"))
    async with Reloader("main:app", app_dir=checkout / "app") as server:
        assert await served(server) == "one"
        await edit_and_check(
            server,
            checkout / "shared" / "src" / "sharedlib" / "__init__.py",
            'VALUE = "two"\n',
            "two",
            by_hand=False,
        )
    async with Reloader("main:app", app_dir=checkout / "app", watch_editable=False) as server:
        assert not server.is_watching(checkout / "shared" / "src" / "sharedlib" / "__init__.py")
        await edit_and_check(
            server,
            checkout / "shared" / "src" / "sharedlib" / "__init__.py",
            'VALUE = "three"\n',
            "three",
            by_hand=True,
        )


@pytest.mark.parametrize("as_package", [False, True], ids=["module", "package"])
async def test_a_module_created_after_it_was_not_found(tmp_path: Path, as_package: bool) -> None:
    write(tmp_path / "main.py", app_serving("helpers.VALUE", "import helpers"))
    async with Reloader("main:app", app_dir=tmp_path) as server:
        assert server.state == "failed"
        assert server.failure is not None
        assert "No module named 'helpers'" in server.failure.summary
        target = server.generation + 1
        if as_package:
            write(tmp_path / "helpers" / "__init__.py", 'VALUE = "created"\n')
        else:
            write(tmp_path / "helpers.py", 'VALUE = "created"\n')
        event = await server.wait_for_generation(target, timeout=10)
        if event.outcome != "ready":  # a folder made first, its file a moment later: one more
            event = await server.wait_for_generation(event.generation + 1, timeout=10)
        assert event.outcome == "ready", (event.summary, server.output)
        assert await served(server) == "created"


async def test_a_template_matched_by_reload_include(tmp_path: Path) -> None:
    write(tmp_path / "templates" / "page.html", "<p>one</p>\n")
    # read once at import, as template loaders that cache do: only a reload shows an edit
    write(
        tmp_path / "main.py",
        app_serving(
            "PAGE",
            "import pathlib\n"
            'PAGE = (pathlib.Path(__file__).parent / "templates" / "page.html").read_text().strip()',
        ),
    )
    async with Reloader(
        "main:app", app_dir=tmp_path, reload_includes=("*.html",), poll_interval=30.0
    ) as server:
        assert await served(server) == "<p>one</p>"
        await edit_and_check(
            server, tmp_path / "templates" / "page.html", "<p>two</p>\n", "<p>two</p>", by_hand=False
        )


async def test_a_project_module_that_shadows_a_preloaded_installed_one_is_watched(
    tmp_path: Path, installed: Path
) -> None:
    # The standby preloads the installed module the app imported; once the project has a module
    # of that name, the app imports the project's (as under uvicorn), which must be watched too.
    write(installed / "asgireload_test_shadowed.py", 'VALUE = "installed"\n')
    main = app_serving("shadowed.VALUE", "import asgireload_test_shadowed as shadowed")
    write(tmp_path / "main.py", main)
    async with Reloader("main:app", app_dir=tmp_path) as server:
        assert await served(server) == "installed"
        await until(lambda: "standby" in server.pids, what="a standby, which preloaded it")
        write(tmp_path / "asgireload_test_shadowed.py", 'VALUE = "project"\n')
        await edit_and_check(server, tmp_path / "main.py", main + "\n", "project", by_hand=False)
        for number in (2, 3):
            await until(lambda: "standby" in server.pids, what="a standby")
            module = tmp_path / "asgireload_test_shadowed.py"
            await edit_and_check(
                server, module, f'VALUE = "project {number}"\n', f"project {number}", by_hand=False
            )


ENVLIB = 'import os\nVALUE = os.environ.get("GREETING", "unset")\n'


async def test_a_library_that_reads_the_env_file_at_import(tmp_path: Path, installed: Path) -> None:
    write(installed / "asgireload_test_envlib.py", ENVLIB)
    write(tmp_path / ".env", "GREETING=hello\n")
    write(tmp_path / "main.py", app_serving("envlib.VALUE", "import asgireload_test_envlib as envlib"))
    async with Reloader("main:app", app_dir=tmp_path, env_file=tmp_path / ".env") as server:
        assert await served(server) == "hello"
        # generation 2 comes from the standby, which preloaded the library: it saw the file too
        await until(lambda: "standby" in server.pids, what="a standby")
        event = await server.edit(tmp_path / "main.py", (tmp_path / "main.py").read_text() + "\n")
        assert event.outcome == "ready"
        assert await served(server) == "hello"
        # a new value reaches the library: the standby that imported it with the old one is replaced
        event = await server.edit(tmp_path / ".env", "GREETING=bye\n")
        assert event.outcome == "ready"
        assert await served(server) == "bye"


MANY = 8000


async def test_an_app_importing_8000_installed_modules_reloads(tmp_path: Path, installed: Path) -> None:
    package = "asgireload_test_a_package_with_a_rather_long_name_for_its_many_modules"
    folder = installed / package
    names = [f"module_with_a_long_name_to_fill_the_preload_list_{i:05d}" for i in range(MANY)]
    write(folder / "__init__.py", "")
    for name in names:
        (folder / f"{name}.py").write_text("")
    # one module imports them all, so the app's own import stays short
    write(folder / "everything.py", "".join(f"from . import {name}\n" for name in names))
    write(tmp_path / "main.py", app_serving("VALUE", f'import {package}.everything\nVALUE = "one"'))
    async with Reloader("main:app", app_dir=tmp_path, start_timeout=60) as server:
        assert await served(server) == "one"
        await until(lambda: "standby" in server.pids, timeout=60, what="a standby")
        event = await server.edit(
            tmp_path / "main.py",
            app_serving("VALUE", f'import {package}.everything\nVALUE = "two"'),
            timeout=60,
        )
        assert event.outcome == "ready", (event.summary, server.output[-2000:])
        assert await served(server) == "two"
        assert "internal error" not in server.output
