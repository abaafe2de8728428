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

When the app fails to load, `failure_from_exception` builds the report the supervisor logs and
the error page shows: a summary line, the developer's frames, the files to fix, and where a
module that was not found would be created. Its size is capped so that it always fits in one
control message.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from .._protocol import Failure, is_path
from .._protocol import FileEntry as FileStat
from .._watchfilter import PACKAGE_DIR, WatchFilter
from .errorreport import displayable

MAX_TRACEBACK_BYTES = 256 * 1024
MAX_SUMMARY_BYTES = 4 * 1024

_NOT_PRELOADED = frozenset({"__main__", "__mp_main__", "asgireload"})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")
_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x09), *range(0x0B, 0x20))}
_CANNOT_IMPORT_NAME = re.compile(r"cannot import name '([^']+)' from '([^']+)'")


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
                self._blocked.update(_parents(name))
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
        return self._qualifies.get(name, False) and all(self._qualifies.get(p, False) for p in _parents(name))

    def has_new_modules(self) -> bool:
        return (
            len(sys.modules) != len(self._reported_modules)
            or not sys.modules.keys() <= self._reported_modules
        )


def _parents(name: str) -> list[str]:
    """ "a.b.c" -> ["a", "a.b"]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


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


def usage_failure(
    summary: str, files: list[str] | None = None, *, missing: list[str] | None = None
) -> Failure:
    summary = cap_text(_clean(summary), MAX_SUMMARY_BYTES)
    return Failure("usage", summary, files=tuple(files or ()), missing=tuple(missing or ()))


def failure_from_exception(exc: BaseException, kind: str, *, project: WatchFilter | None = None) -> Failure:
    """Summary, a traceback of the developer's frames only, and the files worth fixing.

    `files` and `missing` keep the exact paths (they are watched); the summary and traceback are
    text for people: undecodable bytes of a path show as \\xNN, and both are capped in size.
    """
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    report.stack = traceback.StackSummary.from_list([f for f in report.stack if _is_users(f.filename)])
    text = "".join(report.format())
    files: list[str] = []
    for frame in report.stack:
        path = os.path.abspath(frame.filename)
        if os.path.isfile(path) and path not in files:
            files.append(path)
    if isinstance(exc, SyntaxError) and exc.filename and is_path(exc.filename):
        path = os.path.abspath(exc.filename)
        if path in files:
            files.remove(path)
        files.append(path)  # the line to fix is the last one shown
    missing: list[str] = []
    if project is not None and isinstance(exc, ImportError):
        missing = missing_module_paths(exc, project.roots)
    return Failure(
        kind,
        cap_text(_clean(summary_of(exc)), MAX_SUMMARY_BYTES),
        cap_text(_clean(text), MAX_TRACEBACK_BYTES, keep_end=True),
        files=tuple(files),
        missing=tuple(missing),
    )


def summary_of(exc: BaseException) -> str:
    """The exception's type and the first line of its message: `ValueError: first line`.

    A SyntaxError's message names the file and line already: "invalid syntax (main.py, line 3)".
    """
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    try:
        message = str(exc)
    except Exception:
        message = "<the exception's str() failed>"
    line = _first_line(message)
    return f"{name}: {line}" if line else name


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def missing_module_paths(exc: ImportError, roots: tuple[str, ...] | list[str]) -> list[str]:
    """Where, under the watched roots, creating a module would fix this import error.

    A top-level module N would be found as N.py or as the package folder N in any sys.path entry;
    a submodule a.b.c as c.py or c in the folders of package a.b. Paths that exist are left out.
    """
    name = exc.name
    if not name:
        return []
    folders = [os.path.join(os.path.abspath(r), "") for r in roots]

    def watched(entry: str) -> bool:
        return any(os.path.join(entry, "").startswith(folder) for folder in folders)

    module = sys.modules.get(name)
    if module is not None:  # `from pkg import x` where x is neither an attribute nor a submodule yet
        match = _CANNOT_IMPORT_NAME.match(str(exc))
        locations = getattr(module, "__path__", None)
        if match is None or locations is None:
            return []
        parent, child = module, match.group(1)
    else:
        parent, child = None, name
        for ancestor in reversed(_parents(name)):
            if sys.modules.get(ancestor) is not None:
                parent, child = sys.modules[ancestor], name[len(ancestor) + 1 :].partition(".")[0]
                break
        else:
            child = name.partition(".")[0]
    if parent is None:
        entries = [os.path.abspath(e) for e in sys.path if isinstance(e, str)]
    else:
        entries = [os.path.abspath(p) for p in getattr(parent, "__path__", None) or () if isinstance(p, str)]
    paths: list[str] = []
    for entry in entries:
        if not watched(entry):
            continue
        for path in (os.path.join(entry, child + ".py"), os.path.join(entry, child)):
            if path not in paths and not os.path.lexists(path):
                paths.append(path)
    return paths


def cap_text(text: str, limit: int, *, keep_end: bool = False) -> str:
    """Cut `text` to about `limit` UTF-8 bytes, saying how much went; `keep_end` keeps its tail too."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    room = limit - 64  # for the note
    head_room = room // 2 if keep_end else room
    head = encoded[:head_room].decode("utf-8", "ignore")
    tail = encoded[len(encoded) - (room - head_room) :].decode("utf-8", "ignore") if keep_end else ""
    note = f"\u2026 [{len(text) - len(head) - len(tail):,} characters cut]"
    return f"{head}\n{note}\n{tail}" if keep_end else head + note


def _clean(text: str) -> str:
    """Text safe to send and show: undecodable bytes and control characters become \\xNN."""
    text = displayable(text)
    return text.translate(_CONTROL_ESCAPES) if _CONTROL.search(text) else text


# frames of asgireload and of the import machinery: not the developer's, left out of tracebacks
_NOT_USERS = (os.path.join(PACKAGE_DIR, ""), "<frozen ", os.path.dirname(importlib.__file__))


def _is_users(filename: str) -> bool:
    return not filename.startswith(_NOT_USERS)


def _message_summary(text: str) -> str:
    """A lifespan failure message's summary: its first non-empty line, or for a formatted
    traceback (Starlette sends one) its last unindented line, the exception."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return "lifespan start-up failed"
    if lines[0].startswith("Traceback (most recent call last)"):
        unindented = [line for line in lines if not line[:1].isspace()]
        return unindented[-1].strip()
    return lines[0].strip()


def catch_lifespan_failure(
    app: Callable[..., Any], sink: dict[str, Failure], *, project: WatchFilter | None = None
) -> Callable[..., Any]:
    """Wrap the app so a lifespan start-up failure's traceback reaches the supervisor.

    uvicorn only logs it; we also want it on the error page. An exception raised by the app
    wins over a `lifespan.startup.failed` message sent just before it: it names the files.
    """

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "lifespan":
            await app(scope, receive, send)
            return
        reported: list[bool] = []  # whether the failure in the sink came from a message

        async def watching_send(message: Any) -> None:
            if message.get("type") == "lifespan.startup.failed" and "failure" not in sink:
                text = _clean(str(message.get("message") or "lifespan start-up failed"))
                sink["failure"] = Failure(
                    "lifespan",
                    cap_text(_message_summary(text), MAX_SUMMARY_BYTES),
                    cap_text(text, MAX_TRACEBACK_BYTES, keep_end=True),
                )
                reported.append(True)
            await send(message)

        try:
            await app(scope, receive, watching_send)
        except BaseException as exc:
            if "failure" not in sink or (reported and isinstance(exc, Exception)):
                reported.clear()
                sink["failure"] = failure_from_exception(exc, "lifespan", project=project)
            raise

    return wrapped
