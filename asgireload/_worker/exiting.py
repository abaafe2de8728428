"""How a forked worker ends: as the interpreter ends a spawned one, minus the template's part.

A spawned worker returns from `main()` and the interpreter finishes it: it waits for the app's
non-daemon threads, runs the `atexit` handlers (the app's, `logging.shutdown`, and through
`weakref.finalize` a module-level `TemporaryDirectory`'s clean-up), flushes the standard streams,
and tears the modules down, which closes (so flushes) the files the app left open. A forked
worker cannot return into the template's code, so it does the same here and leaves through
`os._exit`, with two differences, both on purpose:

- Objects the template made before the fork (a preloaded package's own module-level temporary
  folder) are shared with the template and with every worker forked after this one: their
  weakref finalizers are the template's to run, never a worker's (`disown_template_finalizers`).
- Modules are not torn down: the `__del__` of an object the template made would then run in
  each worker (a preloaded `NamedTemporaryFile` would delete the template's file). The app's
  open files are flushed instead, which is what that tear-down did for them.

`atexit` handlers registered before the fork (the stdlib's, a preloaded package's) run in each
worker, as they run once in each spawned worker that imported the same modules.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import io
import os
import sys
import threading
import traceback
import weakref
from typing import NoReturn


def disown_template_finalizers() -> None:
    """In a freshly forked worker: the finalizers registered so far belong to the template's
    objects, which outlive this worker; they are not run at its exit."""
    registry = getattr(weakref.finalize, "_registry", {})  # CPython's, since 3.4
    for finalizer in list(registry):
        finalizer.atexit = False


def exit_code(exc: SystemExit) -> int:
    """The status `sys.exit(value)` gives a process; a message is printed, as the interpreter does."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def leave(code: int, *, wait_for_threads: bool = True) -> NoReturn:
    """End this forked worker the way the interpreter ends a spawned one (see the module's doc).

    The template ends through here too, without waiting for threads (it forks with none; one
    started by a preloaded package only stops it forking), and so runs its own finalizers."""
    try:
        if wait_for_threads:
            with contextlib.suppress(Exception):
                threading._shutdown()  # type: ignore[attr-defined]  # the app's non-daemon threads
        atexit._run_exitfuncs()  # prints what a handler raises, as at the interpreter's exit
        _flush_open_files()
    except BaseException:
        traceback.print_exc()
    finally:
        flush_standard_streams()
        os._exit(code)


def flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, or a pipe nobody reads any more
            stream.flush()


def _flush_open_files() -> None:
    """Flush the files opened since the fork (the template's objects are frozen, out of the
    collector's lists: see template.warm_up) that a module tear-down would have closed."""
    for obj in gc.get_objects():
        with contextlib.suppress(Exception):
            if isinstance(obj, io.IOBase) and not obj.closed and obj.writable():
                obj.flush()
