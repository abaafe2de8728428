"""Worker side: record which project module imports which while the app imports.

The supervisor needs, for a changed file, the project modules that must run again: the file's
module and every module whose body, when it ran, used it. So an edge here means "while the body of
A ran, A imported B", which two hooks see, both active only while the app imports:

- `SourceFileLoader.exec_module` keeps a stack of the project module bodies running. A project
  module that runs for the first time is an import of the module on top of the stack, whoever
  asked for it (an `import` statement, `importlib.import_module`, a framework's registry).
- `builtins.__import__` sees every `import` statement of project code, including those of
  modules imported already (a module used by two others, a circular import); a statement of
  installed code costs one dictionary look-up more than it did.

Relative imports and `from pkg import sub` resolve to the module bound: `pkg.sub` if `sub` is that
submodule, `pkg` for a name its `__init__` defines (`from . import helper`, `from pkg import *`),
every package of the name for `import pkg.sub` (which binds `pkg`). The import system running a
package's `__init__` before one of its submodules is no edge of the statement's module: only
what the statement bound is. An import that is no statement (`importlib.import_module`, a
framework's registry) makes the module on top of the stack depend on every module it ran.
A module imported under two names is two modules of one file. A body that calls a function of
another module which imports something makes the *caller's* body depend on it (its result came
from that import), not the callee's. A body that assigns into another project module's namespace
(a patch) makes that module depend on it. Modules imported later, while serving (inside a function),
are reported without importers: the code that imports them does so each time it runs, so nothing
else must run again when they change.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .._protocol import ImportEntry
from .djangosetup import SETTINGS_VARIABLE, populating

MAX_IMPORTS_PER_ENTRY = 500  # a module importing more is sent as several entries (no size limit)


class ImportGraphRecorder:
    """The project modules the app's import ran, and what each of their bodies imported."""

    def __init__(self, is_project_file: Callable[[str], bool]) -> None:
        self._is_project_file = is_project_file
        self._project_paths: dict[str, bool] = {}
        self.files: dict[str, str] = {}  # project module name -> its file, in the order they ran
        self.imports: dict[str, set[str]] = {}  # module name -> project modules its body imported
        self._running: list[str] = []  # project module bodies running, innermost last
        self._statements: list[str] = []  # the module of each import statement in progress
        self.held: frozenset[str] = frozenset()  # imported by a project layer before the fork
        self._ran_during_statement: list[str] = []  # project modules run since the last statement
        self._namespaces: dict[str, dict[str, int]] = {}  # module -> its names, as its body left them
        self._reported: set[str] = set()
        self.django_setup: list[str] = []  # project modules run while Django's registry populated
        self.env_at_settings: dict[str, str] | None = None  # os.environ when Django's settings ran
        self._original_exec: Any = None
        self._original_import: Any = None

    # ------------------------------------------------------------------ the hooks

    def install(self) -> None:
        """Record from now until `uninstall` (the app's import)."""
        recorder, running, files, statements = self, self._running, self.files, self._statements
        original_exec = self._original_exec = importlib.machinery.SourceFileLoader.exec_module
        original_import = self._original_import = builtins.__import__

        def exec_module(loader: importlib.machinery.SourceFileLoader, module: ModuleType) -> None:
            name = module.__name__
            path = loader.path
            if not recorder._is_project(path):
                return original_exec(loader, module)
            recorder._ran(name, os.path.abspath(path))
            recorder._running.append(name)
            try:
                original_exec(loader, module)
            finally:
                recorder._running.pop()
            if recorder.held and hasattr(module, "__path__"):
                recorder._adopt_held_submodules(module)
            recorder._note_patches(name, module)

        def recording_import(
            name: str,
            globals: dict[str, Any] | None = None,
            locals: Any = None,
            fromlist: Any = (),
            level: int = 0,
        ) -> Any:
            # only statements in project code: installed code runs thousands while models build
            if not (running and globals is not None and globals.get("__name__") in files):
                return original_import(name, globals, locals, fromlist, level)
            importer = running[-1]
            statements.append(importer)
            try:
                module = original_import(name, globals, locals, fromlist, level)
            except BaseException:
                recorder._failed(importer)  # (caught, it may have chosen what the body did)
                raise
            finally:
                statements.pop()
            recorder._statement(importer, module, name, fromlist, level)
            return module

        importlib.machinery.SourceFileLoader.exec_module = exec_module  # type: ignore[method-assign,assignment]
        builtins.__import__ = recording_import  # type: ignore[assignment]

    def uninstall(self) -> None:
        """Put both hooks back, unless the app replaced them meanwhile (then leave its own)."""
        if self._original_exec is not None:
            if _is_ours(importlib.machinery.SourceFileLoader.exec_module):
                importlib.machinery.SourceFileLoader.exec_module = self._original_exec  # type: ignore[method-assign]
            self._original_exec = None
        if self._original_import is not None:
            if _is_ours(builtins.__import__):
                builtins.__import__ = self._original_import
            self._original_import = None
        self._running.clear()

    def _is_project(self, path: str) -> bool:
        known = self._project_paths.get(path)
        if known is None:
            known = self._project_paths[path] = self._is_project_file(os.path.abspath(path))
        return known

    def _ran(self, name: str, path: str) -> None:
        running, statements = self._running, self._statements
        if running and not (statements and statements[-1] == running[-1]):
            self.imports.setdefault(running[-1], set()).add(name)  # (a statement's: see _statement)
        self._ran_during_statement.append(name)
        if populating():
            self.django_setup.append(name)
        elif self.env_at_settings is None and name == os.environ.get(SETTINGS_VARIABLE):
            self.env_at_settings = dict(os.environ)  # what Django's settings ran with
        self.files[name] = path
        self.imports.setdefault(name, set())

    def _adopt_held_submodules(self, package: ModuleType) -> None:
        """A package that ran again while a project layer holds some of its submodules: they are
        its attributes once its body ran, as the import system set them when they were imported."""
        prefix = f"{package.__name__}."
        for name in self.held:
            child = name[len(prefix) :]
            module = sys.modules.get(name)
            if name.startswith(prefix) and "." not in child and module and not hasattr(package, child):
                setattr(package, child, module)

    def _note_patches(self, name: str, module: ModuleType) -> None:
        """A body that assigned into another project module's namespace (a patch at import): that
        module depends on it too, as if it had imported it (so what imports the patched module runs
        again with the patcher)."""
        for target in self.imports.get(name, ()):
            before = self._namespaces.get(target)
            patched = sys.modules.get(target)
            if before is None or patched is None:
                continue
            now = _names_of(patched)
            if now != before:
                self.imports.setdefault(target, set()).add(name)
                self._namespaces[target] = now
        self._namespaces[name] = _names_of(module)

    def _failed(self, importer: str) -> None:
        """A statement that raised: its module depends on every module it ran (conservatively)."""
        imported = self.imports.setdefault(importer, set())
        imported.update(m for m in self._ran_during_statement if m != importer)

    def _statement(self, importer: str, module: ModuleType, name: str, fromlist: Any, level: int) -> None:
        """Note what an `import` statement bound, for the body on top of the stack."""
        files = self.files
        self._ran_during_statement.clear()
        if level == 0 and not fromlist:
            parts = name.split(".")
            targets = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        else:
            base = getattr(module, "__name__", None)
            if not isinstance(base, str):
                return
            targets = [base] if not fromlist else []
            for item in fromlist or ():
                submodule = f"{base}.{item}" if isinstance(item, str) and item != "*" else ""
                if submodule in files and getattr(module, item, None) is sys.modules.get(submodule):
                    targets.append(submodule)  # a submodule: not the package's own names
                else:
                    targets.append(base)  # a name the package's __init__ defines (or *)
        imported = self.imports.setdefault(importer, set())
        for target in targets:
            if target in files and target != importer:
                imported.add(target)

    # ------------------------------------------------------------------ the report

    def new_entries(self) -> list[ImportEntry]:
        """Modules not reported yet: those the app's import ran, then the project modules imported
        since (while serving: with no importers). A long list of imports is split over entries."""
        if self._original_exec is None:
            self._note_lazy_imports()
        entries: list[ImportEntry] = []
        for name, path in self.files.items():
            if name in self._reported:
                continue
            self._reported.add(name)
            imported = sorted(self.imports.get(name, ()))
            entries.append((name, path, tuple(imported[:MAX_IMPORTS_PER_ENTRY])))
            for start in range(MAX_IMPORTS_PER_ENTRY, len(imported), MAX_IMPORTS_PER_ENTRY):
                entries.append((name, path, tuple(imported[start : start + MAX_IMPORTS_PER_ENTRY])))
        return entries

    def _note_lazy_imports(self) -> None:
        for name, module in list(sys.modules.items()):
            if name in self.files or module is None:
                continue
            path = getattr(module, "__file__", None)
            if isinstance(path, str) and path.endswith(".py") and self._is_project(path):
                self.files[name] = os.path.abspath(path)


def _names_of(module: ModuleType) -> dict[str, int]:
    """A module's own names and what they are bound to, but its submodules (the import system
    sets those on the package) and dunders (`__warningregistry__` and the like)."""
    prefix = f"{module.__name__}."
    return {
        key: id(value)
        for key, value in list(vars(module).items())
        if not key.startswith("__") and not (isinstance(value, ModuleType) and value.__name__ == prefix + key)
    }


def _is_ours(hook: object) -> bool:
    """Whether this hook is one `install` set (an app may have put its own over it since)."""
    return getattr(hook, "__qualname__", "").startswith(f"{ImportGraphRecorder.__name__}.install.")
