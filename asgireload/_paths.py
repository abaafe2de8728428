"""Paths as people read them: relative to the current folder when they are inside it."""

from __future__ import annotations

import os


def relative(path: str, start: str | None = None) -> str:
    """`path` relative to `start` (default: the current folder), or as given if it lies outside.

    With an absolute `start` this looks at no file system, so the supervisor's pure core can use it.
    """
    try:
        rel = os.path.relpath(path, start)
    except (ValueError, OSError):  # another drive (Windows), or the current folder was deleted
        return path
    return path if rel == ".." or rel.startswith(".." + os.sep) else rel
