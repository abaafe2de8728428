"""Configuration that applies itself: `[tool.asgireload]` and the `--log-config` file, re-read when saved.

The command line builds its Config from flags over variables over the file; when the file (or the
log config file) changes, the same layers are built again. What can change between generations
(uvicorn's options, the drain timeout, the log levels...) applies to the next one: the warm worker,
which was started with the old settings, is replaced. What needs a restart (the socket, TLS, what
is watched, how workers start) is said in one line naming the keys, and keeps its old value. An
edit that does not parse, a bad value or a deleted file is one error line naming the file (and
the key), and the previous settings keep serving: that save starts no reload.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable

from .. import _logging
from .._uvicorn import PASSED_WHEN_SET
from ..config import UVICORN_BASE_OPTIONS, Config
from ..configfile import name_the_file
from ..errors import ConfigError

logger = logging.getLogger("asgireload")

# applied to the next generation: what a new worker or the machine's policy reads
APPLIES = frozenset(UVICORN_BASE_OPTIONS + PASSED_WHEN_SET) - {"backlog"} | {
    "drain_timeout",
    "sequential",
    "keep_last_good",
    "show_errors",
}


@dataclasses.dataclass(frozen=True)
class Reread:
    """What a save of a settings file means: the Config to apply (None: keep the one serving), and
    the saved files that start no reload (invalid, or nothing that matters changed)."""

    config: Config | None
    quiet: frozenset[str]


class LiveSettings:
    """The command line's settings files, and the Config built again from them when one is saved."""

    def __init__(self, config: Config, rebuild: Callable[[], Config], pyproject: str | None) -> None:
        self.config = config
        self._rebuild = rebuild  # flags over variables over this same file; raises ConfigError
        self._pyproject = pyproject
        log_config = config.log_config if isinstance(config.log_config, str) else None
        self.files = tuple(os.path.abspath(p) for p in (pyproject, log_config) if p is not None)

    def reread(self, changed: Iterable[str]) -> Reread:
        saved = frozenset(changed) & frozenset(self.files)
        if not saved:
            return Reread(None, frozenset())
        try:
            new = self._checked(self._rebuild())
        except ConfigError as exc:
            logger.error("%s; the previous settings keep serving.", str(name_the_file(exc)).rstrip("."))
            return Reread(None, saved)
        needs_restart = [f.name for f in _differing(self.config, new) if f.name not in APPLIES]
        if needs_restart:
            logger.warning(
                "%s: %s changed, which applies only when asgireload is restarted.",
                self._name(saved),
                ", ".join(needs_restart),
            )
            new = dataclasses.replace(new, **{name: getattr(self.config, name) for name in needs_restart})
        applied = [f.name for f in _differing(self.config, new)]
        log_file_saved = self.config.log_config is not None and saved - {self._pyproject}
        if not applied and not log_file_saved:
            return Reread(None, saved)
        if "log_config" in applied or "log_level" in applied or log_file_saved:
            self._apply_logging(new)
        what = ", ".join(applied) if applied else "the log configuration"
        logger.info("%s: %s applies from the next generation.", self._name(saved), what)
        self.config = new
        return Reread(new, frozenset())

    def _checked(self, new: Config) -> Config:
        """A log config file that does not load is refused like a bad value (a deleted pyproject.toml
        is refused by rebuilding, which reads that same file)."""
        if isinstance(new.log_config, str):
            try:
                _logging.read_config_file(new.log_config)
            except _logging.LogConfigError as exc:
                raise ConfigError(f"{str(exc).rstrip('.')} (log_config)") from None
        return new

    def _apply_logging(self, new: Config) -> None:
        try:
            _logging.set_up(new.log_level, new.use_colors, new.log_config, new.app_dir)
        except _logging.LogConfigError as exc:  # checked before: a race with another save
            logger.error("%s", exc)

    def _name(self, saved: frozenset[str]) -> str:
        return ", ".join(sorted(os.path.relpath(p) for p in saved))


def _differing(old: Config, new: Config) -> list[dataclasses.Field[object]]:
    return [f for f in dataclasses.fields(Config) if getattr(old, f.name) != getattr(new, f.name)]
