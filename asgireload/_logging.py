"""How the command line (and `run()`, and a worker) show asgireload's log: uvicorn's style.

The library itself never configures logging; only the entry points that own the terminal do,
each through `set_up`. (`serve(reload=False)` applies only a given --log-config, as
uvicorn.Config does; a worker's uvicorn loggers get uvicorn's own default set-up.)
"""

from __future__ import annotations

import configparser
import contextlib
import importlib
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

_COLOURS = {
    logging.DEBUG: "\x1b[34m",
    logging.INFO: "\x1b[32m",
    logging.WARNING: "\x1b[33m",
    logging.ERROR: "\x1b[31m",
    logging.CRITICAL: "\x1b[1;31m",
}
LEVELS = {"critical": 50, "error": 40, "warning": 30, "info": 20, "debug": 10, "trace": 5}


class _Formatter(logging.Formatter):
    """`INFO:     message`, the level coloured only when the stream is a terminal."""

    def __init__(self, colour: bool) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        name = record.levelname + ":"
        prefix = name.ljust(10)
        if self.colour:
            prefix = f"{_COLOURS.get(record.levelno, '')}{name}\x1b[0m" + " " * (10 - len(name))
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return prefix + text


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr; while a debugger's prompt is shown in the same terminal (`prompt_shown` says which
    prompt), a line starts on a line of its own and the prompt is drawn again after it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.prompt_shown: Callable[[], str | None] = lambda: None

    def emit(self, record: logging.LogRecord) -> None:
        prompt = self.prompt_shown()
        if prompt is None:
            super().emit(record)
            return
        with contextlib.suppress(OSError, ValueError):
            self.stream.write("\n")
        super().emit(record)
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(prompt)
            self.flush()


def follow_prompt(prompt_shown: Callable[[], str | None]) -> None:
    """Put asgireload's log lines beside a debugger's prompt, not on its line (see `_Handler`)."""
    for handler in logging.getLogger("asgireload").handlers:
        if isinstance(handler, _Handler):
            handler.prompt_shown = prompt_shown


def configure(level: str | None, colour: bool | None = None) -> None:
    """uvicorn's look on stderr; `colour` None: coloured when stderr is a terminal (--use-colors)."""
    logger = logging.getLogger("asgireload")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _Handler()
    handler.setFormatter(_Formatter(colour=sys.stderr.isatty() if colour is None else colour))
    logger.addHandler(handler)
    logger.setLevel(LEVELS.get(level or "info", logging.INFO))
    logger.propagate = False


def set_up(
    level: str | None,
    colour: bool | None = None,
    log_config: str | dict[str, Any] | None = None,
    app_dir: str | None = None,
) -> None:
    """The one logging set-up of a process that shows asgireload's log (the command line, run(),
    a worker, a saved settings file): uvicorn's look on stderr, then the --log-config file, if
    any, over it. Raises LogConfigError for a file that cannot be applied (the look stays)."""
    configure(level, colour)
    if log_config is not None:
        apply_config_file(log_config, level, app_dir)


class LogConfigError(Exception):
    """A --log-config file that cannot be read or applied (the message is one line)."""


def read_config_file(path: str) -> dict[str, Any] | configparser.RawConfigParser:
    """The file as uvicorn reads it: JSON or YAML (with PyYAML) for dictConfig, else ini."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise LogConfigError(f"cannot read --log-config {path}: {exc.strerror}.") from None
    except UnicodeDecodeError:
        raise LogConfigError(f"cannot read --log-config {path}: it is not UTF-8 text.") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LogConfigError(f"--log-config {path} is not valid JSON: {exc}.") from None
    elif path.endswith((".yaml", ".yml")):
        try:
            yaml: Any = importlib.import_module("yaml")
        except ImportError:
            raise LogConfigError(
                f"--log-config {path} is YAML, which needs PyYAML: pip install pyyaml."
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())
            raise LogConfigError(f"--log-config {path} is not valid YAML: {reason}.") from None
    else:
        parser = configparser.RawConfigParser()
        try:
            parser.read_string(text, source=path)
        except configparser.Error as exc:
            reason = " ".join(str(exc).split())
            raise LogConfigError(f"--log-config {path} is not a valid ini file: {reason}.") from None
        if not parser.has_section("loggers"):
            raise LogConfigError(
                f"--log-config {path} has no [loggers] section (an ini file for logging.config.fileConfig; "
                "use .json or .yaml for a dictConfig)."
            )
        return parser
    if not isinstance(data, dict) or "version" not in data:
        raise LogConfigError(
            f"--log-config {path} must hold a logging dictConfig (a mapping with version: 1)."
        )
    return data


def apply_config_file(path: str | dict[str, Any], level: str | None, app_dir: str | None = None) -> None:
    """Apply a --log-config file (or a dictConfig mapping) as uvicorn does, and send asgireload's
    own lines where it sends uvicorn's (unless the file configures the asgireload logger itself).

    `level` None leaves the levels the file set (uvicorn's default); `app_dir` goes first on
    sys.path, as uvicorn puts it there before the file names a project's formatter class."""
    import logging.config  # here, not at the top: only a --log-config needs it (start-up time)

    config = path if isinstance(path, dict) else read_config_file(path)
    if app_dir is not None and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    logger = logging.getLogger("asgireload")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    try:
        if isinstance(config, dict):
            logging.config.dictConfig(config)
        else:
            logging.config.fileConfig(config, disable_existing_loggers=False)
    except Exception as exc:  # logging.config raises ValueError, KeyError, ImportError, ...
        configure(level)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        cause = exc.__cause__
        if cause is not None and str(cause) not in reason:  # "Unable to configure formatter": why
            reason += f" ({type(cause).__name__}: {' '.join(str(cause).split())})"
        name = "the log_config mapping" if isinstance(path, dict) else path
        raise LogConfigError(f"cannot apply --log-config {name}: {reason}.") from None
    ours = [n for n in logging.Logger.manager.loggerDict if n.startswith("asgireload.")]
    for name in ("asgireload", *ours):
        logging.getLogger(name).disabled = False  # a dictConfig disables loggers it does not name
    if level is not None:
        logger.setLevel(LEVELS[level])
        for name in ("uvicorn.error", "uvicorn.access", "uvicorn.asgi"):  # as uvicorn.Config does
            logging.getLogger(name).setLevel(LEVELS[level])
    elif logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if logger.handlers:
        return
    handlers = _effective_handlers(logging.getLogger("uvicorn.error"))
    if handlers:
        for handler in handlers:
            logger.addHandler(handler)
        logger.propagate = False
    elif logging.getLogger().handlers:
        logger.propagate = True
    else:
        configure(level)


def _effective_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record logged on `logger` reaches."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    return found
