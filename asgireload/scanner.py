"""The async mtime scanner: the source of truth for "did a watched file change".

Each watched path has a baseline `(st_mtime_ns, st_size, st_ino)`, or None for "missing".
Any inequality is a change, so in-place writes, saves that rename a temp file over the
original, deletes, re-creations and mtimes that go backwards after a `git checkout` are all
seen. A full scan runs every `interval`; on Linux, inotify events on the watched folders make
the scanner look at the named files at once (a hint only: the stat decides). A burst of
changes (a checkout of 200 files) is gathered into one report: after the first change the
scanner waits for a quiet gap, with an upper bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import anyio.to_thread

Stat = tuple[int, int, int] | None
ChangeHandler = Callable[[list[str], float], None]

logger = logging.getLogger("asgireload")

QUIET_GAP = 0.004  # seconds without new changes that end a burst (file events arrive in <1 ms)
BURST_QUIET_GAP = 0.05  # once more than one file changed, wait longer: a checkout is under way
MAX_DEBOUNCE = 0.5  # a burst never delays the reload more than this
THREAD_THRESHOLD = 256  # stat more files than this in a worker thread, off the event loop
# With file events as hints, the full scan is only a safety net: it may cost at most this
# share of one core (2,000 files take ~4.5 ms to stat here, so they are scanned every ~4.5 s).
SAFETY_SCAN_SHARE = 0.001


def stat_key(path: str) -> Stat:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _stat_many(paths: list[str]) -> list[Stat]:
    return [stat_key(p) for p in paths]


class Scanner:
    """Watches a growing set of files; calls `on_change(paths, changed_at)` once per burst."""

    def __init__(
        self,
        on_change: ChangeHandler,
        *,
        interval: float | None = None,
        discover: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self._on_change = on_change
        self._discover = discover
        self._baseline: dict[str, Stat] = {}
        self._suspects: set[str] = set()
        self._check_all = False
        self._wakeup = asyncio.Event()
        self._events = _directory_events(self._hint)
        self.interval = interval if interval is not None else (1.0 if self._events else 0.2)
        self._full_scan_cost = 0.0  # seconds the last full scan took

    @property
    def uses_file_events(self) -> bool:
        return self._events is not None

    def __len__(self) -> int:
        return len(self._baseline)

    def __contains__(self, path: object) -> bool:
        return path in self._baseline

    def watch(self, entries: Iterable[tuple[str, Stat]]) -> None:
        """Set the baseline of these files to the stat their code was built from, and check them now."""
        for path, stat in entries:
            self._baseline[path] = stat
            self._suspects.add(path)
            if self._events is not None:
                self._events.watch(os.path.dirname(path))
        self._wakeup.set()

    def _hint(self, path: str | None) -> None:
        if path is None:
            self._check_all = True
        elif path in self._baseline:
            self._suspects.add(path)
        else:
            directory = os.path.join(path, "")
            self._suspects.update(p for p in self._baseline if p.startswith(directory))
        self._wakeup.set()

    @property
    def next_full_scan(self) -> float:
        """Seconds until the next full scan: the interval, or longer while file events do the work."""
        if self._events is None:
            return self.interval
        return max(self.interval, self._full_scan_cost / SAFETY_SCAN_SHARE)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()

    async def run(self) -> None:
        """Scan until cancelled. Cancelling it is the way to stop it; nothing is left running."""
        try:
            if self._discover is not None:
                for path in await anyio.to_thread.run_sync(lambda: list(self._discover())):  # type: ignore[misc]
                    self._baseline.setdefault(path, stat_key(path))
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.next_full_scan):
                        await self._wakeup.wait()
                full = self._check_all or not self._wakeup.is_set()
                changed = await self._scan(full)
                if changed:
                    await self._settle(changed)
        finally:
            self.close()

    async def _scan(self, full: bool) -> dict[str, Stat]:
        self._wakeup.clear()
        if full:
            self._check_all = False
            self._suspects.clear()
            if self._discover is not None:
                new = await anyio.to_thread.run_sync(lambda: list(self._discover()))  # type: ignore[misc]
                for path in new:
                    self._baseline.setdefault(path, None)
            paths = list(self._baseline)
        else:
            paths = list(self._suspects)
            self._suspects.clear()
        started = time.perf_counter()
        if len(paths) > THREAD_THRESHOLD:
            stats = await anyio.to_thread.run_sync(_stat_many, paths)
        else:
            stats = _stat_many(paths)
        if full:
            self._full_scan_cost = time.perf_counter() - started
        return {
            p: s
            for p, s in zip(paths, stats, strict=True)
            if self._baseline.get(p, s) != s or p not in self._baseline
        }

    async def _settle(self, changed: dict[str, Stat]) -> None:
        """Gather the rest of a burst, then report it once."""
        detected = time.time()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MAX_DEBOUNCE
        pending = dict(changed)
        while loop.time() < deadline:
            gap = BURST_QUIET_GAP if len(pending) > 1 else QUIET_GAP
            await asyncio.sleep(min(gap, max(0.0, deadline - loop.time())))
            more = await self._scan(full=not self.uses_file_events or self._check_all)
            more = {p: s for p, s in more.items() if pending.get(p, "unset") != s}
            if not more:
                break
            pending.update(more)
        for path, stat in pending.items():
            self._baseline[path] = stat
        self._on_change(sorted(pending), _changed_at(pending, detected))


def _changed_at(changes: dict[str, Stat], detected: float) -> float:
    """When the burst started: the oldest new mtime, if it is believable; else when we saw it."""
    mtimes = [s[0] / 1e9 for s in changes.values() if s is not None]
    earliest = min(mtimes, default=detected)
    return earliest if detected - 5.0 <= earliest <= detected else detected


def _directory_events(callback: Callable[[str | None], None]) -> _DirectoryEventsLike | None:
    try:
        from ._inotify import DirectoryEvents
    except ImportError:
        return None
    if not DirectoryEvents.available():
        return None
    try:
        return DirectoryEvents(callback)
    except OSError as exc:
        logger.debug("File events unavailable (%s); polling only.", exc)
        return None


class _DirectoryEventsLike(Protocol):
    def watch(self, directory: str) -> bool: ...
    def close(self) -> None: ...
