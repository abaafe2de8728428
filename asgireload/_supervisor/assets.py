"""Live reload, supervisor side: which changed files are assets for open pages, not code.

With live reload on, files matching `--live-include` (default `*.css`, `*.js`) under the watched
folders are watched too, but a change to one does not restart the app: the serving worker tells
its open pages (a stylesheet is swapped in place, anything else reloads them). A file that is
code after all keeps restarting the app: one a generation imported or named in a traceback, the
env file, or one that `--reload-include` matches as well.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Sequence

from .._paths import relative
from .._watchfilter import WatchFilter
from ..config import Config


class LiveAssets:
    """Sorts a burst of changed files into assets (for the pages) and the rest (a reload)."""

    def __init__(self, config: Config, roots: Sequence[str]) -> None:
        self.active = config.live_reload_active
        self.run = secrets.token_hex(8)  # one per start of asgireload: pages tell runs apart by it
        self._assets = WatchFilter(
            roots, _with_root_files(config.live_includes) if self.active else (), config.reload_excludes
        )
        self._code = WatchFilter(roots, config.reload_includes, config.reload_excludes)
        self._known_code: set[str] = set() if config.env_file is None else {config.env_file}
        self.scan_rules = WatchFilter(
            roots, (*config.reload_includes, *self._assets.includes), config.reload_excludes
        )

    def note_code(self, paths: Iterable[str]) -> None:
        """Files a generation imported or named in its failure: a change to them is a reload."""
        self._known_code.update(paths)

    def is_asset(self, path: str) -> bool:
        return (
            self.active
            and os.path.splitext(path)[1].lower() not in _CODE_SUFFIXES
            and path not in self._known_code
            and self._assets.is_included(path)
            and not self._code.is_included(path)
        )

    def split(self, paths: Iterable[str]) -> tuple[list[str], list[str]]:
        """(assets, code) among changed paths."""
        assets: list[str] = []
        code: list[str] = []
        for path in paths:
            (assets if self.is_asset(path) else code).append(path)
        return assets, code


# Python never is an asset, whatever a glob matches: a change to it restarts the app.
_CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyi", ".pyx", ".so", ".pyd"})


def _with_root_files(globs: Sequence[str]) -> tuple[str, ...]:
    """The globs, plus '*.css' for each '**/*.css': fnmatch's '**/' needs a folder before the name."""
    found = dict.fromkeys(globs)
    for glob in globs:
        while glob.startswith("**/"):
            glob = glob[3:]
            found.setdefault(glob)
    return tuple(found)


def is_stylesheet_change(paths: Sequence[str]) -> bool:
    """Every changed asset is a stylesheet: the pages can swap them without reloading."""
    return all(os.path.splitext(p)[1].lower() == ".css" for p in paths)


def log_line(paths: Sequence[str], restyle: bool, *, served: bool = True) -> str:
    shown = ", ".join(relative(p) for p in paths[:3])
    if len(paths) > 3:
        shown += f" and {len(paths) - 3} more"
    if not served:
        what = "nothing serves yet, so no page to tell"
    else:
        what = "stylesheets refreshed in open pages" if restyle else "open pages reloaded"
    return f"Live reload: {shown} changed; {what}."
