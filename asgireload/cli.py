"""`asgireload APP [options]`: parse the command line into a Config, then run it.

The flags are generated from `Config`'s fields, so an option is declared once. Every mistake
is one line on stderr and a non-zero exit; a Python traceback here is a bug of ours.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import _logging
from .__about__ import __version__
from .config import Config, cli_flag, option_fields
from .errors import ConfigError
from .serving import check_standard_streams, run_with_signals, warn_about_reopened

DESCRIPTION = """\
Serve an ASGI app with uvicorn and restart it when its code changes, without refusing a
connection or cutting a request in flight. APP is module:attribute, e.g. main:app.
"""
EPILOG = """\
While it runs: type r and Enter (or send SIGUSR1) to reload by hand; CTRL+C, SIGTERM or
closing the terminal (SIGHUP) stops it, a second CTRL+C stops it at once. Times are in seconds.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"asgireload: error: {message} (see asgireload --help)\n")


def _number(kind: type[int] | type[float], flag: str) -> Any:
    def convert(text: str) -> int | float:
        try:
            return kind(text)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{flag} takes {noun}, got {text!r}") from None

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="asgireload",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument("app", metavar="APP", help="The app as module:attribute, e.g. main:app.")
    parser.add_argument("--version", action="version", version=f"asgireload {__version__}")
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
        parser.add_argument(flag, **kwargs)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> Config:
    parser = build_parser()
    options = vars(parser.parse_args(argv))
    app = options.pop("app")
    options.setdefault("live_reload", True)  # on for the command line; Config turns it off off loopback
    for name, value in options.items():
        if isinstance(value, list):
            options[name] = tuple(value)
    try:
        return Config(app=app, **options)
    except ConfigError as exc:
        parser.error(str(exc).rstrip("."))


def main(argv: Sequence[str] | None = None) -> None:
    reopened = check_standard_streams()  # first: before anything opens a file or a socket
    config = parse_config(argv)
    _logging.configure(config.log_level)
    warn_about_reopened(reopened)
    try:
        code = asyncio.run(run_with_signals(config))
    except KeyboardInterrupt:  # a Ctrl-C before the loop installed its handlers
        code = 130
    sys.exit(code)
