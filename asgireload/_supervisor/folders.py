"""The folders that hold watched files, and how each is covered: by file events or by polling.

A folder is covered the first time a watched file in it (or, for a symlink, in its target's
folder, links.py) is counted: it gets an inotify watch, and its mount is looked up. A folder
whose watch failed, or that lies on a mount sending no events, is polled every `fast_poll`
seconds (its files, and its own listing) instead; a lost watch is set up again by `heal`.
Running out of watches, or finding such a mount, is said once in the log.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from collections.abc import Iterable

from .inotify import DirectoryEventsLike
from .links import Links
from .mounts import Mount, MountTable, mount_polling_message, watch_limit_message

logger = logging.getLogger("asgireload")

_MISSING = (errno.ENOENT, errno.ENOTDIR)


@dataclasses.dataclass(frozen=True)
class Cover:
    """How a folder is covered: its watch's errno (0: watched, -1: no file events at all), and
    the mount that lacks events, if it is on one."""

    error: int
    no_events: tuple[Mount, str] | None


class WatchedFolders:
    """Every covered folder with its watched files; which of them are polled (see the module)."""

    def __init__(
        self, events: DirectoryEventsLike | None, fast_poll: float | None, mounts: MountTable | None
    ) -> None:
        self._events = events
        self._fast_poll = fast_poll
        self._mounts = mounts
        self.files: dict[str, set[str]] = {}  # every covered folder: its watched files
        self.parents: set[str] = set()  # every ancestor of a covered folder
        self.unwatched: set[str] = set()  # folders whose watch failed or was lost
        self.polled_dirs: set[str] = set()
        self.polled_files: set[str] = set()
        self.links = Links()  # watched files that are symlinks, and where their content lives
        self._announced: set[str] = set()  # mount points (and "limit") already logged

    def enter(self, folder: str) -> Cover:
        """Watch a folder and look up its mount; safe in the include walk's thread."""
        error = -1 if self._events is None else self._events.try_watch(folder)
        no_events = None if self._mounts is None else self._mounts.lacking_events(folder)
        return Cover(error, no_events)

    def apply_cover(self, folder: str, cover: Cover) -> None:
        """Record how a folder is covered, and poll it if events cannot be trusted there."""
        if folder not in self.files:
            self.files[folder] = set()
            child, parent = folder, os.path.dirname(folder)
            while parent != child and parent not in self.parents:
                self.parents.add(parent)
                child, parent = parent, os.path.dirname(parent)
        if cover.error > 0:
            self.unwatched.add(folder)
        else:
            self.unwatched.discard(folder)
        if cover.error == errno.ENOSPC:
            self._announce_watch_limit()
        if cover.no_events is not None:
            self._announce_mount(folder, *cover.no_events)
        trusted = cover.error == 0 and cover.no_events is None
        self._set_polled(folder, self._fast_poll is not None and not trusted and cover.error not in _MISSING)

    def cover_again(self, folder: str) -> None:
        """Watch a folder again (re-created or replaced: the old watch is gone)."""
        self.apply_cover(folder, self.enter(folder))

    def _set_polled(self, folder: str, polled: bool) -> None:
        files = self.files[folder]
        if polled and folder not in self.polled_dirs:
            self.polled_dirs.add(folder)
            self.polled_files.update(files)
        elif not polled and folder in self.polled_dirs:
            self.polled_dirs.discard(folder)
            self.polled_files.difference_update(files)

    def forget(self, folder: str) -> None:
        """Stop covering a folder the include walk no longer finds, unless it holds watched files."""
        if not self.files.get(folder):
            self.files.pop(folder, None)
            self.unwatched.discard(folder)
            self.polled_dirs.discard(folder)

    def register(self, path: str) -> None:
        """Count a watched file in its folder (and, for a symlink, in its target's folder)."""
        self._count_in(os.path.dirname(path), path)
        self.follow_link(path)

    def _count_in(self, folder: str, path: str) -> None:
        """Count a watched file in a folder, covering the folder the first time."""
        if folder not in self.files:
            self.cover_again(folder)
        self.files[folder].add(path)
        if folder in self.polled_dirs:
            self.polled_files.add(path)

    def follow_link(self, path: str) -> None:
        """If a watched file is a symlink, cover the folder its content lives in (again, if re-pointed)."""
        before, target = self.links.follow(path)
        if before is not None and (folder := os.path.dirname(before)) != os.path.dirname(path):
            self.files.get(folder, set()).discard(path)
            if os.path.dirname(path) not in self.polled_dirs:
                self.polled_files.discard(path)
        if target is not None:
            self._count_in(os.path.dirname(target), path)

    def is_being_written(self, path: str) -> bool:
        """Whether file events say a writer still has the file (or a link's target) open."""
        if self._events is None:
            return False
        target = self.links.target_of(path)
        return self._events.is_being_written(path) or (
            target is not None and self._events.is_being_written(target)
        )

    def files_below(self, path: str) -> Iterable[str]:
        """The watched files in `path` and in every covered folder below it."""
        below = os.path.join(path, "")
        for folder, files in self.files.items():
            if folder == path or folder.startswith(below):
                yield from files

    def heal(self, skip: Iterable[str] = ()) -> None:
        """Watch again the folders whose watch failed or was lost (deleted and re-created, moved)."""
        if self._events is None:
            return
        skipped = set(skip)
        for folder in list(self.files):
            if folder not in skipped and (folder in self.unwatched or not self._events.is_watching(folder)):
                self.cover_again(folder)

    def _announce_mount(self, folder: str, mount: Mount, reason: str) -> None:
        if mount.point not in self._announced:
            self._announced.add(mount.point)
            logger.info("%s", mount_polling_message(folder, self._fast_poll, mount, reason))

    def _announce_watch_limit(self) -> None:
        if "limit" not in self._announced:
            self._announced.add("limit")
            logger.warning("%s", watch_limit_message(self._fast_poll))
