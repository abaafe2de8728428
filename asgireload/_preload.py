"""Importing a preload list: the installed modules the app imported last time (`_warmcache.py`).

A spawned worker and the fork server's template both import it before the app, so that a reload
need not; a module that fails to import is left out, never fatal. Standard library only: the
template imports it.
"""

from __future__ import annotations

import importlib
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
        yield name, failure
