"""Config validation, the CLI built from it, and the docs kept in step with both."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest

import asgireload
from asgireload.cli import build_parser, parse_config
from asgireload.config import Config, cli_flag, option_fields
from asgireload.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


async def app(scope: object, receive: object, send: object) -> None:
    pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": -1}, "port (--port) must be between 0 and 65535"),
        ({"port": 70000}, "port (--port) must be between 0 and 65535"),
        ({"port": "80"}, "port (--port) must be a whole number"),
        ({"port": True}, "port (--port) must be a whole number"),
        ({"drain_timeout": -1}, "drain_timeout (--drain-timeout) must be a number of seconds"),
        ({"drain_timeout": math.nan}, "drain_timeout (--drain-timeout) must be a number of seconds"),
        ({"drain_timeout": "5"}, "drain_timeout (--drain-timeout) must be a number"),
        ({"poll_interval": 0.001}, "poll_interval (--poll-interval) must be at least 0.01"),
        ({"lifespan": "maybe"}, "lifespan (--lifespan) must be one of auto, on, off"),
        ({"log_level": "loud"}, "log_level (--log-level) must be one of"),
        ({"reload_dirs": "src"}, "reload_dirs (--reload-dir) must be a tuple of strings"),
        ({"sequential": "yes"}, "sequential (--sequential) must be True or False"),
        ({"uds": "/tmp/a.sock", "fd": 3}, "either --uds or --fd"),
        ({"host": ""}, "host (--host) must not be empty"),
        ({"fd": -2}, "fd (--fd) must be a file descriptor"),
    ],
)
def test_a_bad_option_is_named_in_one_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config(app="main:app", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("app_string", ["main", "main:", ":app", "1abc:app", "main:app:x", "main app:x", ""])
def test_a_malformed_import_string(app_string: str) -> None:
    with pytest.raises(ConfigError, match="module:attribute"):
        Config(app=app_string)


def test_an_app_that_is_neither_callable_nor_a_string() -> None:
    with pytest.raises(ConfigError, match="ASGI callable or an import string, got an object of type int"):
        Config(app=42)  # type: ignore[arg-type]


def test_paths_are_resolved_and_path_objects_accepted(tmp_path: Path) -> None:
    config = Config(app="main:app", app_dir=tmp_path, reload_dirs=[tmp_path / "src"], env_file=Path(".env"))  # type: ignore[arg-type]
    assert config.app_dir == str(tmp_path)
    assert config.reload_dirs == (str(tmp_path / "src"),)
    assert config.env_file == os.path.abspath(".env")
    assert config.watch_roots == (str(tmp_path / "src"),)


def test_an_app_object_is_accepted() -> None:
    assert Config(app=app).app is app


@pytest.mark.parametrize(
    ("host", "visible"), [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False)]
)
def test_errors_are_shown_on_loopback_only_by_default(host: str, visible: bool) -> None:
    assert Config(app="main:app", host=host).errors_visible is visible
    assert Config(app="main:app", host=host, show_errors=True).errors_visible is True


def test_the_cli_builds_the_same_config() -> None:
    config = parse_config(
        [
            "main:app",
            "--port", "0",
            "--reload-dir", "src",
            "--reload-dir", "lib",
            "--reload-include", "*.html",
            "--no-access-log",
            "--no-standby",
            "--sequential",
            "--drain-timeout", "2.5",
            "--lifespan", "off",
        ]
    )  # fmt: skip
    assert config == Config(
        app="main:app",
        port=0,
        reload_dirs=("src", "lib"),
        reload_includes=("*.html",),
        access_log=False,
        standby=False,
        sequential=True,
        drain_timeout=2.5,
        lifespan="off",
        live_reload=True,  # the command line's default, where the API's is off
    )


def test_every_option_is_on_the_command_line_and_in_the_readme() -> None:
    help_text = build_parser().format_help()
    readme = (ROOT / "README.md").read_text()
    for field in option_fields():
        if not field.metadata["cli"]:
            continue
        flag = cli_flag(field)
        assert flag in help_text, flag
        assert f"`{flag}" in readme, f"{flag} is missing from the README's options table"


def test_the_public_names_are_all_exported() -> None:
    assert sorted(asgireload.__all__) == dir(asgireload)
    for name in asgireload.__all__:
        value = getattr(asgireload, name)
        if name != "__version__":
            assert value.__module__.startswith("asgireload."), name


def test_an_unknown_public_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = asgireload.nope  # type: ignore[attr-defined]
