"""The exceptions asgireload raises.

    AsgireloadError             base class; catch this to catch them all
     ├── ConfigError            an option has a value asgireload cannot use
     ├── StartupError           the machine refuses: port in use, folder missing, app not found
     └── ReloadTimeout          a wait for a generation ran past its deadline

Every message is a whole sentence that names the offending value and says what to do.
"""

from __future__ import annotations


class AsgireloadError(Exception):
    """Base class of every error asgireload raises on purpose."""


class ConfigError(AsgireloadError, ValueError):
    """An option has a wrong type or a value out of range."""


class StartupError(AsgireloadError):
    """The server cannot start: nothing is left bound or running when this is raised.

    `option` names the option whose value is the cause (the Config field, such as "env_file"),
    so that the command line can say where that value was set.
    """

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class ReloadTimeout(AsgireloadError, TimeoutError):
    """A generation did not become ready (or fail) before the deadline."""
