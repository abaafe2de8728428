"""The async mtime scanner: the source of truth for "did a watched file change".

Each watched path has a baseline `(st_mtime_ns, st_size, st_ino)`, or None for "missing".
Any inequality is a change, so in-place writes, saves that rename a temp file over the
original, deletes, re-creations and mtimes that go backwards after a `git checkout` are all
seen. A burst of changes (a checkout of 200 files) is gathered into one report: after the
first change the scanner waits for a quiet gap, with an upper bound, and a file caught
half-way through a save (gone, or emptied) is waited for (bursts.py).

A watched file that is a symlink is watched where its content lives too (links.py): the
folder of its target is covered, and an event there is a hint for the link.

How a change is noticed, fastest first:

* on Linux, inotify watches every folder that holds a watched file or that the
  --reload-include walk entered; an event makes the scanner stat the named file at once, and
  a new matching file (or a new folder, walked at once) joins the watched files;
* folders that get no reliable events (a network or shared mount, an exhausted watch limit,
  forced polling, no inotify at all) have their files, and their own listing, polled every
  `fast_poll` seconds (folders.py keeps each folder's cover: watched, or polled, and why);
* a full scan (stat everything, and walk the roots again for --reload-include) is the safety
  net. Where events do the work, its measured cost buys it at most SAFETY_SCAN_SHARE of a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable

from .bursts import Bursts, ChangeHandler
from .folders import Cover, WatchedFolders
from .includes import IncludeRules, Walk, is_skipped_folder, walk_includes
from .includes import Stat as Stat
from .includes import stat_key as stat_key
from .inotify import directory_events as _directory_events  # (tests replace it)
from .mounts import MountTable, forced_polling_reason

logger = logging.getLogger("asgireload")

THREAD_THRESHOLD = 256  # stat more files than this in a worker thread, off the event loop
# With file events as hints, the full scan is only a safety net: it may cost at most this
# share of one core (2,000 files take ~4.5 ms to stat here, so they are scanned every ~4.5 s).
SAFETY_SCAN_SHARE = 0.001
FAST_POLL = 0.25  # seconds between two stats of a file whose folder gets no file events
# Polling may cost at most this share of a core: past ~10,000 polled files it slows down
# rather than take the machine.
POLL_SHARE = 0.1
# After events were lost (queue overflow), the --reload-include walk runs again soon, but
# walks back to back may take at most this share of a core.
RECOVERY_SHARE = 0.1
_IGNORED_LIMIT = 10_000  # remembered names that match no --reload-include glob


def _stat_many(paths: list[str]) -> list[Stat]:
    return [stat_key(p) for p in paths]


class Scanner(Bursts):
    """Watches a growing set of files; calls `on_change(paths, changed_at)` once per burst.

    `includes` (the project's WatchFilter, when --reload-include is given) adds every file it
    includes under its roots. `fast_poll` is the interval for folders without file events
    (None: no such polling and no mount detection, only full scans, for files that matter
    less). `force_polling` turns file events off altogether.
    """

    def __init__(
        self,
        on_change: ChangeHandler,
        *,
        interval: float | None = None,
        includes: IncludeRules | None = None,
        force_polling: bool = False,
        fast_poll: float | None = FAST_POLL,
        quiet_gap: float | None = None,
    ) -> None:
        self._on_change = on_change
        self._quiet_gap = quiet_gap  # --reload-delay: one fixed gap instead of the adaptive ones
        self._rules = includes
        self._baseline: dict[str, Stat] = {}
        self._suspects: set[str] = set()
        self._check_all = False
        self._wakeup = asyncio.Event()
        self._forced = forced_polling_reason(force_polling)
        self._events = None if self._forced else _directory_events(self._hint)
        self.interval = interval if interval is not None else (1.0 if self._events else 0.2)
        self._fast_poll = None if fast_poll is None else min(fast_poll, self.interval)
        mounts = MountTable() if self._events is not None and self._fast_poll is not None else None
        self._folders = WatchedFolders(self._events, self._fast_poll, mounts)
        self._full_scan_cost = 0.0  # seconds the last full scan took
        self._next_full = 0.0  # loop times at which the next full scan and the next poll are due
        self._next_poll = 0.0
        self._recovery_at = 0.0
        self._walk_wanted = False  # events were lost: walk the roots again (soon, within budget)
        self._stop = threading.Event()  # tells a walk running in a thread to give up
        self._include_dirs: dict[str, Stat] = {}  # folders the include walk entered: their stat
        self._new_entries: set[str] = set()  # unknown names that events reported
        self._reenter: set[str] = set()  # covered folders an event named: watch them again
        self._ignored: set[str] = set()  # names known to match no include glob

    @property
    def uses_file_events(self) -> bool:
        return self._events is not None

    def __len__(self) -> int:
        return len(self._baseline)

    def __contains__(self, path: object) -> bool:
        return path in self._baseline

    def stat_of(self, path: str) -> Stat:
        """The stat this file has as far as the scanner knows (None: missing or not watched)."""
        return self._baseline.get(path)

    def watch(self, entries: Iterable[tuple[str, Stat]]) -> None:
        """Set the baseline of these files to the stat their code was built from, and check them now."""
        for path, stat_ in entries:
            self._baseline[path] = stat_
            self._suspects.add(path)
            self._folders.register(path)
        self._wakeup.set()

    @property
    def next_full_scan(self) -> float:
        """Seconds until the next full scan: the interval, or longer while events or polling do the work."""
        if self._events is None and self._fast_poll is None:
            return self.interval
        return max(self.interval, self._full_scan_cost / SAFETY_SCAN_SHARE)

    def close(self) -> None:
        self._stop.set()
        if self._events is not None:
            self._events.close()

    async def run(self) -> None:
        """Scan until cancelled. Cancelling it is the way to stop it; nothing is left running."""
        loop = asyncio.get_running_loop()
        try:
            if self._forced and self._fast_poll is not None:
                logger.info(
                    "Polling the watched files every %g s with file events off: %s.",
                    self._fast_poll,
                    self._forced,
                )
            if self._rules is not None:
                walk = await self._walk(self._rules.roots, stat_files=True)
                self._merge(walk, new=False)
                self._full_scan_cost = walk.seconds
            self._next_full = loop.time() + self.next_full_scan
            self._next_poll = loop.time() + (self._fast_poll or 0.0)
            while True:
                deadline = self._next_full
                if self._folders.polled_dirs:
                    deadline = min(deadline, self._next_poll)
                if self._walk_wanted:
                    deadline = min(deadline, self._recovery_at)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._wakeup.wait()
                now = loop.time()
                full = now >= self._next_full or (self._walk_wanted and now >= self._recovery_at)
                changed = await self._scan(
                    full=full, poll=bool(self._folders.polled_dirs) and now >= self._next_poll
                )
                if changed:
                    await self._settle(changed)
        finally:
            self.close()

    # ------------------------------------------------------------ --reload-include files

    async def _walk(self, tops: Iterable[str], *, stat_files: bool) -> Walk:
        assert self._rules is not None
        return await asyncio.to_thread(
            walk_includes,
            list(tops),
            self._rules,
            enter=self._folders.enter,
            stat_files=stat_files,
            stop=self._stop,
        )

    def _merge(self, walk: Walk, *, new: bool) -> None:
        """Cover the folders a walk entered; watch the files it found (new ones: as missing)."""
        for folder, (folder_stat, cover) in walk.folders.items():
            self._include_dirs[folder] = folder_stat
            assert isinstance(cover, Cover)
            self._folders.apply_cover(folder, cover)
        for path, stat_ in walk.files.items():
            if path not in self._baseline:
                self._baseline[path] = None if new else stat_
                self._folders.register(path)
                self._suspects.add(path)

    def _hint(self, path: str | None) -> None:
        """A file event: stat a watched file now, or look at a new name, or rescan everything."""
        if path is None:
            self._check_all = True
            self._walk_wanted = self._rules is not None
        elif path in self._baseline or self._folders.links.links_to(path):
            self._suspects.add(path)  # (a link's target only: stat'ed, never reported itself)
            self._suspects.update(self._folders.links.links_to(path))
        else:
            folders = self._folders
            if path in folders.files:
                self._reenter.add(path)  # re-created or replaced: the old watch is gone
            if path in folders.files or path in folders.parents:
                # A folder deleted, moved or replaced: every watched file below it may have changed.
                self._suspects.update(folders.files_below(path))
            if self._rules is not None and path not in self._ignored:
                self._new_entries.add(path)
        self._wakeup.set()

    async def _take_new_entries(self) -> None:
        """Add the new names in walked folders that match an include glob; walk new folders."""
        entries, self._new_entries = self._new_entries, set()
        assert self._rules is not None
        folders = []
        for path in entries:
            if os.path.dirname(path) not in self._include_dirs or path in self._baseline:
                continue
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue  # gone again: an editor's temporary file
            if stat.S_ISDIR(mode):
                if not is_skipped_folder(path):
                    folders.append(path)
            elif self._rules.is_included(path):
                self._baseline[path] = None
                self._folders.register(path)
                self._suspects.add(path)
            else:
                if len(self._ignored) >= _IGNORED_LIMIT:
                    self._ignored.clear()
                self._ignored.add(path)
        if folders:
            self._merge(await self._walk(folders, stat_files=False), new=True)

    def _look_into_changed_folders(self, folder_stats: dict[str, Stat]) -> None:
        """A polled folder whose stat changed has new or removed names: look at each new one."""
        for folder, now in folder_stats.items():
            if now is None or now == self._include_dirs.get(folder):
                continue
            self._include_dirs[folder] = now
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            paths = (os.path.join(folder, name) for name in names)
            known = (self._baseline, self._include_dirs, self._ignored)
            self._new_entries.update(p for p in paths if not any(p in k for k in known))

    # ------------------------------------------------------------ scanning

    async def _stat(self, paths: list[str]) -> list[Stat]:
        if len(paths) > THREAD_THRESHOLD:
            return await asyncio.to_thread(_stat_many, paths)
        return _stat_many(paths)

    async def _scan(self, *, full: bool, poll: bool) -> dict[str, Stat]:
        """Stat what is due: hinted files; polled files and folders; or everything, after a walk."""
        self._wakeup.clear()
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        walked: set[str] = set()
        if full and self._rules is not None:
            self._walk_wanted = False
            walk = await self._walk(self._rules.roots, stat_files=False)
            for gone in [f for f in self._include_dirs if f not in walk.folders]:
                del self._include_dirs[gone]
                self._folders.forget(gone)
            self._merge(walk, new=True)
            walked = set(walk.folders)
        check_all = full or self._check_all
        if check_all:
            self._check_all = False
            self._folders.heal(skip=walked)
        for folder in self._reenter:
            self._folders.cover_again(folder)
        self._reenter.clear()
        if poll:
            folders = [f for f in self._folders.polled_dirs if f in self._include_dirs]
            self._look_into_changed_folders(dict(zip(folders, await self._stat(folders), strict=True)))
        if self._new_entries and self._rules is not None:
            await self._take_new_entries()
        if check_all:
            paths = list(self._baseline)
        else:
            paths = list(self._suspects | self._folders.polled_files if poll else self._suspects)
        self._suspects = set()
        stats = await self._stat(paths)
        elapsed = time.perf_counter() - started
        if full:
            self._full_scan_cost = elapsed
            self._next_full = loop.time() + self.next_full_scan
            self._recovery_at = loop.time() + elapsed / RECOVERY_SHARE
        if poll and self._fast_poll is not None:
            self._next_poll = loop.time() + max(self._fast_poll, elapsed / POLL_SHARE)
        return {p: s for p, s in zip(paths, stats, strict=True) if self._baseline.get(p, s) != s}
