"""Checks made before anything binds, without running any of the user's code.

A mistake in the command (a folder that does not exist, a module that is nowhere on the
path, an unreadable env file) is reported as one sentence and nothing starts. Whether the
attribute exists and is an app can only be known by importing, which the first worker does.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import os
import sys

from .. import _logging
from ..config import UVICORN_BASE_OPTIONS, Config, cli_flag, option_fields
from ..errors import ConfigError, StartupError
from .envfile import EnvFileError, read_env_file
from .tls import check_tls


def preflight(config: Config) -> None:
    if not isinstance(config.app, str):
        raise ConfigError("the supervisor needs the app as an import string such as 'main:app'.")
    if not os.path.isdir(config.app_dir):
        raise StartupError(f"--app-dir {config.app_dir} does not exist or is not a folder.", option="app_dir")
    for directory in config.reload_dirs:
        if not os.path.isdir(directory):
            raise StartupError(
                f"--reload-dir {directory} does not exist or is not a folder.", option="reload_dirs"
            )
    if config.env_file is not None:
        try:
            read_env_file(config.env_file)
        except EnvFileError as exc:
            raise StartupError(str(exc), option="env_file") from None
    find_module(config.app, config.app_dir)
    check_uvicorn_options(config)


def check_uvicorn_options(config: Config) -> None:
    """What uvicorn would only find out in every worker: an option this uvicorn lacks, the TLS
    files, the log config."""
    if _needs_uvicorn(config):
        _check_against_uvicorn(config)
    if isinstance(config.log_config, str):
        try:
            _logging.read_config_file(config.log_config)
        except _logging.LogConfigError as exc:
            raise StartupError(str(exc), option="log_config") from None
    if config.ssl_certfile is not None:
        check_tls(config)


def _needs_uvicorn(config: Config) -> bool:
    """Whether the options go beyond what every supported uvicorn has: only then is uvicorn
    imported here (30 ms of a cold start, before the first worker could start)."""
    beyond = set(config.uvicorn_options()) - set(UVICORN_BASE_OPTIONS)
    return bool(beyond) or any(getattr(config, name) != "auto" for name in ("http", "ws", "loop"))


def _check_against_uvicorn(config: Config) -> None:
    import uvicorn
    import uvicorn.config

    accepted = inspect.signature(uvicorn.Config).parameters
    flags = {field.name: cli_flag(field) for field in option_fields()}
    for name in config.uvicorn_options():
        if name not in accepted:
            raise StartupError(
                f"{flags[name]} needs a newer uvicorn than the installed {uvicorn.__version__}: "
                "pip install -U uvicorn."
            )
    tables = {"http": "HTTP_PROTOCOLS", "ws": "WS_PROTOCOLS", "loop": "LOOP_FACTORIES"}
    for name, table in tables.items():
        known = getattr(uvicorn.config, table, None)
        if known is not None and getattr(config, name) not in known:
            raise StartupError(
                f"--{name} {getattr(config, name)} is not known to the installed uvicorn "
                f"{uvicorn.__version__} (it knows {', '.join(k for k in known if k != 'none')})."
            )
    needs = {  # the implementations uvicorn imports from a package of its own
        ("http", "httptools"): "httptools",
        ("http", "zttp"): "zttp",
        ("ws", "websockets"): "websockets",
        ("ws", "websockets-sansio"): "websockets",
        ("ws", "wsproto"): "wsproto",
        ("loop", "uvloop"): "uvloop",
    }
    for (name, value), package in needs.items():
        if getattr(config, name) == value and importlib.util.find_spec(package) is None:
            raise StartupError(
                f"--{name} {value} needs the {package} package, which is not installed: "
                f"pip install {package}.",
                option=name,
            )


def find_module(import_string: str, app_dir: str) -> None:
    """Locate module's file the way the worker's import will, without executing it."""
    module = import_string.partition(":")[0]
    search: list[str] | None = [app_dir, os.getcwd(), *sys.path[1:]]
    name = ""
    for part in module.split("."):
        name = f"{name}.{part}" if name else part
        spec = importlib.machinery.PathFinder.find_spec(name, search)
        if spec is None and name in sys.builtin_module_names:
            return
        if spec is None:
            raise StartupError(
                f"cannot import {import_string!r}: no module named {name!r} "
                f"(looked in {app_dir}; pass --app-dir?)",
                option="app",
            )
        locations = spec.submodule_search_locations
        search = list(locations) if locations is not None else None
        if search is None and name != module:
            raise StartupError(
                f"cannot import {import_string!r}: {name!r} is a module, not a package, "
                f"so it has no submodule {module[len(name) + 1 :]!r}.",
                option="app",
            )
