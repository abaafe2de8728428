"""Importing a preload list: the installed modules the app imported last time (`_warmcache.py`).

A spawned worker and the fork server's template both import it before the app, so that a reload
need not; a module that fails to import is left out, never fatal. Standard library only: the
template imports it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Iterator


def import_each(names: Iterable[str]) -> Iterator[tuple[str, BaseException]]:
    """Import every module named, in order; yield each one that failed, with its error.

    KeyboardInterrupt goes through. Breaking out of the loop stops importing the rest."""
    for name in names:
        try:
            importlib.import_module(name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            failure = exc
        else:
            continue
        _take_out_orphans()
        yield name, failure


def _take_out_orphans() -> None:
    """Take out the submodules whose package failed to import (its `__init__` imported them, then
    raised): no fresh process has a submodule without its package, and the package's next import
    would find them half-made (wagtail's `rich_text` then fails in every worker)."""
    for name in list(sys.modules):  # (in the order they were added: a package before its own)
        package = name.rpartition(".")[0]
        if package and package not in sys.modules:
            del sys.modules[name]
