"""A worker's end when its supervisor goes away: at once, with everything the app started.

The supervisor's end of the control socket closing (end of file, a hang-up) means nobody will
ever send `drain`: a watchdog thread sees it even while the main thread is busy importing the
app, saves the coverage data, and kills the worker's generation (its tag) and process group.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from typing import NoReturn

from .. import _reaper
from . import measuring

_EXITING = threading.Lock()  # the hang-up watcher and the main thread may both see the end


def exit_with_children() -> NoReturn:
    """The supervisor is gone: take down this worker and whatever the app started.

    Only the first caller goes on: a second one (the other thread) waits for the end, rather than
    killing the process while the first still saves the coverage data."""
    _EXITING.acquire()
    measuring.save_coverage()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    _reaper.kill_generation(None, os.environ.get(_reaper.TAG_VARIABLE))
    os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(0)  # not reached: the signal above includes us


def watch_for_hangup(fd: int) -> None:
    """Exit the process the moment the supervisor's end of the channel closes."""

    def wait() -> None:
        poller = select.poll()
        poller.register(fd, 0)  # hang-up and error are always reported
        while True:
            for _, events in poller.poll():
                if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    exit_with_children()

    threading.Thread(target=wait, name="asgireload-hangup", daemon=True).start()
