"""How the command line (and `run()`) show asgireload's log: uvicorn's style.

The library itself never configures logging; only the entry points that own the terminal do.
"""

from __future__ import annotations

import logging
import sys

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


def configure(level: str) -> None:
    logger = logging.getLogger("asgireload")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(colour=sys.stderr.isatty()))
    logger.addHandler(handler)
    logger.setLevel(LEVELS.get(level, logging.INFO))
    logger.propagate = False
