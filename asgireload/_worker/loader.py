"""Worker side: import the app, and remember exactly which files it was built from.

Two details make reloads trustworthy:
- Every module that is not installed code (the standard library, site-packages) is compiled
  from source, never from __pycache__. CPython checks a .pyc against the source's mtime in
  whole seconds and its size, so two same-size saves within one second would otherwise run
  the old code; that holds for a sibling folder or an editable install as much as for the
  watched project.
- The stat of each such file is taken just before its source is read. The supervisor
  compares that stat with the disk when the report arrives, so an edit made while the worker
  was importing is never lost.

When the app fails to load, AppLoadError carries the report loadfailure.py builds.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from .._protocol import Failure
from .._protocol import FileEntry as FileStat
from .._watchfilter import WatchFilter
from .loadfailure import failure_from_exception, missing_module_paths, parent_packages, usage_failure

_NOT_PRELOADED = frozenset({"__main__", "__mp_main__", "asgireload"})


class AppLoadError(Exception):
    """The app could not be loaded; `failure` is what the supervisor and error page show."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.summary)
        self.failure = failure


class ImportRecorder:
    """Compiles non-installed modules from source and records the stat seen when each was read."""

    def __init__(self, project: WatchFilter) -> None:
        self.project = project
        self.stats: dict[str, FileStat] = {}
        self._known: dict[str, ModuleType] = {}  # see note_preloaded
        self._reported_modules: set[str] = set()
        self._qualifies: dict[str, bool] = {}  # module name -> its own file may be preloaded
        self._blocked: set[str] = set()  # packages with a submodule that may not be preloaded
        self._original: Any = None

    def install(self) -> None:
        recorder = self
        original = self._original = importlib.machinery.SourceFileLoader.get_code

        def get_code(loader: importlib.machinery.SourceFileLoader, fullname: str) -> Any:
            path = loader.get_filename(fullname)
            if recorder.project.is_installed_code(path):
                return original(loader, fullname)
            recorder.stats[path] = stat_of(path)
            return loader.source_to_code(loader.get_data(path), path)

        importlib.machinery.SourceFileLoader.get_code = get_code  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        """Put the import system back as it was (for tests running in one process)."""
        if self._original is not None:
            importlib.machinery.SourceFileLoader.get_code = self._original  # type: ignore[method-assign]
            self._original = None

    def new_modules(self) -> tuple[list[FileStat], list[str]]:
        """Modules imported since the last call, in import order.

        Returns the files of all of them (the supervisor picks the project's), and the names of
        those a warm standby may import ahead of time: installed modules whose parent packages
        are installed too and which hold no module that is not (see WatchFilter.is_preloadable).
        """
        files: list[FileStat] = []
        fresh: list[str] = []
        for name, module in list(sys.modules.items()):
            if name in self._reported_modules:
                continue
            self._reported_modules.add(name)
            if module is not None and self._known.get(name) is module:
                self._qualifies[name] = True  # for its submodules' sake (see _may_preload)
                continue
            path = _module_file(module)
            if path is not None:
                files.append(self.stats.get(path) or stat_of(path))
            qualifies = self._module_qualifies(name, module, path)
            self._qualifies[name] = qualifies
            if not qualifies:
                self._blocked.update(parent_packages(name))
            fresh.append(name)
        return files, [name for name in fresh if self._may_preload(name)]

    def note_preloaded(self, names: Iterable[str]) -> None:
        """The modules of the supervisor's preload list, as imported now: an earlier generation
        reported each, with its file, and it was found preloadable. new_modules() leaves these
        very module objects out: a standby imports hundreds, and reporting them again made every
        reload wait for their paths to be resolved and sent (~8 ms). A module imported again
        under the same name (a project module shadowing one) is another object, and reported."""
        self._known = {name: module for name in names if (module := sys.modules.get(name)) is not None}

    def _module_qualifies(self, name: str, module: ModuleType | None, path: str | None) -> bool:
        if module is None:  # an import blocked on purpose
            return False
        if path is not None:
            return self.project.is_preloadable(path)
        locations = getattr(module, "__path__", None)
        if locations is not None:  # a namespace package: every folder of it must qualify
            folders = list(locations)
            return bool(folders) and all(
                isinstance(p, str) and self.project.is_preloadable(os.path.abspath(p)) for p in folders
            )
        if getattr(module, "__spec__", None) is None:
            # made at run time: importable by name only through the package that made it
            return "." in name
        return True  # built in or frozen

    def _may_preload(self, name: str) -> bool:
        if name.partition(".")[0] in _NOT_PRELOADED or name in self._blocked:
            return False
        return self._qualifies.get(name, False) and all(
            self._qualifies.get(p, False) for p in parent_packages(name)
        )

    def has_new_modules(self) -> bool:
        return (
            len(sys.modules) != len(self._reported_modules)
            or not sys.modules.keys() <= self._reported_modules
        )


def _module_file(module: ModuleType | None) -> str | None:
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path:
        return None
    path = os.path.abspath(path)
    if path.endswith((".pyc", ".pyo")):
        source = path[:-1]
        return source if os.path.exists(source) else path
    return path


def stat_of(path: str) -> FileStat:
    try:
        st = os.stat(path)
    except OSError:
        return (path, None, None, None)
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)


def load_app(import_string: str, *, factory: bool, app_dir: str, project: WatchFilter | None = None) -> Any:
    """Import module:attribute; raise AppLoadError with a failure the developer can act on.

    With `project`, a module that is not found gets the paths where creating it would fix the
    load (the failure's "missing"), so the supervisor can watch for them.
    """
    module_name, _, attribute = import_string.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(
                usage_failure(
                    f"cannot import {import_string!r}: no module named {exc.name!r} "
                    f"(looked in {app_dir}; pass --app-dir?)",
                    missing=missing_module_paths(exc, project.roots) if project else [],
                )
            ) from None
        raise AppLoadError(failure_from_exception(exc, "import", project=project)) from None
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppLoadError(failure_from_exception(exc, "import", project=project)) from None

    app: Any = module
    for part in attribute.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise AppLoadError(
                usage_failure(
                    f"cannot import {import_string!r}: module {module_name!r} has no attribute "
                    f"{attribute!r} (in {_module_file(module) or module_name})",
                    files=[p for p in [_module_file(module)] if p],
                )
            ) from None

    if factory:
        if not callable(app):
            raise AppLoadError(
                usage_failure(
                    f"--factory was given but {import_string!r} is {_a(type(app).__name__)}, "
                    "not a function that returns the app"
                )
            )
        try:
            app = app()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise AppLoadError(failure_from_exception(exc, "import", project=project)) from None
    if not callable(app):
        raise AppLoadError(
            usage_failure(
                f"{import_string!r} is not an ASGI app: it is {_a(type(app).__name__)} "
                "(expected an async callable taking scope, receive, send)",
                files=[p for p in [_module_file(module)] if p],
            )
        )
    return app


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"
