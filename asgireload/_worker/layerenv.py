"""The environment variables a project layer's modules read at import, and whether the app set them.

A held module that reads a variable at import built its state from the value the layer saw. In a
fresh process the app's own module may have set that variable first (`load_dotenv()` at the top
of `main.py`), so two checks keep a layer from serving a value a fresh process would not have:

- The layer refuses to hold a module that reads a variable the app's last import set, changed or
  removed (`APP_SETS`, which the supervisor sends with the modules to hold): that module runs in
  every generation, after the app's module.
- A worker forked from a layer checks, once its app imported, that every variable the held
  modules read still has the value they saw (`stale_environment`). An edit that makes the app set
  one anew fails that check, and the supervisor loads the generation again in a worker with no
  layer, before it serves anything.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import FrameType

from .._protocol import Failure

APP_SETS: frozenset[str] = frozenset()  # set in a layer: what the app's last import set
SEEN: dict[str, str | None] = {}  # set in a layer, inherited by its workers: name -> value read


def set_by_import(before: Mapping[str, str]) -> set[str]:
    """The variables set, changed or removed since `before` (a copy taken before the import)."""
    now = os.environ
    return {name for name in before.keys() | now.keys() if before.get(name) != now.get(name)}


@contextmanager
def recording_reads() -> Iterator[dict[str, str | None]]:
    """The variables read (by any means: `os.environ[...]`, `.get`, `os.getenv`, iterating) while
    the block runs, each with the value read (None: unset)."""
    read: dict[str, str | None] = {}
    environ_type = type(os.environ)
    original = environ_type.__getitem__

    def getitem(self: os._Environ[str], key: str) -> str:
        try:
            value = original(self, key)
        except KeyError:
            if self is os.environ and not _asgireload_reads():
                read.setdefault(key, None)
            raise
        if self is os.environ and not _asgireload_reads():
            read.setdefault(key, value)
        return value

    environ_type.__getitem__ = getitem  # type: ignore[method-assign]
    try:
        yield read
    finally:
        environ_type.__getitem__ = original  # type: ignore[method-assign]


def _asgireload_reads() -> bool:
    """Whether the read comes from asgireload's own hooks (the import recorder), not the module."""
    frame: FrameType | None = sys._getframe(2)  # (past getitem and this function)
    for _ in range(3):  # `environ[key]`, or through Mapping.get / os.getenv
        if frame is None:
            return False
        if str(frame.f_globals.get("__name__", "")).startswith("asgireload."):
            return True
        frame = frame.f_back
    return False


def stale_environment() -> Failure | None:
    """In a worker forked from a layer, once the app imported: a variable its held modules read
    at import that has another value now, as a failure the supervisor answers with a fresh load."""
    for name, value in SEEN.items():
        if os.environ.get(name) != value:
            return Failure(
                "stale-layer",
                f"the project layer's modules read {name} at import, and the app's import changed it",
            )
    return None
