"""What a failed load reports: the summary line, the developer's frames, the files to fix, and
where a module that was not found would be created (the supervisor watches those paths).

The supervisor logs it and the error page shows it. `files` and `missing` keep exact paths;
the summary and traceback are text for people, with undecodable bytes and control characters
shown as \\xNN, and capped in size so that a failure always fits in one control message.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .._protocol import Failure, is_path
from .._watchfilter import PACKAGE_DIR, WatchFilter
from .errorreport import displayable

MAX_TRACEBACK_BYTES = 256 * 1024
MAX_SUMMARY_BYTES = 4 * 1024

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")
_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x09), *range(0x0B, 0x20))}
_CANNOT_IMPORT_NAME = re.compile(r"cannot import name '([^']+)' from '([^']+)'")


def parent_packages(name: str) -> list[str]:
    """ "a.b.c" -> ["a", "a.b"]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


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
        for ancestor in reversed(parent_packages(name)):
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
