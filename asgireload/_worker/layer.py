"""The project layer: a template that has also imported the project modules a reload need not run.

The base template (template.py) forks it on a `layer` request, with a channel of its own. It
imports the modules it was asked to hold, in the order the last worker ran them, with the
worker's import hooks (compiled from source, each file's stat taken as it is read, the import
graph recorded), then serves fork requests exactly as the base template does: a worker forked
from it finds those modules in `sys.modules` and runs only the rest of the app's import.

Three things keep it honest:

- It reports every project file it holds with the stat it saw (`layered`); the supervisor never
  forks from it once one of those files changed. The worker forked from it reports the same
  stats (see `inherited`), never a newer one, so an edit made since is never taken as seen.
- A held module whose package `__init__` is not held needs the package while it imports: a
  stub (the module object made from the spec, with its `__path__`, never executed) stands in,
  and is taken out of `sys.modules` afterwards (the worker runs the real `__init__`).
- Fork safety is checked per module, not guessed: a module whose import started a thread or a
  process, left a socket, a pipe or an event descriptor open, or forked makes the layer say
  `unsafe` naming it and exit; the supervisor then holds neither it nor what imports it. A
  module that fails to import here, or that pulls in a project module the layer was not asked
  to hold, is reported the same way (`unfit`), said at debug level.

A Django project's layer runs `django.setup()` first, as the app's import did (djangosetup.py);
the same checks apply to it, and a refusal of it is flagged `django`.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import socket
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

from .. import _protocol as protocol
from .. import _wire
from .._listing import listing_key
from .._watchfilter import WatchFilter
from . import datafiles, djangosetup, layerenv
from . import main as worker
from .fingerprints import fingerprint
from .imports import ImportGraphRecorder
from .loader import ImportRecorder, stat_of

DjangoPlan = djangosetup.DjangoPlan


class Inherited:
    """What a worker forked from a layer takes over: the stats the layer saw and its graph."""

    def __init__(
        self, stats: dict[str, protocol.FileEntry], graph: ImportGraphRecorder, django: DjangoPlan | None
    ) -> None:
        self.stats = stats
        self.graph = graph
        self.held = frozenset(graph.files)
        self.django = django  # the settings module and variables it ran django.setup() with


FINGERPRINTS: dict[str, int] = {}  # module -> its fingerprint in the last import that ran it in full
INHERITED: Inherited | None = None  # set in a layer; a worker forked from it finds it here


class _Forked:
    """Set when anything forks while the layer imports (os.register_at_fork can't be undone)."""

    count = 0

    @classmethod
    def note(cls) -> None:
        cls.count += 1


def _descriptors() -> set[int]:
    """The open descriptors, but the one that lists them (its number may be reused by an import)."""
    listing = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = {int(name) for name in os.listdir(listing)} - {listing}
    finally:
        os.close(listing)
    return {fd for fd in found if _is_open(fd)}  # (listdir lists through a copy of its own)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _children() -> set[str]:
    found: set[str] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as file:
                found.update(file.read().split())
        except OSError:
            continue
    return found


# descriptors a fork shares badly: a connection, a pipe, an event loop's epoll or eventfd
_SHARED_BADLY = ("socket:", "pipe:", "anon_inode:", "a descriptor")


def _describe_fd(fd: int) -> str:
    """What a descriptor opened by an import points to."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "a descriptor"


def _writable(fd: int) -> bool:
    """Whether a descriptor was opened for writing (not only appending): every worker forked would
    share its one offset, and none would truncate it as a fresh process does."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as info:
            flags = next((int(line.split()[1], 8) for line in info if line.startswith("flags:")), 0)
    except (OSError, ValueError):
        return False
    return flags & os.O_ACCMODE != os.O_RDONLY and not flags & os.O_APPEND


class SafetyCheck:
    """What one module's import left behind that a fork cannot copy safely; None if nothing."""

    def __init__(self) -> None:
        self.exit_handlers = atexit._ncallbacks()
        self.fds = _descriptors()
        self.children = _children()
        self.forks = _Forked.count
        self.threads = threading.active_count(), len(os.listdir("/proc/self/task"))

    def problem(self) -> str | None:
        threads = threading.active_count(), len(os.listdir("/proc/self/task"))
        if any(now > before for now, before in zip(threads, self.threads, strict=True)):
            return "it started a thread at import"
        if _Forked.count != self.forks:
            return "it forked at import"
        if _children() - self.children:
            return "it started a process at import"
        if atexit._ncallbacks() > self.exit_handlers:
            # it would run in every generation's exit, on what the layer made (a folder, a file)
            return "it registered an exit handler (atexit) at import"
        for fd in sorted(_descriptors() - self.fds):
            what = _describe_fd(fd)
            if what.startswith(_SHARED_BADLY):  # (a file read or mapped is fine: a model's weights)
                return f"it left {what} open at import"
            if _writable(fd):  # (a database file, a log opened for writing)
                return f"it left {what} open for writing at import"
        return None


def _stub_parents(name: str, held: set[str], stubs: dict[str, types.ModuleType]) -> None:
    """Stand-ins for the packages of `name` that the layer does not hold (see the docstring)."""
    parts = name.split(".")
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        if parent in sys.modules or parent in held:
            continue
        spec = importlib.util.find_spec(parent)
        if spec is None or spec.submodule_search_locations is None:
            return
        stub = importlib.util.module_from_spec(spec)
        stubs[parent] = sys.modules[parent] = stub
        if depth > 1:
            setattr(sys.modules[".".join(parts[: depth - 1])], parts[depth - 1], stub)


def _unstub(stubs: dict[str, types.ModuleType]) -> None:
    for name, stub in stubs.items():
        if sys.modules.get(name) is stub:
            del sys.modules[name]


class LayerImport:
    """Imports the modules a layer holds, checking each; the first that does not fit stops it."""

    def __init__(
        self, settings: protocol.Settings, modules: list[str], django: DjangoPlan | None = None
    ) -> None:
        self.modules = modules
        self.django = django
        self.project = WatchFilter(settings.roots, settings.includes, settings.excludes)
        self.files = ImportRecorder(self.project)
        self.graph = ImportGraphRecorder(self.project.is_project_file)
        self.app_dir = settings.app_dir
        self.stubs: dict[str, types.ModuleType] = {}
        self.opened: set[str] = set()  # files the held modules opened to read at import

    def run(self) -> dict[str, Any]:
        """The report: `layered` with what it holds, or `unsafe`/`unfit` naming a module."""
        os.register_at_fork(after_in_parent=_Forked.note)
        wanted = set(self.modules)
        project_paths = [self.app_dir, *_pythonpath()]
        for shadowed in worker._shadowed_modules(project_paths, worker._AT_START | worker._UVICORN):
            del sys.modules[shadowed]  # as a worker does (see main._prepare_imports)
        sys.path[0:0] = project_paths  # where a worker puts the project
        importlib.invalidate_caches()
        self.files.install()
        self.graph.install()
        try:
            if self.django is not None and (refusal := self._set_up_django(wanted)) is not None:
                return refusal
            for name in self.modules:
                if (refusal := self._import(name, wanted)) is not None:
                    return refusal
        finally:
            self.graph.uninstall()
            self.files.uninstall()
            for entry in project_paths:  # (what a held module put there stays, as in a worker)
                if entry in sys.path:
                    sys.path.remove(entry)
            _unstub(self.stubs)
        return self._differs() or self._report()

    def _differs(self) -> dict[str, Any] | None:
        """The first held module whose plain values differ from those of the last import that ran
        it in full: what it read at import was changed by a module the layer left out."""
        for name in self.modules:
            expected, module = FINGERPRINTS.get(name), sys.modules.get(name)
            if expected is not None and module is not None and fingerprint(module) != expected:
                why = "its values at import differ from a full import's (a module run before it changes them)"
                return {"type": "unfit", "module": name, "why": why}
        return None

    def _import(self, name: str, wanted: set[str]) -> dict[str, Any] | None:
        if name in sys.modules:
            return None
        check = SafetyCheck()
        try:
            _stub_parents(name, wanted, self.stubs)
            with layerenv.recording_reads() as read, datafiles.recording_opens(self.opened):
                importlib.import_module(name)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            return {"type": "unfit", "module": name, "why": f"{type(exc).__name__}: {exc}"[:300]}
        if (problem := check.problem()) is not None:
            return {"type": "unsafe", "module": name, "why": problem}
        # (the variables a Django layer sets itself before django.setup() are checked by djangosetup)
        applied = set(self.django[1]) if self.django is not None else set()
        if set_by_app := sorted((layerenv.APP_SETS - applied).intersection(read)):
            why = f"it reads {set_by_app[0]} at import, which the app's own import sets"
            return {"type": "unfit", "module": name, "why": why}
        for variable, value in read.items():
            layerenv.SEEN.setdefault(variable, value)
        extra = [m for m in self.graph.files if m not in wanted and m not in self.stubs]
        if extra:
            return {"type": "unfit", "module": name, "why": f"it imported {extra[0]}, not held"}
        return None

    def _set_up_django(self, wanted: set[str]) -> dict[str, Any] | None:
        """Run django.setup() as the app's import did; a refusal flagged `django` if it failed,
        was not fork-safe or imported a project module the layer does not hold (the supervisor
        then launches layers without it)."""
        assert self.django is not None
        settings, env = self.django
        check = SafetyCheck()
        try:
            djangosetup.set_up_in_layer(env)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            why = f"django.setup() failed: {type(exc).__name__}: {exc}"[:300]
            return {"type": "unfit", "module": settings, "why": why, "django": True}
        problem = check.problem()
        extra = [m for m in self.graph.files if m not in wanted]
        if problem is None and extra:
            problem = f"django.setup() imported {extra[0]}, which it does not hold"
        if problem is not None:
            return {"type": "unfit", "module": settings, "why": problem, "django": True}
        return None

    def _report(self) -> dict[str, Any]:
        global INHERITED
        held = {name: path for name, path in self.graph.files.items() if name in sys.modules}
        self.graph.files = dict(held)
        self.graph.imports = {name: self.graph.imports.get(name, set()) for name in held}
        paths = set(held.values())
        stats = {
            os.path.abspath(path): (os.path.abspath(path), *entry[1:])
            for path, entry in self.files.stats.items()
            if os.path.abspath(path) in paths
        }
        INHERITED = Inherited(stats, self.graph, self.django)
        files = [list(stats[path]) for path in dict.fromkeys(held.values()) if path in stats]
        read = datafiles.own_files(self.opened - paths, self.project)  # data, PYTHONPATH's modules
        files += [list(stat_of(path)) for path in read]
        searched = {os.path.dirname(path) for path in paths} | {self.app_dir, *_pythonpath()}
        files += [
            [os.path.join(folder, ""), *key] for folder in sorted(searched) if (key := listing_key(folder))
        ]
        return {"type": "layered", "pid": os.getpid(), "modules": list(held), "files": files}


def _pythonpath() -> Iterator[str]:
    return iter(worker._PYTHONPATH)


def become_layer(
    control: socket.socket, settings: protocol.Settings, modules: list[str], django: DjangoPlan | None = None
) -> dict[str, Any]:
    """In the forked child: import `modules` (after django.setup(), given its settings module and
    variables) and say what it holds (the caller then serves)."""
    os.setsid()  # its own group: ending it never reaches the base template or its workers
    report = LayerImport(settings, modules, django).run()
    _wire.send(control, report)
    return report
