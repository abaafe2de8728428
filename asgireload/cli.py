"""`asgireload APP [options]`: parse the command line into a Config, then run it.

The flags are generated from `Config`'s fields, so an option is declared once. Every mistake
is one line on stderr and a non-zero exit; a Python traceback here is a bug of ours.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import _logging, configfile, discovery
from .__about__ import __version__
from ._supervisor.liveconfig import LiveSettings
from ._uvicorn import NO_EFFECT, REFUSED
from .config import Config, cli_flag, option_fields
from .errors import ConfigError
from .serving import check_standard_streams, run_with_signals, warn_about_reopened

DESCRIPTION = """\
Serve an ASGI app with uvicorn and restart it when its code changes, without refusing a
connection or cutting a request in flight. It takes uvicorn's options: replace `uvicorn` with
`asgireload` in your command. Options also come from [tool.asgireload] in pyproject.toml,
uvicorn's UVICORN_<OPTION> variables and ASGIRELOAD_<OPTION> ones; the command line wins over the
variables, ASGIRELOAD_* over UVICORN_*, and any variable over the file.
"""
EPILOG = """\
While it runs, in a terminal, single keys (no Enter): r reloads (as SIGUSR1 does), o opens the
browser, c clears the screen, q quits, h lists them. CTRL+C, q, SIGTERM or closing the terminal
(SIGHUP) stops it, a second CTRL+C stops it at once. Times are in seconds.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        hint = "" if "asgireload --help" in message else " (see asgireload --help)"
        self.exit(2, f"asgireload: error: {message}{hint}\n")


def _number(kind: type[int] | type[float], flag: str) -> Any:
    def convert(text: str) -> int | float:
        try:
            return kind(text)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{flag} takes {noun}, got {text!r}") from None

    return convert


_GROUPS = ("asgireload", "server", "uvicorn protocol", "HTTPS", "accepted for compatibility with uvicorn")
_SERVER = frozenset(
    {"host", "port", "uds", "fd", "factory", "app_dir", "env_file", "lifespan", "log_level", "access_log"}
    | {"log_config", "use_colors", "root_path", "proxy_headers", "forwarded_allow_ips", "interface"}
    | {"timeout_graceful_shutdown"}
)
_PROTOCOL = frozenset(
    {"http", "ws", "loop", "http2", "h11_max_incomplete_event_size", "headers", "server_header"}
    | {"date_header", "timeout_keep_alive", "limit_concurrency", "backlog", "reset_contextvars"}
)


def _group_of(name: str) -> str:
    """Where --help lists an option: asgireload's own first, then uvicorn's by topic."""
    if name.startswith("ssl_"):
        return "HTTPS"
    if name in REFUSED or name in NO_EFFECT:
        return "accepted for compatibility with uvicorn"
    if name in _SERVER:
        return "server"
    if name in _PROTOCOL or name.startswith("ws_"):
        return "uvicorn protocol"
    return "asgireload"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="asgireload",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument(
        "app",
        metavar="APP",
        nargs="?",
        help="The app as module:attribute (main:app) or a file (path/to/main.py). Default: app under "
        "[tool.asgireload] in pyproject.toml, else found by reading main.py, app.py, api.py, asgi.py.",
    )
    parser.add_argument("--version", action="version", version=f"asgireload {__version__}")
    parser.add_argument(
        "--no-config",
        dest="no_config",
        action="store_true",
        help="Ignore [tool.asgireload] in the nearest pyproject.toml (ASGIRELOAD_* variables still apply).",
    )
    groups = {title: parser.add_argument_group(title) for title in _GROUPS}
    groups["accepted for compatibility with uvicorn"].add_argument(
        "--reload",
        dest="reload",
        action="store_true",
        help="Accepted for uvicorn's sake: asgireload always reloads.",
    )
    for field in option_fields():
        meta = field.metadata
        if not meta["cli"]:
            continue
        flag = cli_flag(field)
        kwargs: dict[str, Any] = {"dest": field.name, "help": meta["help"]}
        annotation = str(field.type)
        if annotation.startswith("bool"):
            kwargs["action"] = argparse.BooleanOptionalAction if meta["negatable"] else "store_true"
        elif annotation.startswith("tuple"):
            kwargs["action"] = "append"
        elif meta["choices"]:
            kwargs["choices"] = meta["choices"]
        elif annotation.startswith("int"):
            kwargs["type"] = _number(int, flag)
        elif annotation.startswith("float"):
            kwargs["type"] = _number(float, flag)
        if "action" not in kwargs or kwargs["action"] == "append":
            kwargs["metavar"] = meta["metavar"] or (None if meta["choices"] else "VALUE")
        if not annotation.startswith(("bool", "tuple")) and field.default not in (None, ""):
            kwargs["help"] += f" [default: {field.default}]"
        groups[_group_of(field.name)].add_argument(flag, **kwargs)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> Config:
    return parse(argv)[0]


def parse(argv: Sequence[str] | None = None) -> tuple[Config, discovery.Found | None, LiveSettings]:
    """The Config from the flags over ASGIRELOAD_* over [tool.asgireload]; when the app was found
    by reading the source, what was found; and the settings files read, to be read again (the
    same file, under the same flags) when saved."""
    parser = build_parser()
    flags, use_file = _flags(parser, argv)
    path = configfile.find_pyproject() if use_file else None
    pyproject = str(path.resolve()) if path is not None else None
    try:
        config, found = _config_from(flags, pyproject or False)
    except ConfigError as exc:
        parser.error(str(configfile.name_the_file(exc)).rstrip("."))
    return config, found, LiveSettings(config, lambda: _config_from(flags, pyproject or False)[0], pyproject)


def _flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[dict[str, Any], bool]:
    """The options given as flags (unset ones are absent), and whether [tool.asgireload] is read."""
    flags = vars(parser.parse_args(argv))
    flags.pop("reload", None)
    use_file = not flags.pop("no_config", False)
    if flags.get("app") is None:
        flags.pop("app", None)
    for name, value in flags.items():
        if isinstance(value, list):
            flags[name] = tuple(value)
    return flags, use_file


def _config_from(flags: dict[str, Any], pyproject: str | bool) -> tuple[Config, discovery.Found | None]:
    """The layers merged (raises ConfigError): at start-up, and again when the file is saved."""
    options, _ = configfile.layered(flags, pyproject=pyproject, uvicorn_variables=True)
    options.setdefault("live_reload", True)  # on for the command line; Config turns it off off loopback
    found = discovery.resolve(options, search=True)
    if found is not None:
        pyproject_path = configfile.find_pyproject()  # where the pin hint's app_dir would be read from
        if pyproject_path is not None:
            found = dataclasses.replace(found, config_dir=str(pyproject_path.parent))
    return Config(**options), found


def _set_by_env_file(config: Config) -> set[str]:
    """The names the env file would add to the environment (none if it is unreadable: the start
    reports that)."""
    if config.env_file is None:
        return set()
    from ._supervisor.envfile import EnvFileError, env_file_values

    try:
        return set(env_file_values(config.env_file))
    except EnvFileError:
        return set()


def main(argv: Sequence[str] | None = None) -> None:
    reopened = check_standard_streams()  # first: before anything opens a file or a socket
    config, found, live_settings = parse(argv)
    try:
        _logging.set_up(config.log_level, config.use_colors, config.log_config, config.app_dir)
    except _logging.LogConfigError as exc:
        print(f"asgireload: error: {configfile.with_source(str(exc), 'log_config')}", file=sys.stderr)
        sys.exit(2)
    if found is not None:
        from_file = _set_by_env_file(config)  # the env file's value is the user's, as under uvicorn
        for name, value in found.environment.items():  # DJANGO_SETTINGS_MODULE, for the workers
            if name not in from_file:
                os.environ.setdefault(name, value)
        logging.getLogger("asgireload").info("%s", found.message(os.getcwd()))
    warn_about_reopened(reopened)
    try:
        code = asyncio.run(run_with_signals(config, live_settings))
    except KeyboardInterrupt:  # a Ctrl-C before the loop installed its handlers
        code = 130
    sys.exit(code)
