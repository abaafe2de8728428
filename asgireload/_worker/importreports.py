"""What a worker reports about its imports, in messages well under the supervisor's line limit:
the preload's failures (in `hello`) and the files, modules and imports of the app (`files`).

A report is split by its encoded size, not its length: a path's non-ASCII characters take up to
six bytes each in JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from .. import _protocol as protocol
from .._preload import import_each
from .._protocol import ImportEntry
from .fingerprints import fingerprint

REPORT_BYTES = protocol.MAX_LINE // 4  # encoded bytes of files and modules per `files` message
PRELOAD_ERROR_CHARS = 500  # of each failed preload's error, in `hello`


def preload(names: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Import the third-party modules the last generation used, so a reload need not; return
    those that failed, with their errors.

    Every module is tried, and every failure reported at once (the supervisor drops them all
    from the list and says so once), not one per worker; a few hundred kilobytes of them at
    most: the next worker reports the rest.
    """
    failed: list[tuple[str, str]] = []
    size = 0
    for name, exc in import_each(names):
        error = f"{type(exc).__name__}: {exc}"[:PRELOAD_ERROR_CHARS]
        size += len(json.dumps([name, error]))
        if size > REPORT_BYTES:
            break
        failed.append((name, error))
    return tuple(failed)


def report_chunks(lists: dict[str, list[Any]]) -> Iterator[dict[str, list[Any]]]:
    """Split a report's lists by encoded size (a path's non-ASCII characters take 6 bytes each)."""
    chunk: dict[str, list[Any]] = {kind: [] for kind in lists}
    size = 0
    for kind, items in lists.items():
        for item in items:
            cost = len(json.dumps(item)) + 1
            if size + cost > REPORT_BYTES and any(chunk.values()):
                yield chunk
                chunk, size = {k: [] for k in lists}, 0
            chunk[kind].append(item)
            size += cost
    yield chunk


def layer_checks(
    env_set: Iterable[str], imports: list[ImportEntry], held: frozenset[str]
) -> Iterator[protocol.Files]:
    """What a project layer's modules must agree with: the variables the app's import set, and
    the plain values of the project modules this worker ran itself (see fingerprints.py)."""
    if env := tuple(env_set):
        yield protocol.Files(env=env)
    ran = dict.fromkeys(name for name, _, _ in imports if name not in held and name in sys.modules)
    prints = tuple((name, fingerprint(sys.modules[name])) for name in ran)
    for start in range(0, len(prints), 2000):
        yield protocol.Files(fingerprints=prints[start : start + 2000])
