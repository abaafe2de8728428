"""Which files are the developer's own, and so worth watching; which are installed code.

Both sides use it: the worker to decide which modules to compile from source (so a stale
.pyc can never serve old code) and which a warm standby may import ahead of time, the
supervisor to decide which reported files to watch.

Installed code is what this interpreter ships or pip put in place: the standard library and
the interpreter's site-packages (or dist-packages) folders. Any site-packages folder, any
virtualenv inside the project and asgireload itself are never the developer's own either.
Nothing else is excluded: an interpreter prefix is not, so a project in /usr/src/app served by
a system Python whose prefix is /usr is watched like any other.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import site
import sys
import sysconfig
from collections.abc import Iterator, Sequence

# Folders never descended into when looking for --reload-include matches.
SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages"})
PACKAGE_DIRS = frozenset({"site-packages", "dist-packages"})
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))  # asgireload itself


def _as_folder(path: str) -> str:
    """An absolute folder with a trailing separator, so a prefix test cannot match /usr/lib2."""
    return os.path.join(os.path.abspath(path), "")


def _spellings(paths: Sequence[str]) -> tuple[str, ...]:
    """Each folder as given and as resolved, since module paths may use either spelling."""
    found: dict[str, None] = {}
    for path in paths:
        if path:
            found[_as_folder(path)] = None
            found[_as_folder(os.path.realpath(path))] = None
    return tuple(found)


def has_package_dir(path: str) -> bool:
    """Whether a folder named site-packages or dist-packages is on the path."""
    return not PACKAGE_DIRS.isdisjoint(path.split(os.sep)[:-1])


@dataclasses.dataclass(frozen=True)
class InstallLocations:
    """Where an interpreter keeps installed code: its standard library and its site folders."""

    stdlib: tuple[str, ...]
    site: tuple[str, ...]

    @classmethod
    def of_interpreter(cls, prefix: str | None = None) -> InstallLocations:
        """The running interpreter's locations; `prefix` pretends it is installed there instead."""
        variables = None
        if prefix is not None:
            keys = ("base", "platbase", "installed_base", "installed_platbase")
            variables = dict.fromkeys(keys, prefix)
        paths = sysconfig.get_paths(vars=variables)
        stdlib = [paths.get("stdlib", ""), paths.get("platstdlib", "")]
        if paths.get("stdlib"):
            version = f"python{sys.version_info.major}{sys.version_info.minor}.zip"
            stdlib.append(os.path.join(os.path.dirname(paths["stdlib"]), version))
        site_dirs = [paths.get("purelib", ""), paths.get("platlib", "")]
        site_dirs += site.getsitepackages(None if prefix is None else [prefix])
        site_dirs.append(site.getusersitepackages())
        return cls(stdlib=_spellings(stdlib), site=_spellings(site_dirs))

    def containing(self, path: str) -> str | None:
        """The location (a folder ending in a separator) that holds `path`, if any."""
        for location in (*self.site, *self.stdlib):
            if path.startswith(location) or path + os.sep == location:
                return location
        return None


class WatchFilter:
    """Decides, for an absolute path, whether it belongs to the project being served."""

    def __init__(
        self,
        roots: Sequence[str],
        includes: Sequence[str] = (),
        excludes: Sequence[str] = (),
        *,
        locations: InstallLocations | None = None,
    ) -> None:
        self.roots = tuple(os.path.join(os.path.abspath(r), "") for r in roots)
        self.includes = tuple(includes)
        self.excludes = tuple(excludes)
        self.locations = locations or InstallLocations.of_interpreter()
        self._own = _spellings([PACKAGE_DIR])
        self._real_roots = tuple(_as_folder(os.path.realpath(r)) for r in self.roots)
        self._venv_dirs: dict[str, bool] = {}
        self._real_dirs: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"WatchFilter(roots={self.roots!r}, includes={self.includes!r}, excludes={self.excludes!r})"

    def _root_of(self, path: str) -> str | None:
        for root in self.roots:
            if path.startswith(root):
                return root
        return None

    def _real(self, path: str) -> str:
        """`path` with its folder resolved (cached: modules share few folders)."""
        directory, name = os.path.split(path)
        real = self._real_dirs.get(directory)
        if real is None:
            real = self._real_dirs[directory] = os.path.realpath(directory)
        return os.path.join(real, name)

    def _location_of(self, path: str) -> str | None:
        """The install location holding `path`, under either spelling of its folder."""
        return self.locations.containing(path) or self.locations.containing(self._real(path))

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

    def is_installed_code(self, path: str) -> bool:
        """Standard library, site-packages or asgireload itself: trusted to match its .pyc."""
        if has_package_dir(path) or self._location_of(path) is not None:
            return True
        return any(path.startswith(own) or self._real(path).startswith(own) for own in self._own)

    def is_project_file(self, path: str) -> bool:
        """A module file under a watched root that is not installed code nor excluded."""
        root = self._root_of(path)
        if root is None:
            return False
        parts = path[len(root) :].split(os.sep)
        if any(p in SKIPPED_DIRS for p in parts[:-1]) or self.is_installed_code(path):
            return False
        if self._in_virtualenv(os.path.dirname(path), root):
            return False
        return not self.is_excluded(path, root)

    def is_preloadable(self, path: str | None) -> bool:
        """Whether a warm standby may import, ahead of time, the module at `path` (file or folder).

        Only the standard library and this interpreter's site folders qualify: they do not change
        while the server runs, and importing them runs none of the developer's code. A module with
        no file (built in, frozen) qualifies. A PYTHONPATH entry, a sibling folder or an editable
        install's source never does, and neither does a watched root pointed inside a location.
        """
        if path is None:
            return True
        location = self._location_of(path)
        if location is None:
            return False
        real = self._real(path)
        return not any(
            root.startswith(location) and (path.startswith(root) or real.startswith(root))
            for root in (*self.roots, *self._real_roots)
        )

    def is_installed_package(self, path: str) -> bool:
        """A file of an installed package (site-packages), the kind a warm worker preloads."""
        if self.is_project_file(path):
            return False
        if has_package_dir(path):
            return True
        location = self._location_of(path)
        return location is not None and location in self.locations.site

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
