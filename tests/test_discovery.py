"""`asgireload` with no APP, or with a file path: the app found by reading the source.

The unit tests read sources that need nothing installed; the end-to-end ones start the real
CLI in a project folder (FastAPI really installed, from the test extra) and talk HTTP to it.
A module that writes a file when imported proves the supervisor never imports user code.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from asgireload.discovery import discover, from_file
from asgireload.errors import ConfigError

from .conftest import PLAIN_APP, write
from .test_cli import client, fails_with_one_line, run_cli

FASTAPI_APP = """
from fastapi import FastAPI

app = FastAPI()


@app.get("/")
def root() -> dict[str, str]:
    return {"from": __name__}
"""

WSGI_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("wsgi " + __name__).encode()]
"""

STARLETTE_API = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def home(request):
    return PlainTextResponse("starlette " + __name__)


api = Starlette(routes=[Route("/", home)])
"""

MARKS_IMPORT = """
import os

with open(os.environ["IMPORT_LOG"], "a") as log:
    log.write(f"{__name__} {os.getpid()}\\n")
"""

DJANGO_MANAGE = """
#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
"""

# Django's asgi.py, with get_asgi_application stood in by a plain app that shows the settings
# module it was started with (the test is about finding it, not about running Django).
DJANGO_ASGI = """
import os


def get_asgi_application():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = os.environ.get("DJANGO_SETTINGS_MODULE", "unset").encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


application = get_asgi_application()
"""


# ------------------------------------------------------------------------ reading the source


def test_a_fastapi_main(tmp_path: Path) -> None:
    write(tmp_path / "main.py", FASTAPI_APP)
    found = discover(tmp_path)
    assert (found.app, found.app_dir, found.others) == ("main:app", str(tmp_path), ())
    message = found.message(str(tmp_path))
    assert "main:app in main.py" in message
    assert "asgireload main:app" in message
    assert 'app = "main:app" under [tool.asgireload]' in message


def test_a_framework_instance_under_another_name(tmp_path: Path) -> None:
    write(tmp_path / "api.py", STARLETTE_API)
    assert discover(tmp_path).app == "api:api"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("async def app(scope, receive, send):\n    pass\n", "app"),
        ("def application(environ, start_response):\n    pass\n", "application"),
        ("from litestar import Litestar\nserver = Litestar([])\n", "server"),
        ("import quart\nweb = quart.Quart(__name__)\n", "web"),
        ("app: object = make()\n", "app"),
        ("from web.factory import app\n", "app"),
        ("from web import server as application\n", "application"),
        (
            "try:\n    from fastapi import FastAPI\nexcept ImportError:\n    raise\n"
            "else:\n    app = FastAPI()\n",
            "app",
        ),
        ("from fastapi import FastAPI\na = FastAPI()\nb = FastAPI()\napplication = a\n", "application"),
    ],
)
def test_what_counts_as_an_app(tmp_path: Path, source: str, name: str) -> None:
    write(tmp_path / "main.py", source)
    assert discover(tmp_path).app == f"main:{name}"


@pytest.mark.parametrize(
    "source",
    [
        "def create_app():\n    pass\n",  # a factory needs --factory and a name
        "x = 1\n",
        "class app:\n    pass\n",
    ],
)
def test_what_does_not(tmp_path: Path, source: str) -> None:
    write(tmp_path / "main.py", source)
    with pytest.raises(ConfigError, match=r"no app found .* \(looked at main\.py"):
        discover(tmp_path)


@pytest.mark.parametrize(
    ("source", "named"),
    [
        (
            "from flask import Flask\nfrom fastapi import FastAPI\nweb = Flask(__name__)\napi = FastAPI()\n",
            "main:web (Flask), main:api (FastAPI)",
        ),
        ("from fastapi import FastAPI\na = FastAPI()\nb = FastAPI()\n", "main:a (FastAPI), main:b (FastAPI)"),
        (
            "import starlette.applications as s\nimport quart\nif True:\n    x = s.Starlette()\n"
            "y = quart.Quart(__name__)\nfrom bottle import Bottle\nz = Bottle()\n",
            "main:x (Starlette), main:y (Quart), main:z (Bottle)",
        ),
    ],
)
def test_several_apps_in_a_file_are_all_named(tmp_path: Path, source: str, named: str) -> None:
    write(tmp_path / "main.py", source)
    with pytest.raises(ConfigError) as excinfo:
        discover(tmp_path)
    message = str(excinfo.value)
    assert f"main.py has several apps ({named})" in message
    assert "asgireload main:" in message
    with pytest.raises(ConfigError, match=re.escape(f"has several apps ({named})")):
        from_file(tmp_path / "main.py")
    first = named.partition(" ")[0]
    assert from_file(f"{tmp_path / 'main.py'}:{first.partition(':')[2]}").app == first


def test_several_apps_after_a_file_with_one_are_named_as_also_seen(tmp_path: Path) -> None:
    write(tmp_path / "main.py", FASTAPI_APP)
    write(
        tmp_path / "api.py",
        "from flask import Flask\nfrom fastapi import FastAPI\nw = Flask('x')\na = FastAPI()\n",
    )
    found = discover(tmp_path)
    assert found.app == "main:app"
    assert found.others == ("api:w (api.py)", "api:a (api.py)")


def test_the_app_package_and_src_layouts(tmp_path: Path) -> None:
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "main.py", FASTAPI_APP)
    found = discover(tmp_path)
    assert (found.app, found.app_dir) == ("app.main:app", str(tmp_path))
    other = tmp_path / "other"
    write(other / "src" / "shop" / "__init__.py", "")
    write(other / "src" / "shop" / "api.py", FASTAPI_APP)
    found = discover(other)
    assert (found.app, found.app_dir) == ("shop.api:app", str(other / "src"))
    assert "--app-dir src" in found.message(str(other))
    assert 'app_dir = "src"' in found.message(str(other))


def test_two_candidates_the_first_wins_and_both_are_named(tmp_path: Path) -> None:
    write(tmp_path / "main.py", FASTAPI_APP)
    write(tmp_path / "api.py", STARLETTE_API)
    found = discover(tmp_path)
    assert found.app == "main:app"
    assert found.others == ("api:api (api.py)",)
    assert "also saw api:api (api.py)" in found.message(str(tmp_path))


def test_django_settings_assigned_directly(tmp_path: Path) -> None:
    write(tmp_path / "manage.py", 'import os\nos.environ["DJANGO_SETTINGS_MODULE"] = "conf.settings"\n')
    write(tmp_path / "src" / "conf" / "asgi.py", DJANGO_ASGI)
    found = discover(tmp_path)
    assert (found.app, found.app_dir) == ("conf.asgi:application", str(tmp_path / "src"))


def test_django_via_manage_py(tmp_path: Path) -> None:
    write(tmp_path / "manage.py", DJANGO_MANAGE)
    write(tmp_path / "mysite" / "__init__.py", "")
    write(tmp_path / "mysite" / "asgi.py", DJANGO_ASGI)
    write(tmp_path / "main.py", PLAIN_APP)  # manage.py says which project this is: it wins
    found = discover(tmp_path)
    assert (found.app, found.app_dir) == ("mysite.asgi:application", str(tmp_path))
    assert found.environment == {"DJANGO_SETTINGS_MODULE": "mysite.settings"}


def test_nothing_found_lists_what_was_looked_at(tmp_path: Path) -> None:
    write(tmp_path / "app.py", "print('no app here')\n")
    write(tmp_path / "src" / "pkg" / "asgi.py", "x = 1\n")
    with pytest.raises(ConfigError) as caught:
        discover(tmp_path)
    text = str(caught.value)
    assert "looked at app.py, src/pkg/asgi.py" in text
    assert "asgireload main:app" in text


def test_a_file_that_does_not_parse_stays_the_candidate(tmp_path: Path) -> None:
    """The worker's import shows the SyntaxError; skipping the file would only say "no app"."""
    write(tmp_path / "main.py", "from fastapi import FastAPI\napp = FastAPI(\n")
    write(tmp_path / "app.py", STARLETTE_API)
    found = discover(tmp_path)
    assert found.app == "main:app"
    assert "does not parse: line 2" in found.message(str(tmp_path))


def test_an_empty_folder_names_the_patterns_searched(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        discover(tmp_path)
    text = str(caught.value)
    assert "looked at ," not in text
    for searched in ("main.py, app.py, api.py, asgi.py", "src/*/", "manage.py"):
        assert searched in text


def test_a_package_folder_is_imported_as_its_package(tmp_path: Path) -> None:
    """`asgireload app` with app/__init__.py: app.main from the folder above, so that
    `from .web import app` in main.py works."""
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "main.py", "from .web import app\n")
    found = discover(tmp_path / "app")
    assert (found.app, found.app_dir) == ("app.main:app", str(tmp_path))


def test_an_app_package_init_is_a_candidate(tmp_path: Path) -> None:
    write(tmp_path / "app" / "__init__.py", "from .web import app\n")
    write(tmp_path / "app" / "web.py", FASTAPI_APP)
    found = discover(tmp_path)
    assert (found.app, found.app_dir) == ("app:app", str(tmp_path))


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("from flask import Flask\napp = Flask(__name__)\n", "app"),
        ("from flask import Flask\nweb = Flask(__name__)\n", "web"),
        (
            "from django.core.wsgi import get_wsgi_application\napplication = get_wsgi_application()\n",
            "application",
        ),
        ("def app(environ, start_response):\n    pass\n", "app"),
    ],
)
def test_a_wsgi_app_is_served_as_wsgi(tmp_path: Path, source: str, name: str) -> None:
    write(tmp_path / "main.py", source)
    found = discover(tmp_path)
    assert (found.app, found.interface) == (f"main:{name}", "wsgi")
    message = found.message(str(tmp_path))
    for said in ("WSGI app", "--interface wsgi", 'interface = "wsgi"'):
        assert said in message


def test_an_asgi_app_keeps_the_interface_open(tmp_path: Path) -> None:
    write(tmp_path / "main.py", "async def app(scope, receive, send):\n    pass\n")
    assert discover(tmp_path).interface is None


def test_the_pin_hint_is_relative_to_the_pyproject_folder(tmp_path: Path) -> None:
    write(tmp_path / "services" / "web" / "main.py", FASTAPI_APP)
    found = discover(tmp_path / "services" / "web")
    cwd = str(tmp_path / "services")
    pinned = dataclasses.replace(found, config_dir=str(tmp_path)).message(cwd)
    assert 'app_dir = "services/web"' in pinned
    assert "--app-dir web" in pinned  # the command line is read against the current folder


def test_a_file_path_with_the_name_in_it(tmp_path: Path) -> None:
    """`asgireload src/main.py:api` (fastapi dev's form) is the module main, name api."""
    write(tmp_path / "src" / "main.py", STARLETTE_API)
    found = from_file(f"{tmp_path}/src/main.py:api")
    assert (found.app, found.app_dir) == ("main:api", str(tmp_path / "src"))
    with pytest.raises(ConfigError, match="not a Python name"):
        from_file(f"{tmp_path}/src/main.py:no-such")


def test_a_file_path(tmp_path: Path) -> None:
    write(tmp_path / "web" / "server.py", STARLETTE_API)
    found = from_file(tmp_path / "web" / "server.py")
    assert (found.app, found.app_dir) == ("server:api", str(tmp_path / "web"))
    write(tmp_path / "proj" / "pkg" / "__init__.py", "")
    write(tmp_path / "proj" / "pkg" / "main.py", FASTAPI_APP)
    found = from_file(tmp_path / "proj" / "pkg" / "main.py")
    assert (found.app, found.app_dir) == ("pkg.main:app", str(tmp_path / "proj"))


@pytest.mark.parametrize(
    ("name", "source", "message"),
    [
        ("nofile.py", None, "is not a Python file"),
        ("notes.txt", "app = 1\n", "is not a Python file"),
        ("my-app.py", FASTAPI_APP, "cannot be imported as a module"),
        ("empty.py", "x = 1\n", "found no app in"),
    ],
)
def test_a_bad_file_path(tmp_path: Path, name: str, source: str | None, message: str) -> None:
    if source is not None:
        write(tmp_path / name, source)
    with pytest.raises(ConfigError, match=message):
        from_file(tmp_path / name)


# ------------------------------------------------------------------------ end to end

SERVING = r"Started (\S+) in \d+ ms, serving on http://127\.0\.0\.1:(\d+) "


async def serves(folder: Path, *args: str, expect_app: str) -> dict[str, str] | str:
    async with run_cli(folder, *args, "--port", "0", env={"IMPORT_LOG": str(folder / "imports.log")}) as cli:
        found = await cli.wait_for_line(r"Found the (?:WSGI )?app (\S+) in ")
        assert found[1] == expect_app, cli.transcript()
        match = await cli.wait_for_line(SERVING)
        assert match[1] == expect_app, cli.transcript()
        async with client() as http:
            response = await http.get(f"http://127.0.0.1:{match[2]}/")
            assert response.status_code == 200, cli.transcript()
            supervisor = cli.pid
        result: dict[str, str] | str
        try:
            result = response.json()
        except ValueError:
            result = response.text
    log = folder / "imports.log"
    if log.exists():
        for line in log.read_text().splitlines():
            assert int(line.split()[1]) != supervisor, f"the supervisor imported user code: {line}"
    return result


async def test_alone_in_a_fastapi_project(tmp_path: Path) -> None:
    write(tmp_path / "main.py", "import marks\n" + FASTAPI_APP)
    write(tmp_path / "marks.py", MARKS_IMPORT)
    assert await serves(tmp_path, expect_app="main:app") == {"from": "main"}
    assert (tmp_path / "imports.log").read_text().split()[0] == "marks"  # the worker imported it


async def test_alone_in_a_src_layout(tmp_path: Path) -> None:
    write(tmp_path / "src" / "shop" / "__init__.py", "")
    write(tmp_path / "src" / "shop" / "main.py", FASTAPI_APP)
    assert await serves(tmp_path, expect_app="shop.main:app") == {"from": "shop.main"}


async def test_alone_in_a_django_project(tmp_path: Path) -> None:
    write(tmp_path / "manage.py", DJANGO_MANAGE)
    write(tmp_path / "mysite" / "__init__.py", "")
    write(tmp_path / "mysite" / "asgi.py", DJANGO_ASGI)
    assert await serves(tmp_path, expect_app="mysite.asgi:application") == "mysite.settings"


async def test_the_env_files_settings_module_wins_over_manage_pys(tmp_path: Path) -> None:
    """As under uvicorn --env-file: the file sets it before asgi.py's setdefault runs."""
    write(tmp_path / "manage.py", DJANGO_MANAGE)
    write(tmp_path / "mysite" / "__init__.py", "")
    write(tmp_path / "mysite" / "asgi.py", DJANGO_ASGI)
    write(tmp_path / ".env", "DJANGO_SETTINGS_MODULE=mysite.settings_dev\n")
    seen = await serves(tmp_path, "--env-file", ".env", expect_app="mysite.asgi:application")
    assert seen == "mysite.settings_dev"


async def test_alone_with_two_candidates_names_both(tmp_path: Path) -> None:
    write(tmp_path / "main.py", FASTAPI_APP)
    write(tmp_path / "api.py", MARKS_IMPORT + STARLETTE_API)  # the one not chosen: never imported
    async with run_cli(tmp_path, "--port", "0", env={"IMPORT_LOG": str(tmp_path / "imports.log")}) as cli:
        line = await cli.wait_for_line(r"Found the app main:app in main\.py \(also saw api:api \(api\.py\)\)")
        assert "asgireload main:app" in line.string
        await cli.wait_for_line(SERVING)
    assert not (tmp_path / "imports.log").exists()


async def test_a_file_path_as_app(tmp_path: Path) -> None:
    write(tmp_path / "main.py", FASTAPI_APP)
    assert await serves(tmp_path, "main.py", expect_app="main:app") == {"from": "main"}
    write(tmp_path / "services" / "web.py", STARLETTE_API)
    assert await serves(tmp_path, "services/web.py", expect_app="web:api") == "starlette web"
    write(tmp_path / "other" / "app.py", STARLETTE_API)
    assert await serves(tmp_path, "other", expect_app="app:api") == "starlette app"  # a folder


async def test_the_config_files_app_wins_over_discovery(tmp_path: Path) -> None:
    write(tmp_path / "main.py", FASTAPI_APP)
    write(tmp_path / "api.py", STARLETTE_API)
    write(tmp_path / "pyproject.toml", '[tool.asgireload]\napp = "api:api"\n')
    async with run_cli(tmp_path, "--port", "0") as cli:
        match = await cli.wait_for_line(SERVING)
        assert match[1] == "api:api", cli.transcript()
    assert not any("Found the app" in line for _, line in cli.lines)


async def test_no_supervisor_import_even_when_the_candidate_fails(tmp_path: Path) -> None:
    """A candidate that is not an app: the worker's import says so and names it; one line."""
    write(tmp_path / "main.py", MARKS_IMPORT + "app = 'not an app'\n")
    env = {"IMPORT_LOG": str(tmp_path / "imports.log")}
    async with run_cli(tmp_path, "--port", "0", env=env) as cli:
        await cli.wait_for_line(r"Found the app main:app in main\.py")
        code = await cli.exited()
        assert code != 0, cli.transcript()
        errors = [line for line in cli.stderr if "error" in line]
        assert len(errors) == 1, cli.transcript()
        assert "'main:app' is not an ASGI app" in errors[0], cli.transcript()
        assert "Traceback" not in "\n".join(cli.stderr)
    pids = [int(line.split()[1]) for line in (tmp_path / "imports.log").read_text().splitlines()]
    assert pids
    assert cli.pid not in pids


async def test_a_package_folder_as_app(tmp_path: Path) -> None:
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "web.py", FASTAPI_APP)
    write(tmp_path / "app" / "main.py", "from .web import app\n")
    assert await serves(tmp_path, "app", expect_app="app.main:app") == {"from": "app.web"}


async def test_a_wsgi_app_is_served_through_wsgi(tmp_path: Path) -> None:
    """Served as ASGI, every request would be a 500; uvicorn's WSGI interface serves it."""
    write(tmp_path / "main.py", WSGI_APP)
    assert await serves(tmp_path, expect_app="main:app") == "wsgi main"


async def test_nothing_to_find_is_one_line(tmp_path: Path) -> None:
    write(tmp_path / "README.md", "no code here\n")
    async with run_cli(tmp_path, "--port", "0") as cli:
        line = await fails_with_one_line(cli, "no app found", "asgireload main:app")
    assert cli.process.returncode == 2
    assert os.fspath(tmp_path) in line


async def test_a_flask_and_a_fastapi_app_in_one_file_are_both_named(tmp_path: Path) -> None:
    write(
        tmp_path / "main.py",
        "from flask import Flask\nfrom fastapi import FastAPI\nweb = Flask(__name__)\napi = FastAPI()\n",
    )
    async with run_cli(tmp_path, "--port", "0") as cli:
        await fails_with_one_line(cli, "main:web (Flask), main:api (FastAPI)", "asgireload main:web")
    assert cli.process.returncode == 2
