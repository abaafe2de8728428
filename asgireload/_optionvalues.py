"""The values an option of `Config` accepts: the other forms taken for one (os.PathLike paths,
uvicorn's header pairs and address lists), and the checks of type, range and combination.

config.py declares the options; this module only judges the values given for them, so that the
declarations read as one list. A bad value raises one ConfigError, made by config.py's `fail`,
which names the option and its flag.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._uvicorn import check_uvicorn_options
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config

Fail = Callable[[str, str], ConfigError]  # (option name, what is wrong) -> the error to raise

_LISTS = ("reload_dirs", "reload_includes", "reload_excludes", "live_includes", "headers")


def accept_other_forms(config: Config, path_options: Iterable[str]) -> None:
    """Turn the other forms an option may be given in into the one the Config holds: paths as
    strings, lists as tuples; and the forms uvicorn.Config takes too: headers as (name, value)
    pairs, forwarded_allow_ips as a list of addresses."""
    for name in path_options:
        value = getattr(config, name)
        if isinstance(value, os.PathLike):
            object.__setattr__(config, name, os.fspath(value))
    for name in _LISTS:
        value = getattr(config, name)
        if isinstance(value, list | tuple):
            items = tuple(os.fspath(v) if isinstance(v, os.PathLike) else v for v in value)
            object.__setattr__(config, name, items)
    if isinstance(config.headers, tuple):
        pairs = tuple(
            f"{h[0]}: {h[1]}"
            if isinstance(h, list | tuple) and len(h) == 2 and all(isinstance(p, str) for p in h)
            else h
            for h in config.headers
        )
        object.__setattr__(config, "headers", pairs)
    ips = config.forwarded_allow_ips
    if isinstance(ips, list | tuple) and all(isinstance(ip, str) for ip in ips):
        object.__setattr__(config, "forwarded_allow_ips", ",".join(ips))


def check_values(config: Config, options: Iterable[dataclasses.Field[Any]], fail: Fail) -> None:
    """Check every option's type and range; raise one ConfigError naming the first bad option."""
    for field in options:
        value = getattr(config, field.name)
        expected = field.type if isinstance(field.type, str) else str(field.type)
        _check_type(field.name, value, expected, fail)
        choices = field.metadata.get("choices")
        if choices and value not in choices and value is not None:
            raise fail(field.name, f"must be one of {', '.join(choices)}; got {value!r}.")

    if not 0 <= config.port <= 65535:
        raise fail("port", f"must be between 0 and 65535, got {config.port}.")
    if config.fd is not None and config.fd < 0:
        raise fail("fd", f"must be a file descriptor number (0 or more), got {config.fd}.")
    if config.uds is not None and config.fd is not None:
        raise ConfigError("pass either --uds or --fd, not both.")
    for name in ("drain_timeout", "poll_interval"):
        if getattr(config, name) is None:
            continue
        value = float(getattr(config, name))
        if math.isnan(value) or value < 0 or math.isinf(value):
            raise fail(name, f"must be a number of seconds, 0 or more, got {value}.")
    if config.poll_interval is not None and config.poll_interval < 0.01:
        raise fail("poll_interval", f"must be at least 0.01 seconds, got {config.poll_interval}.")
    if not config.host:
        raise fail("host", "must not be empty.")
    for glob in config.live_includes:
        _check_live_include(glob, fail)
    check_uvicorn_options(config, fail)


def _check_live_include(glob: str, fail: Fail) -> None:
    """A live-reload glob names assets under the watched folders, never Python files (code)."""
    if not glob.strip() or "\x00" in glob:
        raise fail("live_includes", f"takes a glob such as '*.css', got {glob!r}.")
    if os.path.isabs(glob):
        raise fail("live_includes", f"takes a glob relative to the watched folders, got {glob!r}.")
    name = glob.rsplit("/", 1)[-1]  # 'static/*' is fine: Python is never an asset anyway
    anywhere = re.sub(r"^(\*\*/)+", "", glob)  # '**/x' matches x at the top too
    if fnmatch.fnmatch("app.py", anywhere) or (
        fnmatch.fnmatch("app.py", name) and not fnmatch.fnmatch("a.css", name)
    ):
        raise fail(
            "live_includes",
            f"{glob!r} matches Python files, which are code: name the asset types, such as '*.css'.",
        )


def _check_type(name: str, value: Any, annotation: str, fail: Fail) -> None:
    optional = "None" in annotation
    if value is None:
        if optional:
            return
        raise fail(name, "must not be None.")
    if "dict" in annotation and isinstance(value, dict):  # log_config as a dictConfig mapping
        if "version" not in value:
            raise fail(name, "as a mapping must be a logging dictConfig (with version: 1).")
        return
    if annotation.startswith("tuple"):
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            raise fail(name, f"must be a tuple of strings, got {value!r}.")
        return
    if annotation.startswith("bool"):
        ok = isinstance(value, bool)
        kind = "True or False"
    elif annotation.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "a whole number"
    elif annotation.startswith("float"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        kind = "a number"
    else:
        ok = isinstance(value, str)
        kind = "a string"
    if not ok:
        raise fail(name, f"must be {kind}, got {value!r}.")
