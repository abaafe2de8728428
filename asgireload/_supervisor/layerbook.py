"""The project layers' decisions: which modules a layer holds, and whether it still fits. No I/O.

A project layer (`_worker/layer.py`) is a template forked from the base template that has also
imported the project modules the likely next edits do not touch. A worker forked from it runs
only the rest of the app's import. What it holds (`plan`): every project module of the last
generation's import graph except those that must run again when a likely-edited file changes
(the file's modules and, transitively, their importers; the app's module always), and except
the modules a layer found unsafe to hold (a thread, a process, a descriptor left open at import)
or could not import, with their importers too. Likely edited: the files modified in the work
tree when the server started, and every file changed since.

A layer fits while no file it holds changed. It is checked against the scanner's view when it
says what it holds (the stat it saw when it read each file) and at every change reported since;
one that does not fit never forks again (`LayerLaunchs` retires it), forks come from the base
template (a reload no slower than without layers), and a fitting one is prepared next. A change
to a file that is no module (a data file, a template read at import) makes every layer unfit:
what a held module read from it at import may be out of date.

Django (`django`): when the app's import ran `django.setup()`, a layer whose plan holds the
settings module and every project module the set-up ran runs the set-up itself; those modules are
held even when edited before (every model is imported by the set-up: a layer leaving one out holds
none), except the files of the last change. A plan that cannot run it leaves them all out.

The standby: a worker forked from a layer that no longer fits is replaced before it loads; one
forked from the base template is replaced once when a fitting layer is ready (`standby_unfit`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Iterable

from .importgraph import DjangoSetup, ImportGraph

Stat = tuple[int, int, int] | None  # (mtime_ns, size, ino) as the scanner keeps it; None: missing
FROM_BASE = 0  # forked_from: the base template
MAX_LOST = 3  # layers that die before saying what they hold: then no more layers
LIKELY_KEPT = 32  # changed files kept as likely edited, the latest (a checkout's hundreds are not)


class LayerStage(enum.Enum):
    PREPARING = "preparing"  # forked, importing what it holds
    READY = "ready"  # said what it holds: forks while it fits
    RETIRED = "retired"  # does not fit (or is replaced): forks no more


@dataclasses.dataclass
class LayerRecord:
    id: int  # negative: never a base template's id
    base: int  # the base template it was forked from
    order: tuple[str, ...]  # what it was asked to hold, in the order the worker ran them
    stage: LayerStage = LayerStage.PREPARING
    held: frozenset[str] = frozenset()  # what it holds (said once ready)
    files: dict[str, Stat] = dataclasses.field(default_factory=dict)  # held file -> stat it saw
    unfit: str | None = None  # why it does not fit any more
    offered: bool = False  # a standby from the base template was replaced once for it
    django: DjangoSetup | None = None  # it runs django.setup() before what it holds


class LayerBook:
    """Every decision about project layers; `LayerLaunchs` (layerlaunch.py) carries them out."""

    def __init__(self, likely: Iterable[str] = ()) -> None:
        self.likely: set[str] = set(likely)  # files the next edits likely touch
        self._changed: list[str] = []  # the files changed, oldest first (at most LIKELY_KEPT)
        self.last_changed: set[str] = set()  # the files of the last change
        self.refused: dict[str, str] = {}  # module -> why no layer holds it (and its importers)
        self.layers: dict[int, LayerRecord] = {}  # not yet gone
        self.forked_from: dict[int, int] = {}  # worker id -> the layer it was forked from (or FROM_BASE)
        self._next_id = 0
        self.log: list[tuple[int, str]] = []  # what to say, taken by the caller
        self.retiring: list[int] = []  # layers found unfit: to retire, taken by the caller
        self.lost = 0  # layers that died importing (a crash at import would crash every one)
        self.django_refused: str | None = None  # why no layer runs django.setup() any more
        self.django_skipped: str | None = None  # why the last plan's layer does not run it

    # ---------------------------------------------------------------- what a layer holds

    def plan(self, graph: ImportGraph) -> list[str]:
        """The modules the next layer holds, in the order the worker ran them."""
        setup = self._django_setup_files(graph)
        refused = {m: why for m, why in self.refused.items() if graph.files.get(m) not in setup}
        refused_files = {graph.files[m] for m in refused if m in graph.files}
        excluded = graph.must_run_again((self.likely - setup) | refused_files)
        excluded |= self._refused_importers(graph, refused)
        if (
            graph.django is not None
            and self.django(graph, (m for m in graph.files if m not in excluded)) is None
        ):
            # no set-up in the layer: what it ran cannot be imported before it (a model)
            ran = graph.django.modules | {graph.django.settings}
            excluded |= graph.must_run_again({graph.files[m] for m in ran if m in graph.files})
        return [m for m in graph.files if m not in excluded]

    def _django_setup_files(self, graph: ImportGraph) -> set[str]:
        """The files of what django.setup() runs that a layer holds though they were edited (a
        models.py): every model is imported by the setup, so a layer leaving one out holds none;
        one that holds them costs a reload as slow as without a layer when one of them changes
        again, and makes every other edit fast. The files of the last change are left out (edited
        again, likely), and so are refusals by a layer that ran no setup (a model cannot import)."""
        setup = graph.django
        if setup is None or self.django_refused is not None:
            return set()
        files = {graph.files[m] for m in setup.modules | {setup.settings} if m in graph.files}
        return files - self.last_changed

    def _refused_importers(self, graph: ImportGraph, refused: dict[str, str]) -> set[str]:
        """A refused module that is not in the graph by its own file (imported under two names)."""
        found: set[str] = set()
        pending = [m for m in refused if m in graph]
        while pending:
            module = pending.pop()
            if module not in found:
                found.add(module)
                pending.extend(graph.importers_of(module))
        return found

    def django(self, graph: ImportGraph, order: Iterable[str]) -> DjangoSetup | None:
        """The Django set-up a layer of this plan runs: the app's, if the plan holds the settings
        module and every project module django.setup() ran (else the layer would run one that must
        run again); None if the app sets no Django up, or a layer's set-up went wrong once."""
        setup = graph.django
        if setup is None or self.django_refused is not None:
            return None
        held = set(order)
        missing = sorted(({setup.settings} | setup.modules) - held)
        self.django_skipped = f"{missing[0]} must run again" if missing else None
        return None if missing else setup

    def wanted(self, graph: ImportGraph | None, base: int) -> LayerRecord | None:
        """A layer to launch from `base` now, or None: one with this plan exists, or it would hold
        nothing. A preparing layer with an older plan is left to finish (retired once unfit)."""
        if graph is None or not graph or self.lost >= MAX_LOST:
            return None
        order = tuple(self.plan(graph))
        if not order:
            return None
        wanted = set(order)
        django = self.django(graph, order)
        for record in self.layers.values():
            # one that holds nothing this plan leaves out will do (the plan may only have grown by
            # a module imported since, while serving)
            if (
                record.base == base
                and record.stage is not LayerStage.RETIRED
                and wanted.issuperset(record.order)
                and _same_setup(record.django, django)
            ):
                return None
        self._next_id -= 1
        record = LayerRecord(self._next_id, base, order, django=django)
        self.layers[record.id] = record
        left_out = [m for m in graph.files if m not in wanted]
        self.log.append(
            (
                logging.DEBUG,
                f"Preparing a project layer of {len(order)} project modules"
                f"{_django_said(django, self.django_skipped if graph.django else None)}; it leaves out "
                f"{len(left_out)}: {', '.join(left_out[:8])}{' and more' if len(left_out) > 8 else ''}.",
            )
        )
        return record

    # ---------------------------------------------------------------- what layers say

    def ready(
        self, layer: int, held: Iterable[str], files: dict[str, Stat], view: Callable[[str], Stat]
    ) -> None:
        """It imported what it holds, having seen these stats: it fits if the scanner sees the same."""
        record = self.layers.get(layer)
        if record is None or record.stage is not LayerStage.PREPARING:
            return
        record.stage, record.held, record.files = LayerStage.READY, frozenset(held), dict(files)
        if (changed := _changed_file(record, view)) is not None:
            self._unfit(record, f"{changed} changed while it imported it")
            return
        self.log.append(
            (logging.DEBUG, f"The project layer is ready: it holds {len(record.held)} project modules.")
        )
        for other in self.layers.values():  # the newest ready one is the one to fork from
            if other is not record and other.base == record.base and other.stage is LayerStage.READY:
                self._unfit(other, "a newer project layer is ready")

    def refuse(self, layer: int, module: str, why: str, unsafe: bool) -> None:
        """It stopped at `module` (unsafe to fork with, or unfit to hold): no layer holds it."""
        if module not in self.refused:
            self.refused[module] = why
            level = logging.INFO if unsafe else logging.DEBUG
            self.log.append((level, f"The project layer does not hold {module}: {why}."))
        self.layers.pop(layer, None)  # (it exits by itself: not lost)

    def refuse_django(self, layer: int, why: str) -> None:
        """Its django.setup() went wrong: no layer runs it again (the project reloads as without)."""
        if self.django_refused is None:
            self.django_refused = why
            said = f"The project layer does not run django.setup() any more: {why}."
            self.log.append((logging.DEBUG, said))
        self.layers.pop(layer, None)

    def django_seen(self, setup: DjangoSetup) -> None:
        """A worker's app set Django up so: a layer that set it up otherwise does not fit."""
        for record in list(self.layers.values()):
            if record.stage is LayerStage.RETIRED or record.django is None:
                continue
            if not record.django.same_setup(setup):
                self._unfit(record, f"the app's import now sets Django up otherwise ({setup.settings})")

    def gone(self, layer: int) -> None:
        record = self.layers.pop(layer, None)
        if record is not None and record.stage is LayerStage.PREPARING:
            self.lost += 1
            if self.lost == MAX_LOST:
                self.log.append((logging.DEBUG, f"{MAX_LOST} project layers died importing: no more layers."))

    # ---------------------------------------------------------------- fitting

    def changed(self, paths: Iterable[str]) -> None:
        """Files changed: they are likely edited again; the layers they make unfit are retired."""
        paths = list(paths)
        edited = [p for p in dict.fromkeys(paths) if p.endswith(".py")]
        self.likely.update(edited)
        self._changed = [p for p in self._changed if p not in set(edited)] + edited
        while len(self._changed) > LIKELY_KEPT:  # a layer holds them again, until edited again
            self.likely.discard(self._changed.pop(0))
        self.last_changed = set(paths)
        data = [p for p in paths if not p.endswith(".py")]
        for record in list(self.layers.values()):
            if record.stage is LayerStage.RETIRED:
                continue
            if data:
                self._unfit(record, f"{data[0]} changed (no module: a held module may have read it)")
            elif record.stage is LayerStage.READY:
                hit = next((p for p in paths if p in record.files), None)
                if hit is not None:
                    self._unfit(record, f"it holds {hit}, which changed")
            # (one still importing is checked against the scanner's view when it is ready)

    def retire_all(self, why: str) -> None:
        for record in self.layers.values():
            if record.stage is not LayerStage.RETIRED:
                self._unfit(record, why)

    def _unfit(self, record: LayerRecord, why: str) -> None:
        record.stage, record.unfit = LayerStage.RETIRED, why
        self.retiring.append(record.id)
        self.log.append((logging.DEBUG, f"The project layer does not fit any more: {why}."))

    def other_bases(self, base: int) -> None:
        """Layers forked from another base template than `base` (replaced) are retired."""
        for record in self.layers.values():
            if record.base != base and record.stage is not LayerStage.RETIRED:
                self._unfit(record, "its base template was replaced")

    def fitting(self, base: int, view: Callable[[str], Stat]) -> LayerRecord | None:
        """The ready layer of `base` whose held files are all as it saw them (the newest first)."""
        for record in sorted(self.layers.values(), key=lambda r: r.id):
            if record.base != base or record.stage is not LayerStage.READY:
                continue
            changed = _changed_file(record, view)
            if changed is None:
                return record
            self._unfit(record, f"it holds {changed}, which changed")
        return None

    def standby_unfit(self, worker: int, view: Callable[[str], Stat] | None = None) -> str | None:
        """Why this standby must be replaced before it loads, or None. With `view` (before a load)
        its layer's files are looked at again: a data file it read changes with no report."""
        layer = self.forked_from.get(worker)
        if layer is None:
            return None  # spawned: no layer could have held anything
        if layer != FROM_BASE:
            record = self.layers.get(layer)
            if view is not None and record is not None and record.stage is LayerStage.READY:
                changed = _changed_file(record, view)
                if changed is not None:
                    self._unfit(record, f"it holds {changed}, which changed")
            if record is None or record.stage is not LayerStage.READY:
                why = record.unfit if record is not None and record.unfit else "it is gone"
                return f"the project layer it was forked from does not fit: {why}"
            return None
        for record in self.layers.values():
            if record.stage is LayerStage.READY and not record.offered:
                record.offered = True
                return "a project layer is ready"
        return None

    def held_by(self, worker: int) -> int:
        """How many project modules this worker found imported (its layer's)."""
        record = self.layers.get(self.forked_from.get(worker, FROM_BASE))
        return len(record.held) if record is not None else 0

    def take_log(self) -> list[tuple[int, str]]:
        out, self.log = self.log, []
        return out

    def take_retiring(self) -> list[int]:
        out, self.retiring = self.retiring, []
        return out


def _same_setup(one: DjangoSetup | None, other: DjangoSetup | None) -> bool:
    if one is None or other is None:
        return one is other
    return one.same_setup(other)


def _django_said(django: DjangoSetup | None, skipped: str | None) -> str:
    if django is not None:
        return f" after django.setup() with {django.settings}"
    return f" without django.setup() ({skipped})" if skipped else ""


def _changed_file(record: LayerRecord, view: Callable[[str], Stat]) -> str | None:
    """A file the layer read whose stat is not the one it saw (or that it could not stat), or None."""
    return next((p for p, stat in record.files.items() if stat is None or view(p) != stat), None)
