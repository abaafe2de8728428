"""What the scanners report, turned into the machine's events.

The project's scanner, the scanner of the installed packages the standby preloads and the watch
on site-packages report changed paths; this module says what each change is: an asset for open
pages (live reload, no restart), a settings file (re-read, applied at the next generation), code
(`events.FileChanged`) or an installed package (`events.PackagesChanged`). The other way, a
`commands.Watch` from the machine says which files a generation was built from: they are put
under the scanner that fits them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .._paths import relative
from .._watchfilter import WatchFilter
from ..config import Config
from . import commands as c
from . import editable
from . import machineevents as e
from .assets import LiveAssets
from .liveconfig import LiveSettings
from .scanner import Scanner, stat_key
from .sitestate import SiteWatch

logger = logging.getLogger("asgireload")

PACKAGES_POLL = 30.0  # seconds between full scans of preloaded packages (file events are the hint)

StartTask = Callable[[Coroutine[Any, Any, None], str], None]


class Watching:
    """The scanners, and what their reports mean for the machine (see the module's docstring)."""

    def __init__(self, config: Config, emit: Callable[[e.Event], None]) -> None:
        self.config = config
        self._emit = emit  # the supervisor's event queue
        roots = editable.editable_roots(config.app_dir) if config.watch_editable else []
        self.project = WatchFilter(
            (*config.watch_roots, *roots), config.reload_includes, config.reload_excludes
        )
        if roots:
            logger.info(
                "Also watching packages installed in editable mode from this checkout: %s "
                "(--no-watch-editable turns this off).",
                ", ".join(relative(p) for p in roots),
            )
        self.live = LiveAssets(config, self.project.roots)
        self.scanner: Scanner | None = None
        self._packages: Scanner | None = None  # installed packages the standby preloads
        self._site: SiteWatch | None = None  # what a process started now would import from
        self._live_settings: LiveSettings | None = None
        self._tell_pages: Callable[[list[str]], None] = lambda assets: None
        self._reconfigured: Callable[[Config], None] = lambda config: None
        self._code_changed: Callable[[list[str]], None] = lambda paths: None

    def start(
        self,
        start_task: StartTask,
        *,
        live_settings: LiveSettings | None,
        tell_pages: Callable[[list[str]], None],
        reconfigured: Callable[[Config], None],
        code_changed: Callable[[list[str]], None] = lambda paths: None,
    ) -> None:
        """Start the scanners (as tasks of the supervisor) and watch the env and settings files."""
        config = self.config
        self._live_settings = live_settings
        self._tell_pages = tell_pages
        self._reconfigured, self._code_changed = reconfigured, code_changed
        self.scanner = Scanner(
            self._on_change,
            interval=config.poll_interval,
            includes=self.live.scan_rules if self.live.scan_rules.includes else None,
            force_polling=config.force_polling,
            quiet_gap=config.reload_delay,
        )
        start_task(self.scanner.run(), "asgireload-scanner")
        if config.standby:  # warm processes, started before the next reload
            self._site = SiteWatch(lambda paths: self._on_packages_change(paths, time.time()))
            start_task(self._site.run(), "asgireload-site")
        if config.preload and config.standby:
            self._packages = Scanner(
                self._on_packages_change,
                interval=PACKAGES_POLL,
                force_polling=config.force_polling,
                fast_poll=None,  # an upgrade is found by the next full scan: no fast polling
            )
            start_task(self._packages.run(), "asgireload-packages")
        if config.env_file is not None:
            self.scanner.watch([(config.env_file, stat_key(config.env_file))])
        for path in live_settings.files if live_settings is not None else ():
            self.scanner.watch([(path, stat_key(path))])

    def check_site(self) -> None:
        """Before a reload uses a warm process: one that predates a change to site-packages is
        replaced first, so the reload imports what a fresh interpreter would."""
        if self._site is not None:
            self._site.check()

    def watch(self, command: c.Watch) -> None:
        """The files a generation was built from (or its failure named): the project's go to the
        scanner, installed ones the standby preloads to the packages' scanner."""
        if self.scanner is None:
            return
        entries, packages = [], []
        for path, mtime, size, ino in command.reported:
            stat = None if mtime is None or size is None or ino is None else (mtime, size, ino)
            if self.project.is_project_file(path):
                entries.append((path, stat))
            elif self.config.preload and self.project.is_installed_package(path):
                packages.append((path, stat))
        self.live.note_code(path for path, _ in entries)
        self.live.note_code(command.paths)
        if entries:
            self.scanner.watch(entries)
        if packages and self._packages is not None:
            self._packages.watch(packages)
        scanner = self.scanner
        scanner.watch((p, stat_key(p)) for p in dict.fromkeys(command.paths) if p not in scanner)

    def _on_change(self, paths: list[str], since: float) -> None:
        assets, code = self.live.split(paths)
        if assets:
            self._tell_pages(assets)
        if code and self._live_settings is not None:
            code = self._reconfigure(code)
        if code:
            self._code_changed(code)  # project layers holding these files fork no more
            self.check_site()
            self._emit(e.FileChanged(tuple(code), since))

    def _reconfigure(self, paths: Sequence[str]) -> list[str]:
        """A settings file was saved: the next generation gets the new Config (the machine replaces
        the warm worker); an invalid or meaningless save starts no reload."""
        assert self._live_settings is not None
        reread = self._live_settings.reread(list(paths))
        if reread.config is not None:
            self.config = reread.config
            self._reconfigured(reread.config)
        return [path for path in paths if path not in reread.quiet]

    def _on_packages_change(self, paths: list[str], since: float) -> None:
        self._emit(e.PackagesChanged(tuple(paths), since))
