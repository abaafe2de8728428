"""[tool.asgireload] in pyproject.toml and ASGIRELOAD_* variables, under the command line."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from asgireload import Reloader
from asgireload.cli import parse_config
from asgireload.config import _PATH_OPTIONS, Config, cli_flag, option_fields
from asgireload.configfile import find_pyproject, layered, read_environment, read_pyproject
from asgireload.errors import ConfigError
from asgireload.serving import build_config

from .conftest import PLAIN_APP, write
from .test_cli import (
    app_source,
    client,
    fails_with_one_line,
    free_port,
    port_is_free,
    run_cli,
    write_atomically,
)


def pyproject(folder: Path, table: str) -> Path:
    return write(folder / "pyproject.toml", '[project]\nname = "demo"\n\n[tool.asgireload]\n' + table)


# ------------------------------------------------------------------------ reading the file


def test_keys_paths_and_aliases(tmp_path: Path) -> None:
    path = pyproject(
        tmp_path,
        """
        app = "web:app"
        port = 8123
        reload_dir = ["src", "lib"]
        reload_includes = "*.html"
        env_file = ".env"
        header = ["X-A: 1"]
        drain_timeout = 2
        reload = true
        """.replace("        ", ""),
    )
    options = read_pyproject(path)
    assert options == {
        "app": "web:app",
        "port": 8123,
        "reload_dirs": (str(tmp_path / "src"), str(tmp_path / "lib")),
        "reload_includes": ("*.html",),
        "env_file": str(tmp_path / ".env"),
        "headers": ("X-A: 1",),
        "drain_timeout": 2,
    }


def test_an_app_given_as_a_file_is_relative_to_the_file(tmp_path: Path) -> None:
    path = pyproject(tmp_path, 'app = "src/main.py"\n')
    assert read_pyproject(path)["app"] == str(tmp_path / "src" / "main.py")


def test_no_table_is_no_options(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "demo"\n')
    assert read_pyproject(tmp_path / "pyproject.toml") == {}


def test_the_nearest_file_at_or_above(tmp_path: Path) -> None:
    pyproject(tmp_path, "port = 1\n")
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    assert find_pyproject(inner) == tmp_path / "pyproject.toml"
    pyproject(tmp_path / "a", "port = 2\n")
    assert find_pyproject(inner) == tmp_path / "a" / "pyproject.toml"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("prot = 8000\n", "has no option 'prot'; did you mean 'port'?"),
        ("reload_dirz = ['src']\n", "has no option 'reload_dirz'; did you mean 'reload_dirs'?"),
        ("drain-timeout = 5\n", "has no key 'drain-timeout': write it in snake case, 'drain_timeout'"),
        ("zzzz = 1\n", "has no option 'zzzz'; the keys are the options' names"),
        ("port = '8000'\n", "port must be a whole number, got '8000'"),
        ("port = 70000\n", "port must be between 0 and 65535, got 70000"),
        ("port = true\n", "port must be a whole number, got True"),
        ("drain_timeout = -1\n", "drain_timeout must be a number of seconds, 0 or more"),
        ("sequential = 'yes'\n", "sequential must be true or false, got 'yes'"),
        ("reload_dirs = [1, 2]\n", "reload_dirs must be a list of strings, got [1, 2]"),
        ("lifespan = 'maybe'\n", "lifespan must be one of auto, on, off"),
        ("workers = 4\n", "workers cannot be 4 here: asgireload runs one worker per generation"),
        ("app = 3\n", '[tool.asgireload] app must be a string such as "main:app", got 3'),
        ("port = 1\nport = 2\n", "is not valid TOML"),
        ("reload_dirs = ['a']\nreload_dir = ['b']\n", "sets reload_dirs twice"),
    ],
)
def test_a_mistake_names_the_file_the_key_and_what_was_expected(
    tmp_path: Path, table: str, message: str
) -> None:
    path = pyproject(tmp_path, table)
    with pytest.raises(ConfigError) as caught:
        read_pyproject(path)
    text = str(caught.value)
    assert str(path) in text
    assert message in text, text
    assert "\n" not in text


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "pyproject.toml", '[project]\nname = "demo"\n\n[tool.asgireload]\nport = = 1\n')
    with pytest.raises(ConfigError, match=r"is not valid TOML, line 5, column 8: "):
        read_pyproject(path)


def test_the_table_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path / "pyproject.toml", "[tool]\nasgireload = 3\n")
    with pytest.raises(ConfigError, match=r"\[tool.asgireload\] must be a table"):
        read_pyproject(path)


# ------------------------------------------------------------------------ the variables


def test_variables_are_read_by_type() -> None:
    options = read_environment(
        {
            "ASGIRELOAD_PORT": "8001",
            "ASGIRELOAD_DRAIN_TIMEOUT": "2.5",
            "ASGIRELOAD_SEQUENTIAL": "yes",
            "ASGIRELOAD_ACCESS_LOG": "0",
            "ASGIRELOAD_RELOAD_DIRS": os.pathsep.join(["/a", "/b c"]),
            "ASGIRELOAD_RELOAD_INCLUDE": "*.html *.css",
            "ASGIRELOAD_HEADERS": "X-A: 1\nX-B: 2",
            "ASGIRELOAD_APP": "main:app",
            "ASGIRELOAD_WORKER": "1",  # asgireload's own, not an option
            "PORT": "9",
        }
    )
    assert options == {
        "port": 8001,
        "drain_timeout": 2.5,
        "sequential": True,
        "access_log": False,
        "reload_dirs": ("/a", "/b c"),
        "reload_includes": ("*.html", "*.css"),
        "headers": ("X-A: 1", "X-B: 2"),
        "app": "main:app",
    }


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ASGIRELOAD_PORT", "http", "ASGIRELOAD_PORT='http': expected a whole number"),
        ("ASGIRELOAD_PORT", "99999", "ASGIRELOAD_PORT='99999' must be between 0 and 65535"),
        ("ASGIRELOAD_SEQUENTIAL", "maybe", "ASGIRELOAD_SEQUENTIAL='maybe': expected true or false"),
        ("ASGIRELOAD_LIFESPAN", "never", "ASGIRELOAD_LIFESPAN='never' must be one of auto, on, off"),
        ("ASGIRELOAD_WORKERS", "3", "ASGIRELOAD_WORKERS='3' cannot be 3 here"),
    ],
)
def test_a_bad_variable_is_named(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_environment({variable: value})


def test_flags_over_variables_over_the_file(tmp_path: Path) -> None:
    path = pyproject(tmp_path, "port = 1\ndrain_timeout = 3\nsequential = true\n")
    options, source = layered(
        {"port": 3}, pyproject=path, environ={"ASGIRELOAD_PORT": "2", "ASGIRELOAD_DRAIN_TIMEOUT": "4"}
    )
    assert source == path
    assert options == {"port": 3, "drain_timeout": 4.0, "sequential": True}
    options, source = layered({}, pyproject=False, environ={})
    assert (options, source) == ({}, None)


@pytest.mark.parametrize(
    ("file", "environ", "flags", "drain"),
    [
        ("", {"ASGIRELOAD_TIMEOUT_GRACEFUL_SHUTDOWN": "30"}, {"drain_timeout": 2.0}, 2.0),
        ("drain_timeout = 3\n", {"ASGIRELOAD_TIMEOUT_GRACEFUL_SHUTDOWN": "30"}, {}, 30.0),
        ("timeout_graceful_shutdown = 30\n", {"ASGIRELOAD_DRAIN_TIMEOUT": "4"}, {}, 4.0),
        ("", {"ASGIRELOAD_DRAIN_TIMEOUT": "4"}, {"timeout_graceful_shutdown": 5.0}, 5.0),
        ("drain_timeout = 3\ntimeout_graceful_shutdown = 6\n", {}, {}, 6.0),  # one layer: uvicorn's name
    ],
)
def test_the_drain_timeout_comes_from_the_highest_layer_that_sets_either_name(
    tmp_path: Path, file: str, environ: dict[str, str], flags: dict[str, float], drain: float
) -> None:
    path = pyproject(tmp_path, file)
    options, _ = layered(flags, pyproject=path, environ=environ)
    assert Config(app="main:app", **options).drain_timeout == drain


def test_a_combination_error_names_the_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pyproject(tmp_path, 'ssl_keyfile = "key.pem"\n')
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("ASGIRELOAD_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit):
        parse_config(["main:app"])
    error = capsys.readouterr().err
    assert "needs --ssl-certfile" in error
    assert f"set in {path} [tool.asgireload] ssl_keyfile" in error


def test_forwarded_allow_ips_as_a_list(tmp_path: Path) -> None:
    path = pyproject(tmp_path, 'forwarded_allow_ips = ["10.0.0.1", "10.0.0.2"]\n')
    assert read_pyproject(path) == {"forwarded_allow_ips": "10.0.0.1,10.0.0.2"}


def test_an_empty_variable_is_unset_and_force_polling_is_read_leniently() -> None:
    empty = {f"ASGIRELOAD_{name}": "" for name in ("PORT", "FORCE_POLLING", "APP", "LOG_LEVEL", "HEADERS")}
    assert read_environment(empty) == {}
    assert read_environment({"ASGIRELOAD_PORT": "  "}) == {}
    assert read_environment({"ASGIRELOAD_FORCE_POLLING": "2"}) == {}  # as before: not "forced"
    assert read_environment({"ASGIRELOAD_FORCE_POLLING": "1"}) == {"force_polling": True}


def test_serve_takes_the_files_app_given_as_a_path_like_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "src" / "main.py", PLAIN_APP)
    path = pyproject(tmp_path, 'app = "src/main.py"\n')
    config = build_config(None, True, {"pyproject": path})
    assert (config.app, config.app_dir) == ("main:app", str(tmp_path / "src"))
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("ASGIRELOAD_")]:
        monkeypatch.delenv(name)
    from_cli = parse_config([])
    assert (from_cli.app, from_cli.app_dir) == (config.app, config.app_dir)


def test_the_files_app_is_imported_from_the_files_folder(tmp_path: Path) -> None:
    path = pyproject(tmp_path, 'app = "main:app"\n')
    options, _ = layered({}, pyproject=path, environ={})
    assert options == {"app": "main:app", "app_dir": str(tmp_path)}
    options, _ = layered({"app": "other:app"}, pyproject=path, environ={})
    assert options == {"app": "other:app"}  # another app: the current folder, as without the file
    options, _ = layered({"app_dir": "/x"}, pyproject=path, environ={})
    assert options == {"app": "main:app", "app_dir": "/x"}


def test_the_cli_reads_the_nearest_file_and_no_config_ignores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pyproject(tmp_path, "port = 8123\nsequential = true\n")
    inner = tmp_path / "pkg"
    inner.mkdir()
    monkeypatch.chdir(inner)
    for name in [n for n in os.environ if n.startswith("ASGIRELOAD_")]:
        monkeypatch.delenv(name)
    assert parse_config(["main:app"]).port == 8123
    assert parse_config(["main:app", "--port", "9"]).port == 9
    assert parse_config(["main:app", "--no-config"]).port == 8000
    monkeypatch.setenv("ASGIRELOAD_PORT", "8124")
    assert parse_config(["main:app"]).port == 8124
    assert parse_config(["main:app", "--no-config"]).port == 8124  # variables still apply


async def test_serve_and_reloader_read_the_file_only_when_asked(tmp_path: Path) -> None:
    write(tmp_path / "web" / "webapp.py", PLAIN_APP)
    path = pyproject(tmp_path, 'app = "webapp:app"\napp_dir = "web"\ndrain_timeout = 1.5\n')
    quiet = Reloader("main:app", app_dir=tmp_path)
    assert quiet.config.drain_timeout == 10.0
    server = Reloader(None, pyproject=path)
    assert server.config.app == "webapp:app"
    assert server.config.app_dir == str(tmp_path / "web")
    assert server.config.drain_timeout == 1.5
    async with server, client() as http:
        assert (await http.get(server.url)).text == "v1"


# ------------------------------------------------------------------------ end to end


async def test_port_reload_dir_and_include_glob_are_honoured_and_a_flag_overrides(tmp_path: Path) -> None:
    port = free_port()
    write(tmp_path / "src" / "web.py", 'from pathlib import Path\nimport os\n' + app_source("first").replace(
        'BODY = \'first\'', 'BODY = (Path(__file__).parent.parent / "templates" / "page.html").read_text()'
    ))  # fmt: skip
    write(tmp_path / "templates" / "page.html", "page one")
    pyproject(
        tmp_path,
        f'app = "web:app"\napp_dir = "src"\nport = {port}\nreload_dirs = ["src", "templates"]\n'
        'reload_includes = ["*.html"]\ndrain_timeout = 2\n',
    )
    async with run_cli(tmp_path) as cli:
        match = await cli.wait_for_line(r"serving on http://127\.0\.0\.1:(\d+) ")
        assert int(match[1]) == port, cli.transcript()
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "page one"
            write_atomically(tmp_path / "templates" / "page.html", "page two")  # the include glob
            await cli.wait_for_line(r"Reloaded in \d+ ms \(generation 2\): templates/page\.html changed")
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "page two"
    async with run_cli(tmp_path, "--port", "0") as cli:  # the flag wins over the file
        match = await cli.wait_for_line(r"serving on http://127\.0\.0\.1:(\d+) ")
        assert int(match[1]) != port, cli.transcript()


async def test_a_misspelt_key_is_one_line_naming_the_right_one(tmp_path: Path) -> None:
    write(tmp_path / "main.py", app_source("first"))
    port = free_port()
    path = pyproject(tmp_path, f"prot = {port}\n")
    async with run_cli(tmp_path, "main:app", "--port", str(port)) as cli:
        line = await fails_with_one_line(cli, str(path), "'prot'", "did you mean 'port'?")
    assert line.startswith("asgireload: error:")
    assert cli.process.returncode == 2
    assert port_is_free(port)
    async with run_cli(tmp_path, "main:app", "--port", "0", "--no-config") as cli:  # ignored
        await cli.wait_for_line(r"serving on http://127\.0\.0\.1:(\d+) ")


async def test_toml_syntax_error_names_the_line_end_to_end(tmp_path: Path) -> None:
    write(tmp_path / "main.py", app_source("first"))
    write(tmp_path / "pyproject.toml", "[tool.asgireload]\nport = 80\nreload_dirs = [\n")
    async with run_cli(tmp_path, "main:app") as cli:
        await fails_with_one_line(cli, "pyproject.toml is not valid TOML", "line")


async def test_an_environment_variable_sits_between_file_and_flags(tmp_path: Path) -> None:
    write(tmp_path / "main.py", app_source("first"))
    pyproject(tmp_path, "port = 1\n")  # a privileged port: would fail if it won
    port = free_port()
    async with run_cli(tmp_path, "main:app", env={"ASGIRELOAD_PORT": str(port)}) as cli:
        match = await cli.wait_for_line(r"serving on http://127\.0\.0\.1:(\d+) ")
        assert int(match[1]) == port, cli.transcript()


# ------------------------------------------------------------------------ every key's error names it


def _wrong_toml_value(field: Any) -> str:
    """A TOML value of the wrong type for the option."""
    kind = str(field.type)
    if kind.startswith(("int", "float")):
        return '"soon"'
    if kind.startswith("bool"):
        return '"maybe"'
    return "[[1]]" if kind.startswith("tuple") else "3"


FILE_KEYS = [f for f in option_fields() if f.metadata["cli"]]


@pytest.mark.parametrize("field", FILE_KEYS, ids=[f.name for f in FILE_KEYS])
@pytest.mark.parametrize("spelling", ["name", "flag"])
def test_a_wrong_value_of_any_key_names_the_file_and_the_key(
    tmp_path: Path, field: Any, spelling: str
) -> None:
    key = field.name if spelling == "name" else cli_flag(field)[2:].replace("-", "_")
    path = pyproject(tmp_path, f"{key} = {_wrong_toml_value(field)}\n")
    with pytest.raises(ConfigError) as excinfo:
        read_pyproject(path)
    assert str(excinfo.value).startswith(f"{path.resolve()}: [tool.asgireload] {key} must be ")


PATH_KEYS = [*(name for name in _PATH_OPTIONS if name != "uds"), "reload_dirs"]


@pytest.mark.parametrize("key", PATH_KEYS)
def test_an_empty_path_names_the_file_and_the_key(tmp_path: Path, key: str) -> None:
    value = '[""]' if key == "reload_dirs" else '""'
    path = pyproject(tmp_path, f"{key} = {value}\n")
    with pytest.raises(ConfigError, match=re.escape(f"[tool.asgireload] {key} must not be an empty path")):
        read_pyproject(path)


MISSING = [  # a key whose value is only found wrong when the server starts, and what it says
    pytest.param('reload_dirs = ["nope"]', "reload_dirs", "--reload-dir", id="reload_dirs"),
    pytest.param('reload_dir = "nope"', "reload_dir", "--reload-dir", id="reload_dir-alias"),
    pytest.param('env_file = "missing.env"', "env_file", "missing.env does not exist", id="env_file"),
    pytest.param('env_file = "bad.env"', "env_file", "bad.env, line 2", id="env_file-malformed"),
    pytest.param('app_dir = "nodir"', "app_dir", "--app-dir", id="app_dir"),
    pytest.param('log_config = "nolog.json"', "log_config", "--log-config", id="log_config"),
    pytest.param('ssl_certfile = "no.pem"', "ssl_certfile", "--ssl-certfile", id="ssl_certfile"),
    pytest.param('uds = "no/app.sock"', "uds", "cannot create the socket", id="uds"),
    pytest.param('app = "nomod:app"', "app", "no module named 'nomod'", id="app"),
    pytest.param('ssl_keyfile = "k.pem"', "ssl_keyfile", "needs --ssl-certfile", id="combination"),
]


@pytest.mark.parametrize(("table", "key", "said"), MISSING)
async def test_a_value_found_wrong_at_start_names_the_file_and_the_key(
    tmp_path: Path, table: str, key: str, said: str
) -> None:
    write(tmp_path / "main.py", app_source("first"))
    write(tmp_path / "bad.env", "A=1\nB='open\n")
    path = pyproject(tmp_path, table + "\n")
    app = [] if key == "app" else ["main:app"]
    async with run_cli(tmp_path, *app, "--port", "0") as cli:
        await fails_with_one_line(cli, said, f"set in {path.resolve()} [tool.asgireload] {key}")


async def test_a_value_found_wrong_at_start_names_the_variable(tmp_path: Path) -> None:
    write(tmp_path / "main.py", app_source("first"))
    env = {"UVICORN_ENV_FILE": "missing.env", "ASGIRELOAD_RELOAD_DIR": "nope"}
    async with run_cli(tmp_path, "main:app", "--port", "0", env=env) as cli:
        await fails_with_one_line(cli, "--reload-dir", "(set by ASGIRELOAD_RELOAD_DIR)")
    async with run_cli(tmp_path, "main:app", "--port", "0", env={"UVICORN_ENV_FILE": "missing.env"}) as cli:
        await fails_with_one_line(cli, "missing.env does not exist", "(set by UVICORN_ENV_FILE)")
    async with run_cli(tmp_path, "main:app", "--port", "0", "--env-file", "missing.env") as cli:
        line = await fails_with_one_line(cli, "missing.env does not exist")
    assert "set " not in line  # a flag is where the user is looking already
