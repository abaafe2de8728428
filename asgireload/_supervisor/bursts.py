"""How the scanner turns a burst of file changes into one report: the rest of a save waited for.

A save is rarely one write. A checkout rewrites hundreds of files one after another; an editor
writes a temp file and renames it over the original, or renames the original away first
(JetBrains' safe write, vim's backup), or truncates the file and then writes it. After the first
change the scanner therefore waits for a quiet gap (2 ms; 50 ms once several files changed;
MAX_DEBOUNCE at most), and a watched file that is missing, or empty where it had content, at the
end of that gap, or one that file events say a writer still has open (modified, not yet
closed), is a save caught half-way: the burst is held until the file is back, or closed (an
event wakes it, or a stat every HOLD_POLL finds it), for at most UNFINISHED_GRACE. A file that comes
back exactly as it was is no change at all; one that stays gone is reported (a real deletion).

`Bursts` is the Scanner's half that does this (scanner.py holds the state and the scans).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from .folders import WatchedFolders
from .includes import Stat

ChangeHandler = Callable[[list[str], float], None]

QUIET_GAP = 0.002  # seconds without new changes that end a burst (file events arrive in <1 ms)
BURST_QUIET_GAP = 0.05  # once more than one file changed, wait longer: a checkout is under way
MAX_DEBOUNCE = 0.5  # a burst never delays the reload more than this
# A save caught half-way (the file renamed away or deleted before its new version is put in
# place, truncated before it is written, or still open for writing) is no change to load: it is
# held back until the file is back (or closed) or this long has passed. Editors take up to a few
# hundred ms between the steps of a save on a busy machine; a real deletion is reported this much
# later than other changes.
UNFINISHED_GRACE = 0.5
HOLD_POLL = 0.01  # while a file is held, stat it this often (an event usually comes sooner)


class Bursts:
    """Gathers a burst of changes and reports it once; mixed into the Scanner, whose state it uses."""

    _on_change: ChangeHandler
    _quiet_gap: float | None  # --reload-delay: one fixed gap instead of the adaptive ones
    _baseline: dict[str, Stat]
    _wakeup: asyncio.Event
    _folders: WatchedFolders

    async def _scan(self, *, full: bool, poll: bool) -> dict[str, Stat]:
        raise NotImplementedError

    async def _stat(self, paths: list[str]) -> list[Stat]:
        raise NotImplementedError

    async def _settle(self, changed: dict[str, Stat]) -> None:
        """Gather the rest of a burst, wait for a save caught half-way to finish, report it once."""
        detected = time.time()
        loop = asyncio.get_running_loop()
        pending = dict(changed)
        await self._gather(pending)
        hold_until = loop.time() + UNFINISHED_GRACE
        while self._unfinished(pending) and loop.time() < hold_until:
            if await self._wait_for_return(pending, hold_until):
                await self._gather(pending)
        paths = list(pending)
        now = dict(zip(paths, await self._stat(paths), strict=True))
        changes = {p: s for p, s in now.items() if s != self._baseline.get(p)}  # (back as it was: none)
        for path, stat_ in changes.items():
            self._baseline[path] = stat_
            self._folders.follow_link(path)
        if changes:
            self._on_change(sorted(changes), _changed_at(changes, detected))

    async def _gather(self, pending: dict[str, Stat]) -> None:
        """Add the changes that follow until a quiet gap (bounded by MAX_DEBOUNCE)."""
        loop = asyncio.get_running_loop()
        fixed = self._quiet_gap
        deadline = loop.time() + (MAX_DEBOUNCE if fixed is None else max(MAX_DEBOUNCE, 4 * fixed))
        while loop.time() < deadline:
            gap = BURST_QUIET_GAP if len(pending) > 1 else QUIET_GAP
            if fixed is not None:
                gap = fixed
            await asyncio.sleep(min(gap, max(0.0, deadline - loop.time())))
            more = await self._scan(full=False, poll=bool(self._folders.polled_dirs))
            more = {p: s for p, s in more.items() if pending.get(p, "unset") != s}
            if not more:
                break
            pending.update(more)

    def _unfinished(self, pending: dict[str, Stat]) -> list[str]:
        """The files of a burst that look like a save caught half-way."""
        return [
            p
            for p, s in pending.items()
            if looks_unfinished(self._baseline.get(p), s) or self._folders.is_being_written(p)
        ]

    async def _wait_for_return(self, pending: dict[str, Stat], hold_until: float) -> bool:
        """Wait for an event (or HOLD_POLL), then look again; whether anything in the burst moved on."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(min(loop.time() + HOLD_POLL, hold_until)):
                await self._wakeup.wait()
        more = await self._scan(full=False, poll=False)
        held = self._unfinished(pending)
        more.update(zip(held, await self._stat(held), strict=True))
        more = {p: s for p, s in more.items() if pending.get(p, "unset") != s}
        pending.update(more)
        return bool(more)


def looks_unfinished(before: Stat, now: Stat) -> bool:
    """A watched file gone, or emptied where it had content: a save is probably under way."""
    if before is None:
        return False
    return now is None or (now[1] == 0 and before[1] > 0)


def _changed_at(changes: dict[str, Stat], detected: float) -> float:
    """When the burst started: the oldest new mtime, if it is believable; else when we saw it."""
    mtimes = [s[0] / 1e9 for s in changes.values() if s is not None]
    earliest = min(mtimes, default=detected)
    return earliest if detected - 5.0 <= earliest <= detected else detected
