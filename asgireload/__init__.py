"""asgireload: an asyncio-native auto-reloader for ASGI apps.

The public modules are config, errors, events, reloader, serving, cli and testing. Private
packages hold the rest by role: `_supervisor` (the state machine and its shell, the scanner,
sockets) and `_worker` (what runs in a worker process); the modules both sides share sit at the
top: `_protocol` (the control messages and Failure), `_handoff`, `_reaper`, `_watchfilter`,
`_paths`, `_logging`.

The public names are imported lazily, so a worker process (which imports
`asgireload._worker`) never pays for, or depends on, the supervisor's modules.
"""

from __future__ import annotations

import importlib

from .__about__ import __version__ as __version__

TYPE_CHECKING = False  # not typing's: importing typing here would delay the command's first step
if TYPE_CHECKING:
    from typing import Any

    from .config import Config as Config
    from .errors import AsgireloadError as AsgireloadError
    from .errors import ConfigError as ConfigError
    from .errors import ReloadTimeout as ReloadTimeout
    from .errors import StartupError as StartupError
    from .events import Failure as Failure
    from .events import ReloadEvent as ReloadEvent
    from .reloader import Reloader as Reloader
    from .serving import run as run
    from .serving import serve as serve

_EXPORTS = {
    "Config": "config",
    "AsgireloadError": "errors",
    "ConfigError": "errors",
    "ReloadTimeout": "errors",
    "StartupError": "errors",
    "Reloader": "reloader",
    "run": "serving",
    "serve": "serving",
    "ReloadEvent": "events",
    "Failure": "events",
}

__all__ = [
    "AsgireloadError",
    "Config",
    "ConfigError",
    "Failure",
    "ReloadEvent",
    "ReloadTimeout",
    "Reloader",
    "StartupError",
    "__version__",
    "run",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'asgireload' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
