"""`--clear-screen`: a clean screen for each new generation, never at the cost of an unseen error.

The rule, precisely: when generation N > 1 starts loading, the screen is cleared if the option is
on, stdout is a terminal asgireload has in the foreground, no worker's debugger has it, and no
error line has been logged (a generation that failed to load or to start) since the last
generation became ready or the user pressed `c`. So a failed generation's error stays on the
screen until a later generation is ready (its "Reloaded" line printed under the error): the
reload that fixes an error does not clear it away, the one after does.
After a clear, one line says where the app is served, so the screen is never without it.

Off by default: uvicorn users keep their scrollback and expect every line of a session, and a
request's traceback printed by the app (which asgireload does not see) would be cleared too.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

from .. import _protocol as protocol
from . import commands as c

logger = logging.getLogger("asgireload")


class ClearPerReload:
    """Follows the supervisor's commands (`on_command`) and clears when a generation starts."""

    def __init__(
        self,
        enabled: bool,
        may_clear: Callable[[], bool],
        clear: Callable[[], None],
        where: Callable[[], str],
    ) -> None:
        self.enabled = enabled
        self._may_clear = may_clear  # stdout a terminal in the foreground, not lent to a debugger
        self._clear = clear
        self._where = where  # "http://127.0.0.1:8000; press h for help"
        self._failed = False  # an error was logged since the last ready generation or `c`
        self._cleared_for = 1  # the first generation never clears: start-up lines stay

    def on_command(self, command: c.Command) -> None:
        match command:
            case c.Log(level=level) if level >= logging.ERROR:
                self._failed = True  # said at once; the outcome is reported later (after a grace)
            case c.ReportOutcome(outcome="ready"):
                self._failed = False
            case c.Tell(message=protocol.Load(generation=generation, failure=None)) if (
                generation > self._cleared_for
            ):
                self._cleared_for = generation
                if self.enabled and not self._failed and self._may_clear():
                    self._clear()
                    logger.info(
                        "Cleared the screen for generation %d; the app is at %s", generation, self._where()
                    )

    def seen(self) -> None:
        """The user cleared the screen (`c`): an error that was on it has been seen."""
        self._failed = False


def stdout_in_foreground() -> bool:
    """Whether stdout is a terminal whose foreground is this process: what may be cleared."""
    try:
        return os.isatty(1) and os.tcgetpgrp(1) == os.getpgrp()
    except OSError as exc:
        return exc.errno == errno.ENOTTY and os.isatty(1)
