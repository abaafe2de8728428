"""Which project modules must run again when files change: the import graph a worker reported.

A worker reports each project module it ran (its name and file) and the project modules its body
imported (see `_worker/imports.py`). For a set of changed files, the modules that must run again
are each changed file's modules (one file may be a module under two names), everything that
imports one of those, transitively (cycles included), and the app's own module always. A changed
file that no module of the graph was built from adds nothing but the app's module: a deleted or
renamed module is found by its old file, a new file is imported, if at all, by a module that
changed too.

Nothing here does I/O. Whether a submodule of a package that runs again must run again too is
the project layer's decision (plain import semantics say yes), not the graph's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .._protocol import ImportEntry


@dataclasses.dataclass(frozen=True)
class DjangoSetup:
    """The app's import ran `django.setup()`: with this settings module, having set these
    variables; these project modules ran while the app registry populated."""

    settings: str
    env: dict[str, str]
    modules: frozenset[str]

    def same_setup(self, other: DjangoSetup) -> bool:
        """Whether a layer set up like `other` has this generation's settings."""
        return (self.settings, self.env) == (other.settings, other.env)


class ImportGraph:
    """The project modules of one generation, and who imported whom while its app imported."""

    def __init__(self, app_module: str = "") -> None:
        self.app_module = app_module
        self.files: dict[str, str] = {}  # module name -> file, in the order the worker ran them
        self._by_file: dict[str, set[str]] = {}  # file -> the module names built from it
        self._importers: dict[str, set[str]] = {}  # module -> the modules whose body imported it
        self.env_set: set[str] = set()  # environment variables the app's import set or changed
        self.django: DjangoSetup | None = None  # the app's import ran django.setup()

    def __len__(self) -> int:
        return len(self.files)

    def __contains__(self, module: object) -> bool:
        return module in self.files

    def add(self, entries: Iterable[ImportEntry]) -> None:
        """Entries of a worker's report (one module may come in several entries)."""
        for name, path, imported in entries:
            self.files[name] = path
            self._by_file.setdefault(path, set()).add(name)
            for target in imported:
                self._importers.setdefault(target, set()).add(name)

    def modules_of(self, path: str) -> set[str]:
        return set(self._by_file.get(path, ()))

    def importers_of(self, module: str) -> set[str]:
        """The modules whose body imported `module` (directly)."""
        return set(self._importers.get(module, ()))

    def must_run_again(self, changed: Iterable[str]) -> set[str]:
        """The project modules that must run again when these files changed."""
        pending = [m for path in changed for m in self._by_file.get(path, ())]
        if self.app_module:
            pending.append(self.app_module)
        found: set[str] = set()
        while pending:
            module = pending.pop()
            if module in found:
                continue
            found.add(module)
            pending.extend(self._importers.get(module, set()) - found)
        return found

    def in_import_order(self, modules: Iterable[str]) -> list[str]:
        """These modules, in the order the worker ran them (unknown ones last, by name)."""
        wanted = set(modules)
        ordered = [m for m in self.files if m in wanted]
        return ordered + sorted(wanted - set(ordered))
