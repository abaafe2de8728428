"""End to end: the project layer re-runs what changed, inherits the rest, and never serves stale code.

Every test edits files and checks the body served after the reload: a layer that held a changed
module (or what depends on it) would serve the old value, and the test fails.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import httpx
import pytest

from .conftest import write
from .test_cli import DEADLINE, Cli, client, run_cli, write_atomically

pytestmark = pytest.mark.skipif(
    not hasattr(__import__("os"), "pidfd_open"), reason="the fork server (and its layers) needs Linux"
)

MAIN = """\
import cyc_a
import patcher
import target
import routes
from routes import items
from services import s1, s2


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/lazy":
        import lazymod
        body = lazymod.VALUE
    elif scope["path"] == "/shared":
        body = s1.VALUE + "+" + s2.VALUE
    elif scope["path"] == "/patched":
        body = target.VALUE
    elif scope["path"] == "/cycle":
        body = cyc_a.VALUE
    elif scope["path"] == "/all":
        body = ",".join(sorted(routes.NAMES))
    else:
        body = items.VALUE
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})
"""

HEAVY = """\
import os
with open(os.path.join(os.path.dirname(__file__), "heavy_runs.txt"), "a") as counter:
    counter.write("ran\\n")  # the stand-in for a 1 s model load: counted, not timed
MODEL = "weights"
"""


ARGS = ("main:app", "--port", "0", "--log-level", "debug", "--lifespan", "off")


def project(folder: Path) -> None:
    """main -> routes (whose __init__ imports every route) -> services -> models, and beside it
    a cycle, a module patching another, a lazily imported module and a heavy import."""
    write(folder / "main.py", MAIN)
    write(folder / "heavy.py", HEAVY)
    write(folder / "routes/__init__.py", "from . import items, r1, r2\nNAMES = ['items', 'r1', 'r2']\n")
    write(folder / "routes/items.py", "import heavy\nVALUE = 'v0'\n")
    write(folder / "routes/r1.py", "from services import s1\n")
    write(folder / "routes/r2.py", "from services import s2\n")
    write(folder / "services/__init__.py", "")
    write(folder / "services/s1.py", "from models import shared\nVALUE = 's1:' + shared.VALUE\n")
    write(folder / "services/s2.py", "from models import shared\nVALUE = 's2:' + shared.VALUE\n")
    write(folder / "models/__init__.py", "")
    write(folder / "models/shared.py", "VALUE = 'm0'\n")
    write(folder / "cyc_a.py", "import cyc_b\nVALUE = 'a0+' + cyc_b.VALUE\n")
    write(folder / "cyc_b.py", "import cyc_a\nVALUE = 'b0'\n")
    write(folder / "target.py", "VALUE = 't0'\n")
    write(folder / "patcher.py", "import target\ntarget.VALUE = 'patched-' + target.VALUE\n")
    write(folder / "lazymod.py", "VALUE = 'lazy0'\n")


def heavy_runs(folder: Path) -> int:
    path = folder / "heavy_runs.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def forked_from_a_layer(cli: Cli, since: int, holding: int | None = None) -> None:
    """Wait for a worker forked from a project layer (that holds `holding` modules, if given), said
    after line `since` of the output (after an edit that made the standby's layer unfit: the next
    standby, that the next edit loads)."""
    held = r"\d+" if holding is None else str(holding)
    forked = re.compile(rf"is forked from the project layer \(pid \d+, {held} project modules\)")
    async with asyncio.timeout(DEADLINE), cli._changed:
        while not any(forked.search(line) for _, line in cli.lines[since:]):
            await cli._changed.wait()


def reloaded(generation: int) -> str:
    return rf"Reloaded in \d+ ms \(generation {generation}\): .* re-ran (\d+) of (\d+) project modules$"


async def test_a_route_edited_again_runs_the_route_alone_and_never_the_heavy_module(tmp_path: Path) -> None:
    project(tmp_path)
    async with run_cli(tmp_path, *ARGS) as cli:
        port = await cli.started()
        url = f"http://127.0.0.1:{port}"
        async with client() as http:
            assert (await http.get(url)).text == "v0"
            mark = len(cli.lines)
            write_atomically(tmp_path / "routes/items.py", "import heavy\nVALUE = 'v1'\n")
            await cli.wait_for_line(reloaded(2))
            assert (await http.get(url)).text == "v1"
            # the layer prepared for this edit (all but main, routes, routes.items): the warm
            # worker is forked from it (a layer that read routes/items.py after the edit holds it)
            await forked_from_a_layer(cli, mark, holding=12)
            runs = heavy_runs(tmp_path)
            for generation, value in ((3, "v2"), (4, "v3")):
                write_atomically(tmp_path / "routes/items.py", f"import heavy\nVALUE = '{value}'\n")
                match = await cli.wait_for_line(reloaded(generation))
                assert (await http.get(url)).text == value
                ran, total = int(match[1]), int(match[2])
                assert ran <= 3 < total, cli.transcript()  # main, routes, routes.items
                assert heavy_runs(tmp_path) == runs, cli.transcript()  # inherited, never run again
            assert (await http.get(f"{url}/all")).text == "items,r1,r2"  # the package ran again whole


async def test_a_held_model_edited_is_always_served_fresh(tmp_path: Path) -> None:
    project(tmp_path)
    async with run_cli(tmp_path, *ARGS) as cli:
        port = await cli.started()
        url = f"http://127.0.0.1:{port}"
        async with client() as http:
            generation = 1
            for round_ in range(3):
                # a route edit (the layer then holds the model), then the model itself
                generation += 1
                mark = len(cli.lines)
                write_atomically(tmp_path / "routes/items.py", f"import heavy\nVALUE = 'r{round_}'\n")
                await cli.wait_for_line(reloaded(generation))
                await forked_from_a_layer(cli, mark)  # one that holds the model
                generation += 1
                write_atomically(tmp_path / "models/shared.py", f"VALUE = 'm{round_ + 1}'\n")
                await cli.wait_for_line(reloaded(generation))
                assert (await http.get(f"{url}/shared")).text == f"s1:m{round_ + 1}+s2:m{round_ + 1}"
                assert (await http.get(url)).text == f"r{round_}"


async def test_a_patched_module_a_cycle_and_a_lazy_import_are_served_fresh(tmp_path: Path) -> None:
    project(tmp_path)
    # (watched from the start: a lazy import is reported up to 0.5 s after it ran, and an edit
    # before that is not seen, with or without a layer)
    async with run_cli(tmp_path, *ARGS, "--reload-include", "lazymod.py") as cli:
        port = await cli.started()
        url = f"http://127.0.0.1:{port}"
        async with client() as http:
            assert (await http.get(f"{url}/lazy")).text == "lazy0"
            edits = [
                ("target.py", "VALUE = 't1'\n", "/patched", "patched-t1"),
                ("cyc_b.py", "import cyc_a\nVALUE = 'b1'\n", "/cycle", "a0+b1"),
                ("lazymod.py", "VALUE = 'lazy1'\n", "/lazy", "lazy1"),
                ("target.py", "VALUE = 't2'\n", "/patched", "patched-t2"),
            ]
            mark = 0
            for generation, (name, source, path, expected) in enumerate(edits, start=2):
                await forked_from_a_layer(cli, mark)  # (one that holds the file about to change)
                mark = len(cli.lines)
                write_atomically(tmp_path / name, source)
                await cli.wait_for_line(reloaded(generation))
                assert (await http.get(f"{url}{path}")).text == expected, cli.transcript()


async def served_after(cli: Cli, http: httpx.AsyncClient, url: str, since: int, expected: str) -> None:
    """The reload that took in routes/__init__.py (a save of two files may come as two bursts)
    serves `expected` at once: never first the layer's old package."""
    changed = re.compile(r"Reloaded in \d+ ms \(generation \d+\): .*routes/__init__\.py.* changed")
    async with asyncio.timeout(DEADLINE), cli._changed:
        while not any(changed.search(line) for stream, line in cli.lines[since:] if stream == "stderr"):
            await cli._changed.wait()
    assert (await http.get(url)).text == expected, cli.transcript()


async def test_a_deleted_module_and_a_renamed_one(tmp_path: Path) -> None:
    project(tmp_path)
    async with run_cli(tmp_path, *ARGS) as cli:
        port = await cli.started()
        url = f"http://127.0.0.1:{port}/all"
        async with client() as http:
            await forked_from_a_layer(cli, 0)  # it holds routes and its submodules
            mark = len(cli.lines)
            (tmp_path / "routes/r2.py").rename(tmp_path / "routes/r3.py")
            package = "from . import items, r1, r3\nNAMES = ['items', 'r1', 'r3']\n"
            write_atomically(tmp_path / "routes/__init__.py", package)
            await served_after(cli, http, url, mark, "items,r1,r3")
            await forked_from_a_layer(cli, mark)
            mark = len(cli.lines)
            (tmp_path / "routes/r3.py").unlink()
            write_atomically(tmp_path / "routes/__init__.py", "from . import items, r1\nNAMES = ['gone']\n")
            await served_after(cli, http, url, mark, "gone")


async def test_a_thread_at_import_is_not_held_and_said_once(tmp_path: Path) -> None:
    project(tmp_path)
    write(
        tmp_path / "threaded.py",
        "import threading\nstop = threading.Event()\n"
        "threading.Thread(target=stop.wait, daemon=True).start()\nVALUE = 'th0'\n",
    )
    write(tmp_path / "uses_thread.py", "import threaded\nVALUE = threaded.VALUE\n")
    write(tmp_path / "loopy.py", "import asyncio\nasyncio.get_running_loop()  # only in a worker\n")
    source = MAIN.replace("import cyc_a\n", "import cyc_a\nimport uses_thread\nimport loopy\n")
    source = source.replace("body = items.VALUE", 'body = items.VALUE + "/" + uses_thread.VALUE')
    write(tmp_path / "main.py", source)
    async with run_cli(tmp_path, *ARGS) as cli:
        port = await cli.started()
        url = f"http://127.0.0.1:{port}"
        async with client() as http:
            assert (await http.get(url)).text == "v0/th0"
            await forked_from_a_layer(cli, 0)
            write_atomically(tmp_path / "threaded.py", "VALUE = 'th1'\n")
            await cli.wait_for_line(reloaded(2))
            assert (await http.get(url)).text == "v0/th1"
            write_atomically(tmp_path / "routes/items.py", "import heavy\nVALUE = 'v1'\n")
            await cli.wait_for_line(reloaded(3))
            assert (await http.get(url)).text == "v1/th1"
    said = [line for line in cli.stderr if "does not hold threaded" in line]
    assert len(said) == 1, cli.transcript()
    assert said[0].startswith("INFO")
    assert "it started a thread at import" in said[0]
    assert any("does not hold loopy: RuntimeError" in line for line in cli.stderr if line.startswith("DEBUG"))


@pytest.mark.parametrize("option", ["--no-project-layer", "--no-fork"])
async def test_turned_off_every_reload_runs_everything(tmp_path: Path, option: str) -> None:
    project(tmp_path)
    async with run_cli(tmp_path, *ARGS, option) as cli:
        port = await cli.started()
        async with client() as http:
            for generation in (2, 3):
                write_atomically(tmp_path / "routes/items.py", f"import heavy\nVALUE = 'g{generation}'\n")
                match = await cli.wait_for_line(reloaded(generation))
                assert match[1] == match[2], cli.transcript()
                assert (await http.get(f"http://127.0.0.1:{port}")).text == f"g{generation}"
    assert not any("project layer" in line for line in cli.stderr), cli.transcript()
    assert heavy_runs(tmp_path) == 3  # every generation ran it


DJANGO_MODELS = """\
import os
from django.db import models
with open(os.path.join(os.path.dirname(__file__), "model_runs.txt"), "a") as counter:
    counter.write("ran\\n")  # counts the body's runs: a view edit must not run it again
class Item(models.Model):
    name = models.CharField(max_length=10)
"""

DJANGO_FILES = {
    "mysite/__init__.py": "",
    "mysite/settings.py": (
        "SECRET_KEY = 'x'\nDEBUG = True\nALLOWED_HOSTS = ['*']\nDATABASES = {}\nUSE_TZ = True\n"
        "INSTALLED_APPS = ['django.contrib.contenttypes', 'django.contrib.auth', 'django.contrib.admin',\n"
        "    'django.contrib.sessions', 'django.contrib.messages', 'shop']\n"
        "ROOT_URLCONF = 'mysite.urls'\nGREETING = 's0'\n"
    ),
    "mysite/urls.py": (
        "from django.urls import path\nfrom shop import views\nurlpatterns = [path('', views.index)]\n"
    ),
    "mysite/asgi.py": (
        "import os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"
        "from django.core.asgi import get_asgi_application\napplication = get_asgi_application()\n"
    ),
    "shop/__init__.py": "",
    "shop/admin.py": (
        "from django.contrib import admin\nfrom .models import Item\nadmin.site.register(Item)\n"
    ),
    "shop/helpers.py": "LABEL = 'h0'\n",
    "shop/models.py": DJANGO_MODELS,
    "shop/views.py": (
        "from django.conf import settings\nfrom django.http import HttpResponse\n"
        "from .models import Item\nfrom .helpers import LABEL\n"
        "def index(request):\n"
        "    fields = '+'.join(f.name for f in Item._meta.get_fields())\n"
        "    return HttpResponse(':'.join((LABEL, fields, settings.GREETING, 'v0')))\n"
    ),
}
DJANGO_APP = ("mysite.asgi:application", "--port", "0", "--log-level", "debug", "--lifespan", "off")


def django_project(folder: Path) -> None:
    if os.environ.get("CI") != "true":  # CI installs the test extra, Django included: never skipped there
        pytest.importorskip("django")
    for name, source in DJANGO_FILES.items():
        write(folder / name, source)


def model_runs(folder: Path) -> int:
    return len((folder / "shop/model_runs.txt").read_text().splitlines())


async def forked_from_a_django_layer(cli: Cli, since: int) -> None:
    """Wait for a standby forked from a layer that ran django.setup() (prepared after line `since`)."""
    prepared = re.compile(r"Preparing a project layer of (\d+) project modules after django\.setup\(\)")
    async with asyncio.timeout(DEADLINE), cli._changed:
        while not (found := [m for _, line in cli.lines[since:] if (m := prepared.search(line))]):
            await cli._changed.wait()
    await forked_from_a_layer(cli, since, holding=int(found[-1][1]))


async def test_a_django_view_edit_runs_no_model_and_every_edit_is_served_fresh(tmp_path: Path) -> None:
    django_project(tmp_path)
    views = DJANGO_FILES["shop/views.py"]
    async with run_cli(tmp_path, *DJANGO_APP, "--no-live-reload") as cli:
        port = int((await cli.wait_for_line(r"serving on http://127\.0\.0\.1:(\d+)"))[1])
        url = f"http://127.0.0.1:{port}/"
        async with client() as http:
            assert (await http.get(url)).text == "h0:id+name:s0:v0"
            await forked_from_a_django_layer(cli, 0)  # it holds the settings, the models, the admin
            runs, generation = model_runs(tmp_path), 1
            for value in ("v1", "v2"):
                generation += 1
                write_atomically(tmp_path / "shop/views.py", views.replace("'v0'", f"'{value}'"))
                match = await cli.wait_for_line(reloaded(generation))
                assert (await http.get(url)).text == f"h0:id+name:s0:{value}", cli.transcript()
                assert int(match[1]) < int(match[2]), cli.transcript()  # (the models were inherited)
                assert model_runs(tmp_path) == runs, cli.transcript()  # the layer's, never run again
            edits = [  # each of a file the layer held: never served stale
                (
                    "shop/models.py",
                    DJANGO_MODELS + "    extra = models.IntegerField(default=0)\n",
                    "id+name+extra:s0",
                ),
                (
                    "mysite/settings.py",
                    DJANGO_FILES["mysite/settings.py"].replace("'s0'", "'s1'"),
                    "id+name+extra:s1",
                ),
                ("shop/helpers.py", "LABEL = 'h1'\n", "id+name+extra:s1"),  # (imported by the view)
            ]
            for name, source, expected in edits:
                generation += 1
                mark = len(cli.lines)
                write_atomically(tmp_path / name, source)
                await cli.wait_for_line(reloaded(generation))
                label = "h1" if name == "shop/helpers.py" else "h0"
                assert (await http.get(url)).text == f"{label}:{expected}:v2", cli.transcript()
                # then view edits: the first sets Django up in the next layer again (with that file:
                # the last change's files are left out), the second is forked from it
                for step in ("first", "second"):
                    generation += 1
                    mark = len(cli.lines)
                    runs = model_runs(tmp_path)
                    write_atomically(
                        tmp_path / "shop/views.py", views.replace("'v0'", "'v2'") + f"# {generation}\n"
                    )
                    await cli.wait_for_line(reloaded(generation))
                    assert (await http.get(url)).text == f"{label}:{expected}:v2", cli.transcript()
                    if step == "first" and name != "shop/helpers.py":  # (a layer holds no helper)
                        await forked_from_a_django_layer(cli, mark)
                    else:
                        assert model_runs(tmp_path) == runs, cli.transcript()
    assert not any("already registered" in line or "Conflicting" in line for line in cli.stderr), (
        cli.transcript()
    )


async def test_a_module_under_two_names_and_one_shadowing_an_installed_module(tmp_path: Path) -> None:
    # ctypes: imported by the template (not by uvicorn), so under `uvicorn APP` the project's wins
    write(tmp_path / "ctypes.py", "VALUE = 'c0'\n")
    write(tmp_path / "lib/__init__.py", "import os, sys\nsys.path.insert(0, os.path.dirname(__file__))\n")
    write(tmp_path / "lib/util.py", "VALUE = 'u0'\n")
    write(
        tmp_path / "main.py",
        "import ctypes\nimport lib.util\nimport util\n\n"
        "async def app(scope, receive, send):\n"
        "    body = '/'.join((ctypes.VALUE, lib.util.VALUE, util.VALUE)).encode()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': body})\n",
    )
    async with run_cli(tmp_path, *ARGS) as cli:
        port = await cli.started()
        url = f"http://127.0.0.1:{port}/"
        async with client() as http:
            assert (await http.get(url)).text == "c0/u0/u0"
            mark = 0
            edits = [
                ("lib/util.py", "VALUE = 'u1'\n", "c0/u1/u1"),
                ("ctypes.py", "VALUE = 'c1'\n", "c1/u1/u1"),
            ]
            for generation, (name, source, expected) in enumerate(edits, start=2):
                await forked_from_a_layer(cli, mark)  # it holds both
                mark = len(cli.lines)
                write_atomically(tmp_path / name, source)
                await cli.wait_for_line(reloaded(generation))
                assert (await http.get(url)).text == expected, cli.transcript()


async def test_a_django_app_naming_other_settings_is_never_served_the_layers(tmp_path: Path) -> None:
    django_project(tmp_path)
    write(tmp_path / "mysite/other.py", "from .settings import *\nGREETING = 'other'\n")
    asgi = DJANGO_FILES["mysite/asgi.py"].replace("mysite.settings", "mysite.other")
    async with run_cli(tmp_path, *DJANGO_APP, "--no-live-reload") as cli:
        port = int((await cli.wait_for_line(r"serving on http://127\.0\.0\.1:(\d+)"))[1])
        url = f"http://127.0.0.1:{port}/"
        async with client() as http:
            assert (await http.get(url)).text == "h0:id+name:s0:v0"
            await forked_from_a_django_layer(cli, 0)
            write_atomically(tmp_path / "mysite/asgi.py", asgi)
            # the standby's layer set Django up with mysite.settings: it must not serve them, and
            # the generation is loaded again in a fresh worker, with no second save
            await cli.wait_for_line(
                r"Generation 2: the project layer set Django up with mysite\.settings .*; loading it again"
            )
            await cli.wait_for_line(reloaded(2))
            assert (await http.get(url)).text == "h0:id+name:other:v0", cli.transcript()
