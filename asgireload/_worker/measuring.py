"""Coverage in a worker: its data is saved on every way out, os._exit included.

Coverage saves at interpreter exit (atexit), which a worker skips when it ends with os._exit (the
supervisor went away, so the worker takes its whole process group down at once). Whatever started
coverage here (its `patch = subprocess`, COVERAGE_PROCESS_START), this saves what was measured
before that exit, so the app's code that ran in the worker is in the combined report.
"""

from __future__ import annotations

import contextlib
import sys


def save_coverage() -> None:
    """Stop and save the coverage measurement running in this process, if there is one."""
    coverage = sys.modules.get("coverage")
    if coverage is None:
        return
    with contextlib.suppress(Exception):
        current = coverage.Coverage.current()
        if current is not None:
            current.stop()
            current.save()
