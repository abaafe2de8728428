"""Watched files that are symlinks: their content lives in another folder, which must be watched too.

A module `helper.py -> ../shared/helper.py` is reported by the worker under the link's path, and
the scanner stats it there (stat follows the link). But an edit of the target makes file events
only in the target's folder, so that folder is covered as well, and an event for the target's
path is taken as a hint for the link's. The link's own folder stays covered: re-pointing the link
is an event there. A folder on the path that is a link needs nothing of this: a folder watch
follows the link, and its events come under the spelling that was watched.
"""

from __future__ import annotations

import os


def link_target(path: str) -> str | None:
    """Where a watched file's content lives, if the file itself is a symlink (else None)."""
    if not os.path.islink(path):
        return None
    return os.path.realpath(path)


class Links:
    """Which watched files are symlinks, and the real path each one points to now."""

    def __init__(self) -> None:
        self._target: dict[str, str] = {}  # watched link -> the real file it points to
        self._links: dict[str, set[str]] = {}  # real file -> the watched links that point to it

    def follow(self, path: str) -> tuple[str | None, str | None]:
        """Look at `path` again; return (the target it no longer points to, its new target)."""
        target = link_target(path)
        before = self._target.get(path)
        if target == before:
            return None, None
        if before is not None:
            self._unlink(path, before)
        if target is not None and target != path:
            self._target[path] = target
            self._links.setdefault(target, set()).add(path)
            return before, target
        return before, None

    def target_of(self, path: str) -> str | None:
        """The real file a watched link points to (None: not a link)."""
        return self._target.get(path)

    def links_to(self, real: str) -> set[str]:
        """The watched links whose content is `real` (an event for it is a hint for them)."""
        return self._links.get(real, set())

    def _unlink(self, path: str, target: str) -> None:
        del self._target[path]
        links = self._links.get(target)
        if links is not None:
            links.discard(path)
            if not links:
                del self._links[target]
