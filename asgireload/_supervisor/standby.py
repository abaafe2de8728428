"""The warm standby: one worker spawned ahead of the next reload, and the installed modules it preloads.

The preload list grows with the installed modules each generation reports; a module whose
preload failed is never preloaded again. A standby that dies is replaced, but never in a loop:
after STANDBY_DEATHS in a row none is kept until a generation next starts well.
"""

from __future__ import annotations

import logging

from .records import MachineContext, Worker
from .roster import Roster
from .table import WorkerStage

STANDBY_DEATHS = 3  # warm workers dying in a row before we stop replacing them (no hot loop)


class WarmStandby:
    """Keeps one warm worker (if the policy wants one) and the list of what it preloads."""

    def __init__(self, context: MachineContext, roster: Roster) -> None:
        self._context = context
        self._roster = roster
        self.preload: list[str] = []  # installed modules the standby imports ahead of time
        self._not_preloadable: set[str] = set()
        self._said_preload_failed = False  # a failed preload is a warning once a run
        self._deaths = 0  # warm workers that died in a row

    def modules(self, preload: bool = True) -> tuple[str, ...]:
        """What a worker spawned now preloads."""
        return tuple(self.preload) if self._context.policy.preload and preload else ()

    def ensure(self, preload: bool = True) -> None:
        if self._context.policy.standby and self._roster.standby is None:
            self._roster.spawn(WorkerStage.WARMING, self.modules(preload), cold=not preload)

    def replace(self) -> None:
        """A fresh warm worker: the one we have imported something that is out of date."""
        standby = self._roster.standby
        if standby is not None:
            self._roster.kill(standby)
            self.ensure()

    def died(self, worker: Worker, greeted: bool) -> None:
        """Replace a warm worker that died, but never in a loop: after STANDBY_DEATHS in a row,
        keep none until a generation next starts well."""
        self._deaths += 1
        if self._deaths >= STANDBY_DEATHS:
            if self._deaths == STANDBY_DEATHS:
                self._context.out.log(
                    logging.WARNING,
                    f"The warm worker died {STANDBY_DEATHS} times in a row; keeping none until the app "
                    "next starts well (if preloading something kills it, try --no-preload).",
                )
            return
        if not greeted and worker.preloaded:
            self._context.out.log(
                logging.WARNING, "The warm worker died while preloading; the next one will not preload."
            )
        self.ensure(preload=greeted and self._deaths < 2)

    def started_well(self) -> None:
        """A healthy generation: standby deaths are forgiven."""
        self._deaths = 0

    def learn(self, modules: tuple[str, ...]) -> None:
        """Installed modules a generation imported: the next standby preloads them too."""
        known = set(self.preload) | self._not_preloadable
        for name in modules:
            if name not in known:
                known.add(name)
                self.preload.append(name)

    def preloads_failed(self, reported: tuple[tuple[str, str], ...]) -> None:
        """Never preload these again; said once a run (a warning), later ones at debug level:
        a framework whose models need its settings fails alike in a dozen modules."""
        # each module once: a worker's line may name one twice, and it is dropped only once
        failed = list({m: error for m, error in reported if m in self.preload}.items())
        if not failed:
            return
        for module, _ in failed:
            self.preload.remove(module)
            self._not_preloadable.add(module)
        (module, error), others = failed[0], [name for name, _ in failed[1:]]
        named = ", ".join(map(repr, others[:3])) + (", …" if len(others) > 3 else "")
        more = f", and {len(others)} more ({named}); they are" if others else "; it is"
        self._context.out.log(
            logging.DEBUG if self._said_preload_failed else logging.WARNING,
            f"Preloading {module!r} failed ({error}){more} imported with the app instead.",
        )
        self._said_preload_failed = True
