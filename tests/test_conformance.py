"""Drop-in conformance: the same command line, UVICORN_* variables and env file mean the same to
asgireload as to uvicorn.

Two parts. First, every option of the installed uvicorn, given as a flag and as a UVICORN_*
variable, is parsed by uvicorn's own click command (its `run` replaced by a recorder) and by
asgireload's, and the meanings are compared (in-process, fast). Second, the real `uvicorn` and
`asgireload` commands are started on the same command lines, variables and env files, and what
the app sees is compared: its environment, scope (root_path, server, client, scheme), the
response headers and the log level in force. Each server is started once per case, on port 0 or
a Unix socket in tmp_path; the differences that must remain (reload options) are listed in the
README's drop-in section.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest

from asgireload._uvicorn import UVICORN_COMMAND_OPTIONS
from asgireload.cli import parse_config
from asgireload.config import Config

from .conftest import write
from .test_cli import DEADLINE, run_cli


def uvicorn_command() -> click.Command:
    return importlib.import_module("uvicorn.main").main  # type: ignore[no-any-return]


@contextlib.contextmanager
def clean_environment(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Iterator[None]:
    """No UVICORN_*/ASGIRELOAD_* variable of the caller's, and a folder without pyproject.toml."""
    for name in list(os.environ):
        if name.startswith(("UVICORN_", "ASGIRELOAD_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(folder)
    yield


def uvicorn_meaning(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What uvicorn's command would pass to uvicorn.run for these arguments (and os.environ)."""
    recorded: dict[str, Any] = {}
    module = importlib.import_module("uvicorn.main")
    with monkeypatch.context() as patch:
        patch.setattr(module, "run", lambda app, **options: recorded.update(options, app=app))
        uvicorn_command().main(args=args, standalone_mode=False)
    return recorded


def as_uvicorn_means(config: Config) -> dict[str, Any]:
    """A Config in the form uvicorn's command passes to run(), for the options both have."""
    meaning = {name: getattr(config, name) for name in UVICORN_COMMAND_OPTIONS if name != "reload"}
    meaning["headers"] = [tuple(part.strip() for part in h.split(":", 1)) for h in config.headers]
    if config.timeout_graceful_shutdown is not None:
        meaning["timeout_graceful_shutdown"] = config.drain_timeout
    return meaning


def normalised(meaning: dict[str, Any], name: str) -> Any:
    value = meaning[name]
    if name in ("reload_dirs", "reload_includes", "reload_excludes"):
        value = tuple(value or ())
    paths = ("app_dir", "env_file", "log_config", "uds", "ssl_keyfile", "ssl_certfile", "ssl_ca_certs")
    if name == "reload_dirs" or (name in paths and value):
        value = tuple(os.path.abspath(v) for v in value) if name == "reload_dirs" else os.path.abspath(value)
    if name == "headers":
        value = [(n.strip(), v.strip()) for n, v in value]
    if name == "log_config" and isinstance(value, dict):
        value = None  # uvicorn's command passes its default dict for "none given"
    return value


# --------------------------------------------------------------------- every option, in-process


def sample_values(folder: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """For each option: a value other than the default, as text, and the options it needs."""
    (folder / "dir1").mkdir(exist_ok=True)
    (folder / "dir2").mkdir(exist_ok=True)
    (folder / "vars.env").write_text("A=1\n")
    (folder / "log.json").write_text(json.dumps({"version": 1}))
    cert = {"ssl_certfile": "cert.pem"}
    return {
        "host": ("0.0.0.0", {}),
        "port": ("8123", {}),
        "uds": ("app.sock", {}),
        "fd": ("7", {}),
        "reload_dirs": (os.pathsep.join(["dir1", "dir2"]), {}),
        "reload_includes": ("*.html *.txt", {}),
        "reload_excludes": ("*.tmp", {}),
        "reload_delay": ("0.75", {}),
        "workers": ("1", {}),
        "loop": ("asyncio", {}),
        "http": ("h11", {}),
        "http2": ("true", {"http": "zttp"}),
        "ws": ("wsproto", {}),
        "ws_max_size": ("1000", {}),
        "ws_max_queue": ("4", {}),
        "ws_ping_interval": ("2.5", {}),
        "ws_ping_timeout": ("3.5", {}),
        "ws_per_message_deflate": ("false", {}),
        "lifespan": ("off", {}),
        "interface": ("asgi3", {}),
        "env_file": ("vars.env", {}),
        "log_config": ("log.json", {}),
        "log_level": ("debug", {}),
        "access_log": ("0", {}),
        "use_colors": ("yes", {}),
        "proxy_headers": ("off", {}),
        "server_header": ("n", {}),
        "date_header": ("f", {}),
        "forwarded_allow_ips": ("10.0.0.1,10.0.0.2", {}),
        "root_path": ("/api", {}),
        "limit_concurrency": ("50", {}),
        "backlog": ("64", {}),
        "limit_max_requests_jitter": ("0", {}),
        "timeout_keep_alive": ("9", {}),
        "timeout_graceful_shutdown": ("3", {}),
        "timeout_worker_healthcheck": ("7", {}),
        "ssl_keyfile": ("key.pem", cert),
        "ssl_certfile": ("cert.pem", {}),
        "ssl_keyfile_password": ("s3cret", cert),
        "ssl_version": ("2", {}),
        "ssl_cert_reqs": ("1", {}),
        "ssl_ca_certs": ("ca.pem", cert),
        "ssl_ciphers": ("ECDHE+AESGCM", cert),
        "headers": ("X-One:1 X-Two:2", {}),
        "app_dir": ("dir1", {}),
        "h11_max_incomplete_event_size": ("4096", {}),
        "reset_contextvars": ("1", {}),
        "factory": ("true", {}),
    }


REFUSED_HERE = {"limit_max_requests"}  # asgireload refuses any value (README: drop-in differences)
NOT_AN_OPTION = {"app", "reload", "version"}


def test_the_variables_read_are_uvicorns_options() -> None:
    names = {param.name for param in uvicorn_command().params} - {"version"}
    assert set(UVICORN_COMMAND_OPTIONS) == names


def test_every_option_has_a_sample(tmp_path: Path) -> None:
    names = {param.name for param in uvicorn_command().params}
    assert names - NOT_AN_OPTION - REFUSED_HERE == set(sample_values(tmp_path))


def flag_arguments(name: str, text: str) -> list[str]:
    """The same value as command line arguments, spelt as uvicorn's --help spells them."""
    param = next(p for p in uvicorn_command().params if p.name == name)
    if isinstance(param.type, click.types.BoolParamType):
        on = text.lower() in ("1", "true", "t", "yes", "y", "on")
        if param.secondary_opts:
            return [param.opts[0] if on else param.secondary_opts[0]]
        return [param.opts[0]] if on else []
    if getattr(param, "multiple", False):
        separator = os.pathsep if name == "reload_dirs" else None
        return [arg for item in text.split(separator) for arg in (param.opts[0], item)]
    return [param.opts[0], text]


def _option_names() -> list[str]:
    return sorted(str(p.name) for p in uvicorn_command().params if p.name not in NOT_AN_OPTION | REFUSED_HERE)


@pytest.mark.parametrize("how", ["flag", "variable"])
@pytest.mark.parametrize("name", _option_names())
def test_every_option_means_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, how: str
) -> None:
    with clean_environment(monkeypatch, tmp_path):
        text, needs = sample_values(tmp_path)[name]
        args = ["main:app"]
        for other, value in {**needs, name: text}.items():
            if how == "flag":
                args += flag_arguments(other, value)
            else:
                monkeypatch.setenv(f"UVICORN_{other.upper()}", value)
        theirs = uvicorn_meaning(args, monkeypatch)
        ours = as_uvicorn_means(parse_config(args))
    assert normalised(ours, name) == normalised(theirs, name), (name, how, args)


def test_the_app_from_uvicorn_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with clean_environment(monkeypatch, tmp_path):
        monkeypatch.setenv("UVICORN_APP", "web:application")
        assert uvicorn_meaning([], monkeypatch)["app"] == "web:application"
        assert parse_config([]).app == "web:application"
        assert parse_config(["other:app"]).app == "other:app"


def test_the_command_line_wins_and_lists_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with clean_environment(monkeypatch, tmp_path):
        monkeypatch.setenv("UVICORN_PORT", "8001")
        monkeypatch.setenv("UVICORN_HEADERS", "X-A:1")
        args = ["main:app", "--port", "9", "--header", "X-B:2"]
        theirs = uvicorn_meaning(args, monkeypatch)
        ours = as_uvicorn_means(parse_config(args))
    assert (ours["port"], ours["headers"]) == (theirs["port"], theirs["headers"]) == (9, [("X-B", "2")])


def test_asgireload_variables_win_over_uvicorns_and_both_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.asgireload]\nport = 7000\nhost = '127.0.0.2'\n")
    with clean_environment(monkeypatch, tmp_path):
        monkeypatch.setenv("UVICORN_PORT", "8001")
        monkeypatch.setenv("UVICORN_LOG_LEVEL", "warning")
        monkeypatch.setenv("ASGIRELOAD_PORT", "8002")
        monkeypatch.setenv("UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN", "30")
        monkeypatch.setenv("ASGIRELOAD_DRAIN_TIMEOUT", "4")
        config = parse_config(["main:app"])
        assert (config.port, config.host, config.log_level) == (8002, "127.0.0.2", "warning")
        assert config.drain_timeout == 4.0  # the higher layer's name for the drain timeout wins
        assert parse_config(["main:app", "--port", "9"]).port == 9
        assert parse_config(["main:app", "--no-config"]).host == "127.0.0.1"


def test_variables_uvicorn_does_not_read_are_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asgireload's own options come only from ASGIRELOAD_*; lower-case names are not uvicorn's."""
    with clean_environment(monkeypatch, tmp_path):
        monkeypatch.setenv("UVICORN_DRAIN_TIMEOUT", "oops")
        monkeypatch.setenv("UVICORN_SEQUENTIAL", "1")
        monkeypatch.setenv("uvicorn_port", "8001")
        monkeypatch.setenv("UVICORN_PORT", "")  # empty is unset, as click reads it
        config = parse_config(["main:app"])
    assert (config.drain_timeout, config.sequential, config.port) == (10.0, False, 8000)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("UVICORN_PORT", "http", "UVICORN_PORT='http': expected a whole number"),
        ("UVICORN_PORT", "99999", "UVICORN_PORT='99999' must be between 0 and 65535"),
        ("UVICORN_FACTORY", "maybe", "UVICORN_FACTORY='maybe': expected true or false"),
        ("UVICORN_LIFESPAN", "On", "UVICORN_LIFESPAN='On' must be one of auto, on, off"),
        ("UVICORN_WORKERS", "4", "UVICORN_WORKERS='4' cannot be 4 here"),
        ("UVICORN_LIMIT_MAX_REQUESTS", "100", "UVICORN_LIMIT_MAX_REQUESTS='100' cannot be 100 here"),
        ("UVICORN_HEADERS", "X-A:ok bad", "UVICORN_HEADERS='X-A:ok bad' takes 'Name: value', got 'bad'"),
        ("UVICORN_APP", "no colon", "UVICORN_APP='no colon': the app must look like module:attribute"),
        ("UVICORN_WS_PING_INTERVAL", "soon", "UVICORN_WS_PING_INTERVAL='soon': expected a number"),
    ],
)
def test_a_bad_uvicorn_variable_is_one_line_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    message: str,
) -> None:
    with clean_environment(monkeypatch, tmp_path):
        monkeypatch.setenv(variable, value)
        with pytest.raises(SystemExit):
            parse_config(["main:app"] if variable != "UVICORN_APP" else [])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]


# --------------------------------------------------------------------- real processes, what the app sees

PROBE_APP = """
import json
import logging
import os

STARTED = []


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                STARTED.append(True)
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    levels = {
        name or "root": logging.getLevelName(logging.getLogger(name).getEffectiveLevel())
        for name in ("uvicorn.error", "uvicorn.access", "uvicorn.asgi", "")
    }
    seen = {
        "environment": {k: v for k, v in os.environ.items() if k.startswith("PROBE_")},
        "root_path": scope.get("root_path"),
        "path": scope["path"],
        "scheme": scope["scheme"],
        "server": scope.get("server"),
        "client_host": (scope.get("client") or [None])[0],
        "levels": levels,
        "lifespan": bool(STARTED),
        "loaded_from_src": os.path.basename(os.path.dirname(os.path.abspath(__file__))) == "src",
    }
    body = json.dumps(seen).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app():
    return app
"""
READY = re.compile(r"(?:Uvicorn running on|serving on) (?:unix socket )?(\S+)")
SHOWN_HEADERS = ("server", "date", "x-one", "x-two", "x-three")
FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


async def what_the_app_sees(
    folder: Path, server: str, args: list[str], env: dict[str, str], uds: bool
) -> dict[str, Any]:
    """Start `server` (uvicorn or asgireload) on these arguments, ask the probe, stop it."""
    env = {"PROBE_SHELL": "from-the-shell", **env}
    if server == "asgireload":  # one worker is enough to look at (no standby): the suite stays fast
        env["ASGIRELOAD_STANDBY"] = "false"
    async with run_cli(folder, *args, command=("-m", server), env=env) as cli:
        if uds:  # no log line to wait for under --log-level warning: the socket answers
            transport = httpx.AsyncHTTPTransport(uds=str(folder / "app.sock"))
            url, printed = "http://localhost/probe", ""
        else:
            transport = httpx.AsyncHTTPTransport()
            printed = (await cli.wait_for_line(READY))[1]
            url = printed.rstrip("/") + "/probe"
        async with httpx.AsyncClient(transport=transport, timeout=DEADLINE, trust_env=False) as http:
            response = await _first_answer(http, url, cli)
        assert response.status_code == 200, cli.transcript()
        seen: dict[str, Any] = response.json()
        seen["headers"] = {name: name in response.headers for name in ("server", "date")}
        seen["headers"] |= {n: response.headers.get(n) for n in SHOWN_HEADERS[2:] if n in response.headers}
        cli.send(signal.SIGINT)
        await cli.exited()
    if not uds and seen["server"] is not None:  # port 0: each server has its own port
        seen["server"][1] = "the port it printed" if f":{seen['server'][1]}" in printed else seen["server"][1]
    if uds and seen["server"][0] == str(folder / "app.sock"):  # README: asgireload binds the absolute path
        seen["server"][0] = "app.sock"
    return seen


async def _first_answer(http: httpx.AsyncClient, url: str, cli: Any) -> httpx.Response:
    """The first response once the server listens (connection refused or no socket until then)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            try:
                return await http.get(url, headers=FORWARDED)
            except (httpx.ConnectError, FileNotFoundError):
                if cli.process.returncode is not None:
                    pytest.fail(f"the server exited\n{cli.transcript()}")
                await asyncio.sleep(0.02)  # polling a condition under the deadline: no event for it


ENV_FILE = r"""# python-dotenv's grammar, as uvicorn reads it
PROBE_SHELL=from-the-file
PROBE_NEW=new
export PROBE_EXPORTED=exported
PROBE_EXPANDED=${PROBE_SHELL}/and/${PROBE_NEW}
PROBE_DEFAULT=${PROBE_NOT_SET:-fallback}
PROBE_MULTI="first line
second line"
PROBE_ESCAPES="tab\there \"quoted\" back\\slash"
PROBE_SINGLE='no ${PROBE_NEW} \n escapes'
PROBE_COMMENT=value # a comment
PROBE_HASH=a#b
PROBE_EMPTY=
PROBE_BARE
"""

CASES = [
    pytest.param(["--env-file", ".env"], {}, True, id="env-file"),
    pytest.param([], {"UVICORN_ENV_FILE": ".env"}, True, id="env-file-from-UVICORN_ENV_FILE"),
    pytest.param(["--root-path", "/api"], {}, True, id="root-path"),
    pytest.param([], {"UVICORN_ROOT_PATH": "/api"}, True, id="UVICORN_ROOT_PATH"),
    pytest.param(["--header", "X-One:1", "--header", "X-Two: two"], {}, True, id="header"),
    pytest.param([], {"UVICORN_HEADERS": "X-One:1 X-Three:3"}, True, id="UVICORN_HEADERS"),
    pytest.param(["--no-server-header", "--no-date-header"], {}, True, id="no-server-no-date"),
    pytest.param(
        [], {"UVICORN_SERVER_HEADER": "false", "UVICORN_DATE_HEADER": "0"}, True, id="UVICORN_x_HEADER"
    ),
    pytest.param(["--log-level", "warning"], {}, True, id="log-level"),
    pytest.param([], {"UVICORN_LOG_LEVEL": "debug"}, True, id="UVICORN_LOG_LEVEL"),
    pytest.param(["--lifespan", "off"], {}, True, id="lifespan-off"),
    pytest.param(
        [], {"UVICORN_LIFESPAN": "off", "UVICORN_FACTORY": "yes"}, True, id="UVICORN_LIFESPAN-FACTORY"
    ),
    pytest.param(["--port", "0"], {}, False, id="proxy-headers-default"),
    pytest.param(["--port", "0", "--forwarded-allow-ips", "*"], {}, False, id="forwarded-allow-ips"),
    pytest.param(["--port", "0", "--no-proxy-headers"], {}, False, id="no-proxy-headers"),
    pytest.param(
        [], {"UVICORN_PORT": "0", "UVICORN_FORWARDED_ALLOW_IPS": "10.0.0.1"}, False, id="UVICORN_PORT"
    ),
    pytest.param([], {"UVICORN_PORT": "0", "UVICORN_PROXY_HEADERS": "f"}, False, id="UVICORN_PROXY_HEADERS"),
    pytest.param(["--app-dir", "src"], {}, True, id="app-dir"),
    pytest.param([], {"UVICORN_APP_DIR": "src", "UVICORN_ROOT_PATH": "/v2"}, True, id="UVICORN_APP_DIR"),
]


@pytest.mark.parametrize(("args", "env", "uds"), CASES)
async def test_the_app_sees_what_it_sees_under_uvicorn(
    tmp_path: Path, args: list[str], env: dict[str, str], uds: bool
) -> None:
    for server in ("uvicorn", "asgireload"):  # a folder each: the same project, run at once
        write(tmp_path / server / "main.py", PROBE_APP)
        write(tmp_path / server / "src" / "main.py", PROBE_APP)
        (tmp_path / server / ".env").write_text(ENV_FILE)
    app = [] if "UVICORN_APP" in env else ["main:create_app" if env.get("UVICORN_FACTORY") else "main:app"]
    command = [*app, *args]
    both = await asyncio.gather(  # at once: the suite's time is the slower server's, not the sum
        *(
            what_the_app_sees(tmp_path / server, server, [*command, *(["--uds", "app.sock"] * uds)], env, uds)
            for server in ("uvicorn", "asgireload")
        )
    )
    theirs, ours = both
    assert ours == theirs, (command, env)
