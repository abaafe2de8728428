"""A module's import-time state as one number: what a project layer compares with a fresh import.

A held module is imported by the layer without the modules it leaves out having run first. If one
of those changed shared state the held module reads at import (appended to a registry, set a
variable), the held module's own values come out different. A worker that ran a module reports
its fingerprint; the layer computes its own after importing it and holds it only if they agree.

Only plain values count (text, numbers, None, and lists, tuples, sets and dicts of them): objects,
functions and classes have no value that two processes can compare, and are left out.
"""

from __future__ import annotations

import zlib
from types import ModuleType

MAX_ITEMS = 1000  # of a container: one longer counts by its length only


def _plain(value: object, depth: int = 0) -> str | None:
    """A text that is the same in two processes for equal plain values; None for anything else."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if depth > 3 or not isinstance(value, (list, tuple, set, frozenset, dict)):
        return None
    if len(value) > MAX_ITEMS:
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, dict):
        pairs = [(_plain(k, depth + 1), _plain(v, depth + 1)) for k, v in value.items()]
        if any(k is None or v is None for k, v in pairs):
            return None
        return "{" + ",".join(sorted(f"{k}:{v}" for k, v in pairs)) + "}"
    items = [_plain(item, depth + 1) for item in value]
    if any(item is None for item in items):
        return None
    texts = [item for item in items if item is not None]
    if isinstance(value, (set, frozenset)):
        texts.sort()
    return f"{type(value).__name__}[" + ",".join(texts) + "]"


def fingerprint(module: ModuleType) -> int:
    """The checksum of the module's plain global values, by name."""
    lines = []
    for name, value in sorted(vars(module).items()):
        if name.startswith("__") and name.endswith("__"):
            continue
        if (text := _plain(value)) is not None:
            lines.append(f"{name}={text}")
    return zlib.crc32("\n".join(lines).encode("utf-8", "surrogateescape"))
