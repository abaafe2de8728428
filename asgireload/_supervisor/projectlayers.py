"""The project layers, supervisor side: launched from the base template, forked from while they fit.

layerbook.py decides (what a layer holds, whether it fits, which standby to replace); this
module carries that out: it asks the base template for a layer (a `layer` request carrying the
layer's own channel; the base template forks it and reaps it like a worker), sends the layer
the modules to hold, reads what it says (`layered`, or `unsafe`/`unfit` naming a module), forks
workers from a fitting one with the fork server's own request (`ForkServer._fork_from`), and
retires layers that do not fit any more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _protocol as protocol
from .. import _wire
from .._listing import listing_key
from . import templatespawn
from .children import ForkedChild, end_forker
from .debugging import DebugTerminal
from .importgraph import ImportGraph
from .layerbook import FROM_BASE, LayerBook, LayerRecord, LayerStage, Stat
from .machineevents import FileChanged, FilesReported, ReloadRequested, StandbyUnfit, Stop
from .templatelife import FORK_WAIT
from .templatetable import Stage
from .workers import Emit, SpawnError, WorkerProcess

if TYPE_CHECKING:
    from .forkserver import ForkServer, TemplateHandle
    from .machine import Machine
    from .scanner import Scanner

logger = logging.getLogger("asgireload")


def _layout(settings: protocol.Settings) -> tuple[object, ...]:
    """What a layer's imports depend on besides the env: a worker wanting another is not its."""
    return (settings.app, settings.app_dir, settings.roots, settings.includes, settings.excludes)


class LayerHandle:
    """One layer process as the fork server holds it (the attributes a TemplateHandle has)."""

    def __init__(self, layer_id: int, child: ForkedChild, channel: socket.socket) -> None:
        self.id = layer_id
        self.child = child
        self.pid = child.pid
        self.channel = channel
        self.receiver = _wire.LineReceiver(channel, max_line=protocol.TRUSTED_MAX_LINE)
        self.answers: collections.deque[asyncio.Future[ForkedChild]] = collections.deque()
        self.forked: dict[int, ForkedChild] = {}
        self.sending: asyncio.Task[None] | None = None
        self.stopped = False  # held back while a generation loads (see ProjectLayers.hold_back)

    def end(self) -> None:
        """Kill the layer alone (its workers lead sessions of their own); close its channel."""
        end_forker(self, SpawnError("the project layer ended"))


class ProjectLayers:
    """Launches layers from the fork server's base template and forks from those that fit."""

    def __init__(self, server: ForkServer) -> None:
        self.server = server
        self.book = LayerBook()
        self._asked_git = False
        self._wanted: protocol.Settings | None = None  # the last fork's settings
        self.handles: dict[int, LayerHandle] = {}
        self.graph: Callable[[], ImportGraph | None] = lambda: None  # the newest generation's
        self.fingerprints: dict[str, int] = {}  # module -> its plain values when a worker last ran it
        self.view: Callable[[str], Stat] = _disk_stat  # the scanner's, once there is one
        self.on_ready: Callable[[], None] = lambda: None  # a layer is ready: check the standby

    def _base(self, wanted: protocol.Settings) -> TemplateHandle | None:
        """The base template a layer of these settings comes from, if it is warm and alike."""
        record = self.server.life.current_record
        if record is None or record.stage is not Stage.WARM or dict(record.settings.env) != dict(wanted.env):
            return None
        handle = self.server._templates.get(record.id)
        if handle is None or not handle.child.alive or _layout(record.settings) != _layout(wanted):
            return None
        if templatespawn.changed_variable(handle.child.process) is not None:
            return None
        return handle

    async def fork(
        self, worker_id: int, wanted: protocol.Settings, emit: Emit, terminal: DebugTerminal | None
    ) -> WorkerProcess | None:
        """A worker forked from a fitting layer; None: the base template's to fork (no layer
        fits, or the base template is not warm, or was started with other settings)."""
        self.book.forked_from[worker_id] = FROM_BASE
        self._wanted = wanted
        base = self._base(wanted)
        if base is None:
            return None
        if not self._asked_git:  # modified in the work tree: likely edited from the first save
            self._asked_git = True
            self.book.likely.update(likely_edited(wanted.app_dir))
        self.book.other_bases(base.id)
        record = self.book.fitting(base.id, self.view)
        self._carry_out()
        handle = self.handles.get(record.id) if record is not None else None
        if record is None or handle is None or not handle.child.alive:
            return None
        process = await self.server._fork_from(handle, worker_id, wanted, FORK_WAIT, emit, terminal)  # type: ignore[arg-type]
        if process is not None:
            self.book.forked_from[worker_id] = record.id
            said = f"pid {handle.pid}, {len(record.held)} project modules"
            logger.debug("Worker %d is forked from the project layer (%s).", worker_id, said)
        return process

    def hold_back(self, loading: bool) -> None:
        """While a generation loads, the layers still importing are stopped (SIGSTOP), so that the
        reload has the cores to itself; they go on (SIGCONT) once nothing loads."""
        for handle in self.handles.values():
            record = self.book.layers.get(handle.id)
            stop = loading and record is not None and record.stage is LayerStage.PREPARING
            if stop != handle.stopped and handle.child.alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(handle.pid, signal.SIGSTOP if stop else signal.SIGCONT)
                handle.stopped = stop

    def prepare(self) -> None:
        """Launch the layer the newest graph calls for, if there is none like it yet (called once
        no generation loads: a layer importing the project beside a reload slows the reload)."""
        if self._wanted is not None:
            self._prepare(self._base(self._wanted))

    def _prepare(self, base: TemplateHandle | None) -> None:
        if base is not None and (new := self.book.wanted(self.graph(), base.id)) is not None:
            self._carry_out()
            self.server._run(self._launch(base, new))

    def held_by(self, worker_id: int) -> int:
        return self.book.held_by(worker_id)

    def changed(self, paths: list[str]) -> None:
        """Files changed (the scanner's report): layers holding them are retired."""
        self.book.changed(paths)
        self._carry_out()

    def retire_all(self, why: str) -> None:
        """No layer forks again (a worker forked from one found what it holds out of date)."""
        self.book.retire_all(why)
        self._carry_out()

    def standby_unfit(self, worker_id: int, before_a_load: bool = False) -> str | None:
        why = self.book.standby_unfit(worker_id, self.view if before_a_load else None)
        self._carry_out()
        return why

    def _carry_out(self) -> None:
        for level, message in self.book.take_log():
            logger.log(level, "%s", message)
        for layer_id in self.book.take_retiring():
            handle = self.handles.get(layer_id)
            if handle is None:
                continue
            try:
                _wire.send(handle.channel, {"type": "retire"})  # exits once its workers have
            except OSError:
                self._end(handle)

    async def _launch(self, base: TemplateHandle, record: LayerRecord) -> None:
        """Ask the base template to fork the layer, then send it what to hold."""
        parent, child = socket.socketpair()
        answer: asyncio.Future[ForkedChild] = asyncio.get_running_loop().create_future()
        try:
            if base.sending is not None:
                await asyncio.shield(base.sending)
            base.answers.append(answer)
            _wire.send(base.channel, {"type": "layer"}, [child.fileno()])
            async with asyncio.timeout(FORK_WAIT):
                process = await answer
        except (OSError, SpawnError, TimeoutError) as exc:
            parent.close()
            answer.cancel()  # its answer, if it still comes, kills the layer
            logger.debug("The project layer could not be forked: %s.", exc or "no answer")
            self.book.gone(record.id)
            return
        finally:
            child.close()
        handle = LayerHandle(record.id, process, parent)
        self.handles[record.id] = handle
        parent.setblocking(False)
        asyncio.get_running_loop().add_reader(parent.fileno(), self._readable, handle)
        graph = self.graph()
        env = sorted(graph.env_set) if graph is not None else []
        prints = {name: self.fingerprints[name] for name in record.order if name in self.fingerprints}
        hold: dict[str, Any] = {
            "type": "hold",
            "modules": list(record.order),
            "env": env,
            "fingerprints": prints,
        }
        if record.django is not None:
            hold["django"] = {"settings": record.django.settings, "env": record.django.env}
        line = _wire.frame(hold)
        handle.sending = self.server._run(self.server._send(handle, line))  # type: ignore[arg-type]
        self.server._run(self._watch(handle))

    def _readable(self, handle: LayerHandle) -> None:
        try:
            messages = handle.receiver.receive()
        except BlockingIOError:
            return
        except (OSError, _wire.ProtocolError) as exc:
            logger.debug("The project layer's channel broke: %s.", exc)
            self._end(handle)
            return
        if messages is None:
            self._end(handle)
            return
        for message, fds in messages:
            if not self._take(handle, message, fds):
                for fd in fds:
                    os.close(fd)
                self._end(handle)
                return

    def _take(self, handle: LayerHandle, message: dict[str, Any], fds: list[int]) -> bool:
        kind = message.get("type")
        if kind == "layered" and not fds:
            self.book.ready(
                handle.id, _names(message.get("modules")), _stats(message.get("files")), self.view
            )
            self._carry_out()
            record = self.book.layers.get(handle.id)
            if record is not None and record.stage is LayerStage.READY:
                self.on_ready()
            return True
        if kind in ("unsafe", "unfit") and not fds:
            module, why = str(message.get("module")), str(message.get("why"))
            if message.get("django") is True:
                self.book.refuse_django(handle.id, why)
            else:
                self.book.refuse(handle.id, module, why, unsafe=kind == "unsafe")
            self._carry_out()
            self.on_ready()  # (the shell prepares another without it, once nothing loads)
            return True
        return self.server._take(handle, message, fds)  # type: ignore[arg-type]

    async def _watch(self, handle: LayerHandle) -> None:
        await handle.child.wait()
        self._end(handle)

    def _end(self, handle: LayerHandle) -> None:
        if self.handles.pop(handle.id, None) is not None:
            handle.end()
        self.book.gone(handle.id)

    def close(self) -> None:
        for handle in list(self.handles.values()):
            self._end(handle)
            handle.child.release()


def _names(value: object) -> list[str]:
    return [str(name) for name in value] if isinstance(value, list) else []


def _stats(value: object) -> dict[str, Stat]:
    """`[[path, mtime_ns, size, ino], ...]` as {path: (mtime_ns, size, ino) or None}."""
    found: dict[str, Stat] = {}
    for entry in value if isinstance(value, list) else []:
        if isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str):
            mtime, size, ino = entry[1:]
            ok = all(isinstance(x, int) for x in (mtime, size, ino))
            found[entry[0]] = (mtime, size, ino) if ok else None
    return found


def view_of(scanner: Scanner) -> Callable[[str], Stat]:
    """A file's stat as the scanner knows it; a file it does not watch (a data file or a module
    from PYTHONPATH that a held module read) as it is on disk now."""

    def view(path: str) -> Stat:
        if path.endswith(os.sep):  # a folder a held module imported from: its module names
            return listing_key(path)
        return scanner.stat_of(path) if path in scanner else _disk_stat(path)

    return view


def _disk_stat(path: str) -> Stat:
    from .includes import stat_key

    return stat_key(path)


def likely_edited(folder: str) -> list[str]:
    """The files modified in the git work tree of `folder` (none if git is not there)."""
    import subprocess

    try:
        result = subprocess.run(
            ["git", "-C", folder, "status", "--porcelain", "-z", "--untracked-files=no"],
            capture_output=True,
            timeout=2.0,
            check=False,
        )
        top = subprocess.run(
            ["git", "-C", folder, "rev-parse", "--show-toplevel"],
            capture_output=True,
            timeout=2.0,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if result.returncode != 0 or top.returncode != 0:
        return []
    root = top.stdout.decode(errors="replace").strip()
    found = []
    entries = iter(result.stdout.decode(errors="replace").split("\0"))
    for entry in entries:
        if entry[:1] in ("R", "C"):
            next(entries, None)  # a rename or copy is followed by its old path, with no status
        if len(entry) > 3 and entry[3:].endswith(".py"):
            found.append(os.path.join(root, entry[3:]))
    return found


# ------------------------------------------------------------------ the shell's hooks


def connect(
    layers: ProjectLayers | None,
    machine: Machine,
    view: Callable[[str], Stat],
    nudge: Callable[[StandbyUnfit], None],
) -> None:
    """Give the layers the newest import graph, the scanner's view, and a way to ask the shell
    to look at the standby again (a layer is ready)."""
    if layers is None:
        return

    def newest_graph() -> ImportGraph | None:
        serving = machine.serving
        if serving is not None and serving.imports:
            return serving.imports
        return machine.reporter.imports or None

    layers.graph = newest_graph
    layers.view = view
    layers.on_ready = lambda: nudge(StandbyUnfit(""))


def django_seen(layers: ProjectLayers | None, event: object) -> None:
    """A worker said how its app set Django up: layers that set it up otherwise are retired."""
    if layers is not None and isinstance(event, FilesReported) and event.django is not None:
        layers.book.django_seen(event.django)
        layers._carry_out()


def prepare_when_idle(layers: ProjectLayers | None, machine: Machine) -> None:
    """After each of the machine's events: layers importing wait while a generation loads; once
    none loads, the layer the newest graph calls for is launched."""
    if layers is None or machine.stopped:
        return
    layers.hold_back(machine.loading is not None)
    if machine.loading is None:
        layers.prepare()


def standby_check(layers: ProjectLayers | None, machine: Machine, event: object) -> StandbyUnfit | None:
    """The event to feed the machine before `event`: replace the standby, which a layer that
    no longer fits made (or which a ready layer would beat); None if it is fine."""
    if layers is None or machine.stopped or isinstance(event, Stop) or (standby := machine.standby) is None:
        return None
    why = layers.standby_unfit(standby.id, before_a_load=isinstance(event, (FileChanged, ReloadRequested)))
    return StandbyUnfit(why) if why is not None else None
