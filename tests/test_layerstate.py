"""End to end: what a held module built at import is what a fresh process would build now.

Each test primes a project layer by editing a route twice (the next generations are forked from a
layer holding the module under test), then changes what that module's import depends on without
editing the module itself: a variable the app's module sets, a data file it reads, its package's
`__init__`. A layer that kept the old state serves the old value, and the test fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import write
from .test_cli import client, run_cli, write_atomically
from .test_projectlayer import ARGS, forked_from_a_layer, reloaded

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the fork server needs Linux")

APP = """\
import os
{setenv}
import pkg.sub
import held
import routes


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = {{"/held": lambda: held.VALUE, "/pkg": lambda: pkg.X + "|" + pkg.sub.VALUE}}.get(
        scope["path"], lambda: routes.VALUE
    )()
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": body.encode()}})
"""

HELD = """\
import json
import os
import pathlib

DATA = json.loads((pathlib.Path(__file__).parent / "data.json").read_text())
VALUE = os.environ.get("MODE", "UNSET") + "/" + DATA["value"]
"""


def app_setting(mode: str | None) -> str:
    """The app's module, setting MODE before it imports anything (as `load_dotenv()` does), or not."""
    return APP.format(setenv=f"os.environ.setdefault('MODE', {mode!r})" if mode else "")


def project(folder: Path) -> None:
    write(folder / "main.py", app_setting(None))
    write(folder / "held.py", HELD)
    write(folder / "data.json", '{"value": "d0"}')
    write(folder / "routes.py", "VALUE = 'r0'\n")
    write(folder / "pkg/__init__.py", "X = 'i0'\n")
    write(folder / "pkg/sub.py", "VALUE = 's'\n")


async def test_held_state_follows_the_app_the_data_and_the_package(tmp_path: Path) -> None:
    project(tmp_path)
    async with run_cli(tmp_path, *ARGS) as cli:
        port = await cli.started()
        url = f"http://127.0.0.1:{port}"
        async with client() as http:
            assert (await http.get(f"{url}/held")).text == "UNSET/d0"
            generation, mark = 1, 0
            for value in ("r1", "r2"):  # the layer leaves routes.py out: it holds held.py and pkg
                generation += 1
                mark = len(cli.lines)
                write_atomically(tmp_path / "routes.py", f"VALUE = {value!r}\n")
                await cli.wait_for_line(reloaded(generation))
            checks = [
                # a data file held.py read at import (not watched: nothing reloads), then a reload
                ("data.json", '{"value": "d1"}', None, None),
                ("routes.py", "VALUE = 'r3'\n", "/held", "UNSET/d1"),
                # the app's module now sets MODE before it imports held.py, which read it unset
                ("main.py", app_setting("prod"), "/held", "prod/d1"),
                ("routes.py", "VALUE = 'r4'\n", "/held", "prod/d1"),
                # `import pkg.sub` after pkg/__init__.py ran again, its submodule held
                ("pkg/__init__.py", "X = 'i1'\n", "/pkg", "i1|s"),
                ("pkg/__init__.py", "X = 'i2'\n", "/pkg", "i2|s"),
                ("pkg/__init__.py", "X = 'i3'\n", "/pkg", "i3|s"),
            ]
            for name, source, path, expected in checks:
                await forked_from_a_layer(cli, mark)  # the standby that takes the next edit is a layer's
                write_atomically(tmp_path / name, source)
                if path is None:
                    continue  # (a file no generation watches: nothing reloads)
                generation += 1
                mark = len(cli.lines)
                await cli.wait_for_line(reloaded(generation))
                assert (await http.get(f"{url}{path}")).text == expected, cli.transcript()


async def test_an_exit_handler_registered_at_import_keeps_the_module_out_of_the_layer(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "main.py",
        "import os\nimport scratch\nimport routes\n\n\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n        return\n"
        "    body = 'present' if os.path.exists(scratch.FILE) else 'gone'\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': body.encode()})\n",
    )
    # a module that makes a folder at import and removes it at exit: in a fresh process each
    # generation has its own; held by a layer, the first generation to exit would remove it
    write(
        tmp_path / "scratch.py",
        "import atexit, os, shutil, tempfile\n"
        "FOLDER = tempfile.mkdtemp(prefix='asgireload-test-')\n"
        "atexit.register(shutil.rmtree, FOLDER, True)\n"
        "FILE = os.path.join(FOLDER, 'f')\n"
        "open(FILE, 'w').close()\n",
    )
    write(tmp_path / "routes.py", "VALUE = 0\n")
    async with run_cli(tmp_path, *ARGS) as cli:
        port = await cli.started()
        async with client() as http:
            for generation in range(2, 6):
                write_atomically(tmp_path / "routes.py", f"VALUE = {generation}\n")
                await cli.wait_for_line(reloaded(generation))
                assert (await http.get(f"http://127.0.0.1:{port}/")).text == "present", cli.transcript()
        said = [line for _, line in cli.lines if "does not hold scratch" in line]
        assert said, cli.transcript()
        assert "exit handler" in said[0]


async def test_a_module_created_where_a_held_module_looked_is_found(tmp_path: Path) -> None:
    write(
        tmp_path / "main.py",
        "import optional\nimport routes\n\n\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n        return\n"
        "    body = optional.FOUND + '|' + ','.join(optional.PLUGINS)\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': body.encode()})\n",
    )
    # an optional import and a plugin folder listed at import: what a fresh process finds changes
    # when a file is created, with no edit to the module itself
    write(
        tmp_path / "optional.py",
        "import pkgutil\nimport plugins\n"
        "try:\n    import fastlib\n    FOUND = 'fast'\nexcept ImportError:\n    FOUND = 'slow'\n"
        "PLUGINS = sorted(info.name for info in pkgutil.iter_modules(plugins.__path__))\n",
    )
    write(tmp_path / "plugins/__init__.py", "")
    write(tmp_path / "plugins/a.py", "")
    write(tmp_path / "routes.py", "VALUE = 0\n")
    async with run_cli(tmp_path, *ARGS) as cli:
        port = await cli.started()
        url = f"http://127.0.0.1:{port}/"
        async with client() as http:
            assert (await http.get(url)).text == "slow|a"
            generation, mark = 1, 0
            steps = [("plugins/b.py", "slow|a,b"), ("fastlib.py", "fast|a,b")]
            for value in range(1, 3):  # a layer that leaves routes.py out, holding optional.py
                generation += 1
                mark = len(cli.lines)
                write_atomically(tmp_path / "routes.py", f"VALUE = {value}\n")
                await cli.wait_for_line(reloaded(generation))
            for created, expected in steps:
                await forked_from_a_layer(cli, mark)
                write(tmp_path / created, "")  # (a new file: no generation watches it)
                generation += 1
                mark = len(cli.lines)
                write_atomically(tmp_path / "routes.py", f"VALUE = {generation}\n")
                await cli.wait_for_line(reloaded(generation))
                assert (await http.get(url)).text == expected, cli.transcript()


async def test_a_registry_filled_by_a_module_run_again_is_read_as_in_a_fresh_process(tmp_path: Path) -> None:
    write(
        tmp_path / "main.py",
        "import routes\nimport held\n\n\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': held.VALUE.encode()})\n",
    )
    write(tmp_path / "registry.py", "NAMES = []\n")
    # routes.py (edited, so run again by every generation) fills the registry before held.py,
    # which the layer would import alone, reads it
    write(tmp_path / "routes.py", "import registry\nregistry.NAMES.append('items')\nVALUE = 0\n")
    write(tmp_path / "held.py", "import registry\nVALUE = ','.join(registry.NAMES) or 'EMPTY'\n")
    async with run_cli(tmp_path, *ARGS) as cli:
        port = await cli.started()
        async with client() as http:
            for generation in range(2, 6):
                if generation == 4:  # a layer prepared for routes.py: it holds held.py, or says why not
                    await cli.wait_for_line(r"is forked from the project layer|does not hold registry")
                source = f"import registry\nregistry.NAMES.append('items')\nVALUE = {generation}\n"
                write_atomically(tmp_path / "routes.py", source)
                await cli.wait_for_line(reloaded(generation))
                assert (await http.get(f"http://127.0.0.1:{port}/")).text == "items", cli.transcript()
