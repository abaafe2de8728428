"""The walk that finds --reload-include files and covers every folder it enters.

The files a worker imports are reported by the worker; files matched by --reload-include
(templates, static files, data) are not imported, so the supervisor finds them by walking the
watched roots. The walk calls `enter(folder)` on each folder *before* listing it: the scanner
puts its inotify watch there, so a file created while the walk runs is either listed or
announced by an event, never neither. The folder's own stat is taken before the listing too,
for folders that get no events: a later change of that stat means "list me again".

It runs in a worker thread (a big tree takes a good fraction of a second), and stops early
when told to.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from .._watchfilter import SKIPPED_DIRS

Stat = tuple[int, int, int] | None

__all__ = ["IncludeRules", "Walk", "is_skipped_folder", "walk_includes"]


class IncludeRules(Protocol):
    """What the walk needs of the project's WatchFilter."""

    @property
    def roots(self) -> tuple[str, ...]: ...

    def is_included(self, path: str) -> bool: ...


@dataclasses.dataclass
class Walk:
    """What one walk found: the folders it entered and the matching files, with their stats."""

    folders: dict[str, tuple[Stat, object]] = dataclasses.field(default_factory=dict)
    files: dict[str, Stat] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0  # wall time of the walk, which the scanner counts in its budget


def folder_key(path: str) -> str:
    """A folder spelled without a trailing separator, as os.path.dirname() spells it."""
    return path.rstrip(os.sep) or os.sep


# Folders that tools fill with generated files (builds, coverage reports, docs, caches): a walk
# for templates or stylesheets must not enter them, nor watch them (a coverage run rewriting
# htmlcov/ would reload the pages), and in a project with a frontend they hold most of the tree.
GENERATED_DIRS = frozenset({"htmlcov", "coverage", "build", "_build", "dist", "bower_components"})


def is_skipped_folder(path: str) -> bool:
    """Hidden folders, caches, generated output, installed packages and virtualenvs hold no project files."""
    name = os.path.basename(path)
    if name.startswith(".") or name in SKIPPED_DIRS or name in GENERATED_DIRS:
        return True
    return os.path.exists(os.path.join(path, "pyvenv.cfg"))


def stat_key(path: str) -> Stat:
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a path the OS cannot take (an embedded NUL)
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def walk_includes(
    tops: Iterable[str],
    rules: IncludeRules,
    *,
    enter: Callable[[str], object] = lambda folder: None,
    stat_files: bool = True,
    stop: threading.Event | None = None,
) -> Walk:
    """Walk `tops` (roots, or folders just created) for files that `rules` include.

    Skips what the project filter skips (hidden folders, SKIPPED_DIRS, virtualenvs) and never
    follows a symlink to a folder, so a link loop cannot trap it. `enter(folder)` is called
    before each folder is listed and its answer kept in `Walk.folders`. With `stat_files`, each
    match gets its current stat; otherwise None ("new": a change as soon as it is stat'ed).
    """
    started = time.perf_counter()
    found = Walk()
    pending = [folder_key(top) for top in tops]
    while pending:
        if stop is not None and stop.is_set():
            break
        folder = pending.pop()
        if folder in found.folders:
            continue
        answer = enter(folder)
        found.folders[folder] = (stat_key(folder), answer)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_folder:
                if not is_skipped_folder(entry.path):
                    pending.append(entry.path)
            elif rules.is_included(entry.path) and not _is_folder_link(entry):
                found.files[entry.path] = stat_key(entry.path) if stat_files else None
    found.seconds = time.perf_counter() - started
    return found


def _is_folder_link(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_symlink() and entry.is_dir()
    except OSError:
        return False
