"""Which files are the developer's own, and so worth watching.

Both sides use it: the worker to decide which modules to compile from source (so a stale
.pyc can never serve old code), the supervisor to decide which reported files to watch.
The standard library, site-packages and any virtualenv (even one inside the project) are
never the developer's own; neither is asgireload itself.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import sysconfig
from collections.abc import Iterator, Sequence

# Folders never descended into when looking for --reload-include matches.
SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages"})


def _install_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    prefixes.update(paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths)
    prefixes.add(os.path.dirname(os.path.abspath(__file__)))  # asgireload itself
    return tuple(sorted({os.path.join(os.path.realpath(p), "") for p in prefixes}))


class WatchFilter:
    """Decides, for an absolute path, whether it belongs to the project being served."""

    def __init__(
        self,
        roots: Sequence[str],
        includes: Sequence[str] = (),
        excludes: Sequence[str] = (),
    ) -> None:
        self.roots = tuple(os.path.join(os.path.abspath(r), "") for r in roots)
        self.includes = tuple(includes)
        self.excludes = tuple(excludes)
        self._outside = _install_prefixes()
        self._venv_dirs: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"WatchFilter(roots={self.roots!r}, includes={self.includes!r}, excludes={self.excludes!r})"

    def _root_of(self, path: str) -> str | None:
        for root in self.roots:
            if path.startswith(root):
                return root
        return None

    def _in_virtualenv(self, directory: str, root: str) -> bool:
        """True if a folder between `root` and `directory` is a virtualenv (has pyvenv.cfg)."""
        known = self._venv_dirs.get(directory)
        if known is not None:
            return known
        if len(directory) < len(root) or directory + os.sep == root:
            result = False
        else:
            result = os.path.exists(os.path.join(directory, "pyvenv.cfg")) or self._in_virtualenv(
                os.path.dirname(directory), root
            )
        self._venv_dirs[directory] = result
        return result

    def is_excluded(self, path: str, root: str) -> bool:
        relative = path[len(root) :]
        name = os.path.basename(path)
        return any(fnmatch.fnmatch(relative, g) or fnmatch.fnmatch(name, g) for g in self.excludes)

    def is_project_file(self, path: str) -> bool:
        """A module file under a watched root that is not installed code nor excluded."""
        root = self._root_of(path)
        if root is None:
            return False
        real = os.path.realpath(path)
        if any(real.startswith(prefix) for prefix in self._outside):
            return False
        parts = path[len(root) :].split(os.sep)
        if any(p in SKIPPED_DIRS for p in parts[:-1]):
            return False
        if self._in_virtualenv(os.path.dirname(path), root):
            return False
        return not self.is_excluded(path, root)

    def is_installed_package(self, path: str) -> bool:
        """A file of an installed package (site-packages), the kind a warm worker preloads."""
        if self.is_project_file(path):
            return False
        parts = path.split(os.sep)
        return "site-packages" in parts or "dist-packages" in parts

    def is_included(self, path: str) -> bool:
        """A file that matches --reload-include under a watched root (and no exclude)."""
        root = self._root_of(path)
        if root is None or not self.includes:
            return False
        relative = path[len(root) :]
        name = os.path.basename(path)
        if not any(fnmatch.fnmatch(relative, g) or fnmatch.fnmatch(name, g) for g in self.includes):
            return False
        return not self.is_excluded(path, root)

    def included_files(self) -> Iterator[str]:
        """Walk the roots for files matching --reload-include, skipping hidden and installed folders."""
        if not self.includes:
            return
        for root in self.roots:
            for directory, subdirs, files in os.walk(root):
                subdirs[:] = [
                    d
                    for d in subdirs
                    if not d.startswith(".")
                    and d not in SKIPPED_DIRS
                    and not os.path.exists(os.path.join(directory, d, "pyvenv.cfg"))
                ]
                for name in files:
                    path = os.path.join(directory, name)
                    if self.is_included(path):
                        yield path
