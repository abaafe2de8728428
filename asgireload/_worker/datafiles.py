"""The files a project layer's modules read at import, beyond their own source.

A held module that reads a data file at import (a JSON or YAML config, a template, a model's
vocabulary) keeps what it read; so does a module it imports from PYTHONPATH, which is neither the
project's nor installed. In a fresh process both are read again. The layer records every file
opened for reading while it imports (an audit hook: `open` and `io.open_code` raise the `open`
event; a module loaded from its cache stands for its source) and reports each that is not
installed code with its stat; the supervisor never forks from the layer once one of them differs
on disk.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .._watchfilter import WatchFilter

_recording: set[str] | None = None  # where opened files go, while a held module imports
_hooked = False
_SYSTEM = ("/proc/", "/sys/", "/dev/")


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recording is None or event != "open" or not args:
        return
    path, mode = args[0], args[1] if len(args) > 1 else "r"
    if isinstance(path, str) and (mode is None or (isinstance(mode, str) and "r" in mode)):
        _recording.add(path)


@contextmanager
def recording_opens(into: set[str]) -> Iterator[None]:
    """Add to `into` the paths opened for reading while the block runs."""
    global _recording, _hooked
    if not _hooked:  # (an audit hook cannot be removed: it returns at once when not recording)
        sys.addaudithook(_audit)
        _hooked = True
    _recording = into
    try:
        yield
    finally:
        _recording = None


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots |= {sys.prefix, sys.base_prefix, sys.exec_prefix}
    return tuple(os.path.join(os.path.realpath(root), "") for root in roots)


def own_files(opened: Iterable[str], project: WatchFilter) -> list[str]:
    """The regular files among `opened` that are not installed code, by absolute path (a cached
    module by its source)."""
    installed = _installed_roots()
    found: dict[str, None] = {}
    for path in opened:
        path = os.path.abspath(path)
        if path.endswith(".pyc") and "__pycache__" in path:
            try:
                path = importlib.util.source_from_cache(path)
            except ValueError:
                continue
        real = os.path.realpath(path)
        if real.startswith(installed) or real.startswith(_SYSTEM) or project.is_installed_package(path):
            continue
        if os.path.isfile(path):
            found[path] = None
    return list(found)
