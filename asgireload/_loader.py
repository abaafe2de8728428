"""Worker side: import the app, and remember exactly which files it was built from.

Two details make reloads trustworthy:
- Project modules are compiled from source, never from __pycache__. CPython checks a .pyc
  against the source's mtime in whole seconds and its size, so two same-size saves within
  one second would otherwise run the old code.
- The stat of each project file is taken just before its source is read. The supervisor
  compares that stat with the disk when the report arrives, so an edit made while the worker
  was importing is never lost.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .watchfilter import WatchFilter

FileStat = tuple[str, int | None, int | None, int | None]  # path, mtime_ns, size, inode

_OWN_DIR = os.path.dirname(os.path.abspath(__file__))
_NOT_PRELOADED = frozenset({"__main__", "__mp_main__", "asgireload"})


class AppLoadError(Exception):
    """The app could not be loaded; `failure` is what the supervisor and error page show."""

    def __init__(self, failure: dict[str, Any]) -> None:
        super().__init__(failure["summary"])
        self.failure = failure


class ImportRecorder:
    """Compiles project modules from source and records the stat seen when each was read."""

    def __init__(self, project: WatchFilter) -> None:
        self.project = project
        self.stats: dict[str, FileStat] = {}
        self._reported_modules: set[str] = set()

    def install(self) -> None:
        recorder = self
        original = importlib.machinery.SourceFileLoader.get_code

        def get_code(loader: importlib.machinery.SourceFileLoader, fullname: str) -> Any:
            path = loader.get_filename(fullname)
            if not recorder.project.is_project_file(path):
                return original(loader, fullname)
            recorder.stats[path] = stat_of(path)
            return loader.source_to_code(loader.get_data(path), path)

        importlib.machinery.SourceFileLoader.get_code = get_code  # type: ignore[method-assign,assignment]

    def new_modules(self) -> tuple[list[FileStat], list[str]]:
        """Modules imported since the last call, in import order.

        Returns the files of all of them (the supervisor picks the project's), and the names of
        those that are not the project's own: the ones a warm standby may import ahead of time.
        """
        files: list[FileStat] = []
        preloadable: list[str] = []
        for name, module in list(sys.modules.items()):
            if name in self._reported_modules:
                continue
            self._reported_modules.add(name)
            path = _module_file(module)
            if path is not None:
                files.append(self.stats.get(path) or stat_of(path))
            if (
                not (path and self.project.is_project_file(path))
                and name.partition(".")[0] not in _NOT_PRELOADED
            ):
                preloadable.append(name)
        return files, preloadable

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


def load_app(import_string: str, *, factory: bool, app_dir: str) -> Any:
    """Import module:attribute; raise AppLoadError with a failure the developer can act on."""
    module_name, _, attribute = import_string.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(
                usage_failure(
                    f"cannot import {import_string!r}: no module named {exc.name!r} "
                    f"(looked in {app_dir}; pass --app-dir?)"
                )
            ) from None
        raise AppLoadError(failure_from_exception(exc, "import")) from None
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppLoadError(failure_from_exception(exc, "import")) from None

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
            raise AppLoadError(failure_from_exception(exc, "import")) from None
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


def usage_failure(summary: str, files: list[str] | None = None) -> dict[str, Any]:
    return {"kind": "usage", "summary": summary, "traceback": "", "files": files or []}


def failure_from_exception(exc: BaseException, kind: str) -> dict[str, Any]:
    """Summary, a traceback of the developer's frames only, and the files worth fixing."""
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    report.stack = traceback.StackSummary.from_list([f for f in report.stack if _is_users(f.filename)])
    text = "".join(report.format())
    files: list[str] = []
    for frame in report.stack:
        path = os.path.abspath(frame.filename)
        if os.path.isfile(path) and path not in files:
            files.append(path)
    if isinstance(exc, SyntaxError) and exc.filename:
        path = os.path.abspath(exc.filename)
        if path in files:
            files.remove(path)
        files.append(path)  # the line to fix is the last one shown
    summary = "".join(report.format_exception_only()).strip().splitlines()[-1]
    return {"kind": kind, "summary": summary, "traceback": text, "files": files}


_IMPORTLIB_DIR = os.path.dirname(importlib.__file__)


def _is_users(filename: str) -> bool:
    return not (filename.startswith((_OWN_DIR, "<frozen ", _IMPORTLIB_DIR)))


def catch_lifespan_failure(app: Callable[..., Any], sink: dict[str, Any]) -> Callable[..., Any]:
    """Wrap the app so a lifespan start-up failure's traceback reaches the supervisor.

    uvicorn only logs it; we also want it on the error page.
    """

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "lifespan":
            await app(scope, receive, send)
            return

        async def watching_send(message: Any) -> None:
            if message.get("type") == "lifespan.startup.failed" and "failure" not in sink:
                text = str(message.get("message") or "lifespan start-up failed")
                lines = text.strip().splitlines() or [text]
                sink["failure"] = {"kind": "lifespan", "summary": lines[-1], "traceback": text, "files": []}
            await send(message)

        try:
            await app(scope, receive, watching_send)
        except BaseException as exc:
            sink.setdefault("failure", failure_from_exception(exc, "lifespan"))
            raise

    return wrapped
