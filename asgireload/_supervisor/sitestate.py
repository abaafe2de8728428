"""What an interpreter started now would build its import system from, and noticing a change.

At start-up `site` reads each site-packages folder: it puts the folder on sys.path, runs its
`.pth` files (a line naming a folder adds it to sys.path if it exists, an `import` line runs:
editable installs hook themselves into sys.meta_path this way) and imports `sitecustomize`. A
process that started earlier (the fork server's template, a warm standby) keeps what it read
then: after `pip install -e ../lib` it still lacks `lib`. So whatever changes there (an entry
of a site folder added, removed or replaced: a distribution installed, upgraded or removed, a
new top-level module; a `.pth` file written in place; a site folder or a folder a `.pth` names
appearing) makes the supervisor replace those processes, as if they had started now.

A look costs a few stats: a folder's listing is read again only when its own stat changed (or
was too recent to be trusted), so it can run at every reload and once a second in the
background. `__pycache__` is not part of a listing: a first import writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import site
import time
from collections.abc import Callable

from .includes import Stat, stat_key

POLL = 1.0  # seconds between looks in the background (a reload looks at once)
TRUSTED_AGE_NS = 1_000_000_000  # a folder's mtime this old is past the clock's granularity
IGNORED = frozenset({"__pycache__"})

Listing = frozenset[tuple[str, int]]  # (name, inode) of each entry


def site_folders() -> list[str]:
    """The site-packages folders `site` reads at start-up (the user's only when it is on: a
    fresh interpreter adds it once it exists)."""
    folders = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    return list(dict.fromkeys(folders))


def _listing(folder: str) -> Listing | None:
    try:
        with os.scandir(folder) as entries:
            return frozenset((e.name, e.inode()) for e in entries if e.name not in IGNORED)
    except OSError:
        return None


def _pth_folders(site_folder: str, pth: str) -> list[str]:
    """The folders a `.pth` file names (`site` adds those that exist, resolved from its folder)."""
    try:
        with open(os.path.join(site_folder, pth), encoding="utf-8", errors="surrogateescape") as file:
            lines = file.read(1 << 20).splitlines()
    except OSError:
        return []
    return [
        os.path.join(site_folder, line.rstrip())
        for line in lines
        if line.strip() and not line.startswith(("#", "import ", "import\t"))
    ]


@dataclasses.dataclass
class _Folder:
    stat: Stat
    listing: Listing | None
    listed_at_ns: int

    def trusted(self) -> bool:
        """Its stat alone tells a change: its mtime was already older than the clock's step when
        it was listed, so any later change moves it."""
        return self.stat is not None and self.stat[0] < self.listed_at_ns - TRUSTED_AGE_NS


@dataclasses.dataclass
class SiteState:
    """The site folders' listings, their `.pth` files' stats, and the `.pth`-named folders
    missing so far (one that appears would be on a fresh interpreter's sys.path)."""

    folders: dict[str, _Folder]
    pth_files: dict[str, Stat]
    missing: frozenset[str]

    @classmethod
    def now(cls, folders: list[str] | None = None) -> SiteState:
        state = cls({}, {}, frozenset())
        for folder in folders if folders is not None else site_folders():
            state._read_folder(folder)
        state._read_pth_files()
        return state

    def _read_folder(self, folder: str) -> None:
        listed_at = time.time_ns()
        self.folders[folder] = _Folder(stat_key(folder), _listing(folder), listed_at)

    def _read_pth_files(self) -> None:
        self.pth_files = {}
        missing: set[str] = set()
        for folder, seen in self.folders.items():
            for name, _ in sorted(seen.listing or ()):
                if name.endswith(".pth"):
                    path = os.path.join(folder, name)
                    self.pth_files[path] = stat_key(path)
                    missing.update(p for p in _pth_folders(folder, name) if not os.path.isdir(p))
        self.missing = frozenset(missing)

    def changes(self) -> list[str]:
        """What changed since this state was read (and read it again if anything did)."""
        changed = []
        for folder, seen in self.folders.items():
            if seen.trusted() and stat_key(folder) == seen.stat:
                continue
            listing = seen.listing
            self._read_folder(folder)
            if self.folders[folder].listing != listing:
                changed.append(folder)
        changed += [path for path, seen in self.pth_files.items() if stat_key(path) != seen]
        changed += sorted(path for path in self.missing if os.path.isdir(path))
        if changed:
            self._read_pth_files()
        return changed


class SiteWatch:
    """Calls `on_change(paths)` when the site folders change: at once when `check()` is called
    (a reload is about to use a warm process), or once a change has settled (unchanged for a
    whole POLL: an install writes for a while) when found in the background by `run()`."""

    def __init__(self, on_change: Callable[[list[str]], None], folders: list[str] | None = None) -> None:
        self._on_change = on_change
        self._state = SiteState.now(folders)
        self._unsettled: list[str] = []  # changed at the last background look, not yet reported

    def check(self) -> None:
        changed = self._unsettled + self._state.changes()
        self._unsettled = []
        if changed:
            self._on_change(list(dict.fromkeys(changed)))

    async def run(self) -> None:
        """Look once a second until cancelled."""
        while True:
            await asyncio.sleep(POLL)
            with contextlib.suppress(OSError):
                changed = self._state.changes()
                if changed:
                    self._unsettled += changed
                elif self._unsettled:
                    self.check()
