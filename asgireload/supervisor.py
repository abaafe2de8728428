"""The supervisor: one listening socket, one state machine of worker generations.

Every event (a worker's message, its exit, a file change, a manual reload, a crash-loop
timer) goes through one queue and is handled by one task, so the state below changes in one
place, one event at a time:

    standby ──load──▶ loading ──ready──▶ serving ──drain──▶ draining ──exit──▶ gone
                         │                  │
                         └─failed / crash───┴──▶ error page (a worker serving the traceback)

A generation is ready before the one it replaces is told to drain (in sequential mode the
old one is drained first), so no request finds nobody listening: connections that arrive
while no worker accepts wait in the kernel's backlog of the socket the supervisor holds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Literal

from . import _editable, _handoff, _sockets, _workers, protocol
from ._preflight import preflight
from ._workers import SpawnError, WorkerProcess, describe_exit
from .config import Config
from .envfile import EnvFileError, read_env_file
from .errors import ReloadTimeout, StartupError
from .events import EventStream, ReloadEvent, State
from .scanner import Scanner, stat_key
from .watchfilter import WatchFilter

logger = logging.getLogger("asgireload")

BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
DRAINING_DEADLINE = 1.0  # seconds an old generation has to stop answering before we announce anyway
PACKAGES_POLL = 30.0  # seconds between full scans of preloaded packages (file events are the hint)
STANDBY_DEATHS = 3  # warm workers dying in a row before we stop replacing them (no hot loop)
STANDBY_WAIT = 2.0  # seconds a reload waits for a warm worker still preloading, then starts a cold one
SLOW_START_REPORT = 5.0  # seconds before a generation that has not said ready is reported
_WITH_APP = ("loading", "serving", "draining")  # worker states in which it holds the app (or its page)


@dataclasses.dataclass
class _Pending:
    changed: tuple[str, ...]
    since: float  # wall-clock time of the change
    reason: str
    retried: bool = False  # it failed once beside an older generation, and is tried again alone
    # where a reload's time goes, for the debug log: wall-clock times of each step
    steps: dict[str, float] = dataclasses.field(default_factory=dict)

    def mark(self, step: str) -> None:
        self.steps.setdefault(step, time.time())


def relative(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


class Supervisor:
    """Runs generations of workers for one Config. Use it through serve() or Reloader."""

    def __init__(self, config: Config) -> None:
        self.config = config
        editable = _editable.editable_roots(config.app_dir) if config.watch_editable else []
        self.project = WatchFilter(
            (*config.watch_roots, *editable), config.reload_includes, config.reload_excludes
        )
        if editable:
            logger.info(
                "Also watching packages installed in editable mode from this checkout: %s "
                "(--no-watch-editable turns this off).",
                ", ".join(relative(p) for p in editable),
            )
        self._stopped = False
        self.generation = 0
        self.url = ""
        self.failure: dict[str, Any] | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=20000)
        self._queue: asyncio.Queue[_workers.Event] = asyncio.Queue()
        self._listener: Any = None
        self._scanner: Scanner | None = None
        self._packages: Scanner | None = None  # installed packages the standby preloads
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: set[WorkerProcess] = set()
        self._current: WorkerProcess | None = None
        self._loading: WorkerProcess | None = None
        self._standby: WorkerProcess | None = None
        self._pending: _Pending | None = None
        # A load that waits until no other generation's app runs (sequential mode, or a retry).
        self._after_exit: _Pending | None = None
        self._exclusive = config.sequential  # becomes True when the app proves it cannot overlap
        self._retry_pending: _Pending | None = None  # a reload to try again when the timer fires
        self._spawned = 0
        self._crashes = 0
        self._standby_deaths = 0  # warm workers that died after saying hello, in a row
        self._retry: asyncio.TimerHandle | None = None
        self._preload: list[str] = []  # third-party modules the standby imports ahead of time
        self._not_preloadable: set[str] = set()
        self._settled = asyncio.Condition()
        self._notifying: set[asyncio.Task[None]] = set()
        self._fd_limit: int | None = None
        self._outcomes: dict[int, ReloadEvent] = {}
        self._subscribers: list[asyncio.Queue[ReloadEvent | None]] = []
        self._stopping = False
        self._failed: tuple[int, _Pending] | None = None  # a failure not yet reported as an outcome
        self._held = _handoff.Held()  # handed-over connections waiting for a generation to serve them

    # ---------------------------------------------------------------- public surface

    @property
    def state(self) -> State:
        """starting, ready, reloading (a healthy generation serves, a newer one loads), failed
        (the error page serves), or stopped."""
        if self._stopped:
            return "stopped"
        if not self._outcomes:
            return "starting"
        current = self._current
        healthy = current is not None and current.alive and not current.error_page
        if self._loading is not None and (healthy or self.failure is None):
            return "reloading"
        if healthy:
            return "ready"
        return "reloading" if self.failure is None else "failed"

    @property
    def pids(self) -> dict[str, int]:
        """The workers by role: serving, loading, standby, and draining (an older generation)."""
        roles = {"serving": self._current, "loading": self._loading, "standby": self._standby}
        pids = {role: w.pid for role, w in roles.items() if w is not None and w.alive}
        for worker in self._workers:  # until its exit is handled, and all it started has ended
            if worker.state == "draining":
                pids["draining"] = worker.pid
        return pids

    @property
    def sockname(self) -> Any:
        return self._listener.getsockname() if self._listener is not None else None

    @property
    def watched(self) -> Scanner | tuple[()]:
        """The watched files (supports `in` and `len`)."""
        return self._scanner if self._scanner is not None else ()

    async def start(self, timeout: float | None = None) -> None:
        """Check, bind, start generation 1 and wait for its outcome (ready or failed).

        Raises StartupError (with nothing left bound or running) for a mistake in the command:
        a folder or module that does not exist, a port in use, an attribute that is not an app.
        """
        # connections held across a reload must not starve the next spawn; the app gets the old limit
        self._fd_limit = _handoff.raise_fd_limit()
        preflight(self.config)
        self._listener = _sockets.bind(self.config)
        self.url = _sockets.describe(self._listener, self.config)
        if not self.config.is_loopback and self.config.show_errors is None:
            logger.warning(
                "Listening on %s, not only on this machine: the error page will hide tracebacks and "
                "file paths. Pass --show-errors to show them anyway.",
                self.url,
            )
        try:
            self._scanner = Scanner(
                self._on_change,
                interval=self.config.poll_interval,
                includes=self.project if self.config.reload_includes else None,
                force_polling=self.config.force_polling,
            )
            self._tasks.append(asyncio.create_task(self._handle_events(), name="asgireload-supervisor"))
            self._tasks.append(asyncio.create_task(self._scanner.run(), name="asgireload-scanner"))
            if self.config.preload and self.config.standby:
                self._packages = Scanner(
                    self._on_packages_change,
                    interval=PACKAGES_POLL,
                    force_polling=self.config.force_polling,
                    fast_poll=None,  # an upgrade is found by the next full scan: no fast polling
                )
                self._tasks.append(asyncio.create_task(self._packages.run(), name="asgireload-packages"))
            if self.config.env_file is not None:
                self._scanner.watch([(self.config.env_file, stat_key(self.config.env_file))])
            await self._emit_wait(("reload", "start"))
            first = await self.wait_for_generation(1, timeout=timeout)
            if first.outcome == "failed" and (self.failure or {}).get("kind") == "usage":
                raise StartupError(first.summary)
        except BaseException:
            await stop_completely(self, force=True)
            raise

    async def stop(self, *, force: bool = False) -> None:
        """Drain every worker (kill at the deadline, or at once with force) and release everything."""
        if self._stopped:
            return
        self._stopping = True
        if self._retry is not None:
            self._retry.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        workers = [w for w in self._workers if w.alive]
        for worker in workers:
            if not force and worker.state == "serving":
                worker.state = "draining"
                worker.send({"type": protocol.DRAIN, "timeout": self.config.drain_timeout})
            elif not force and worker.state == "draining" and worker.was_ready:
                pass  # already finishing its requests
            else:
                worker.kill()
        deadline = self.config.drain_timeout + 1.0
        try:
            async with asyncio.timeout(deadline if not force else 2.0):
                await asyncio.gather(*(w.wait_exit() for w in workers))
        except TimeoutError:
            survivors = [w for w in workers if w.process.returncode is None]
            logger.warning("Killing %d worker(s) that did not stop within %.1f s.", len(survivors), deadline)
        for worker in workers:
            worker.kill()  # the whole process group: children the app started go too
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.gather(*(w.wait_exit() for w in workers))
        for worker in list(self._workers):
            worker.close()
            await asyncio.gather(*worker.tasks, return_exceptions=True)
        self._workers.clear()
        self._held.close()
        _handoff.restore_fd_limit(self._fd_limit)
        if self._listener is not None:
            self._listener.close()
            if self.config.uds is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.config.uds)
        self._stopped = True
        for queue in self._subscribers:
            queue.put_nowait(None)
        async with self._settled:
            self._settled.notify_all()

    def kill_all(self) -> None:
        """Kill every worker now (a second Ctrl-C); stop() then finishes at once."""
        for worker in list(self._workers):
            worker.kill()

    def request_reload(self, reason: str = "requested") -> None:
        self._queue.put_nowait(("reload", reason))

    async def wait_for_generation(self, generation: int, timeout: float | None) -> ReloadEvent:
        """Wait until generation `generation` (or a later one) is ready or has failed."""

        def settled() -> bool:
            return self._stopped or any(g >= generation for g in self._outcomes)

        try:
            async with asyncio.timeout(timeout), self._settled:
                await self._settled.wait_for(settled)
        except TimeoutError:
            raise ReloadTimeout(
                f"generation {generation} did not become ready or fail within {timeout} s "
                f"(the newest is {self.generation}, state {self.state})."
            ) from None
        if not any(g >= generation for g in self._outcomes):
            raise StartupError("the server stopped before that generation settled.")
        return self._outcomes[min(g for g in self._outcomes if g >= generation)]

    def events(self) -> EventStream:
        """Every outcome from now on (subscribed at this call); a stream made after stop() is over."""
        return EventStream(self._subscribers, ended=self._stopped)

    # ---------------------------------------------------------------- event loop

    def _emit(self, event: _workers.Event) -> None:
        self._queue.put_nowait(event)

    async def _emit_wait(self, event: _workers.Event) -> None:
        await self._queue.put(event)

    def _on_change(self, paths: list[str], since: float) -> None:
        self._emit(("changed", tuple(paths), since))

    def _on_packages_change(self, paths: list[str], since: float) -> None:
        self._emit(("packages-changed", tuple(paths)))

    async def _handle_events(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._handle(event)
            except Exception:
                logger.exception("asgireload hit an internal error handling %s; carrying on.", event[0])

    async def _handle(self, event: _workers.Event) -> None:
        kind = event[0]
        if kind == "changed":
            _, paths, since = event
            self._crashes = 0
            if self.config.env_file in paths:
                await self._replace_standby()  # it imported packages under the old values
            pending = _Pending(paths, since, "change")
            pending.mark("detected")
            await self._begin(pending)
        elif kind == "reload":
            await self._begin(_Pending((), time.time(), event[1]))
        elif kind == "retry":
            self._retry = None
            loading, current = self._loading, self._current
            retry, self._retry_pending = self._retry_pending, None
            if loading is not None and loading.error_page:
                self._retry_pending = retry
                self._retry = self._later(BACKOFF_START, ("retry",))  # let the error page come up first
            elif retry is not None and loading is None:
                await self._begin(retry)
            elif loading is None and (current is None or current.error_page):
                await self._begin(_Pending((), time.time(), "restart after a crash"))
        elif kind == "slow":
            worker = event[1]
            if worker is self._loading and worker is not None and worker.alive:
                waited = time.monotonic() - worker.loaded_at
                doing = (
                    "running lifespan start-up" if worker.reported_files else f"importing {self.config.app}"
                )
                logger.warning(
                    "Generation %s is still starting after %.0f s: %s (pid %s).",
                    worker.generation,
                    waited,
                    doing,
                    worker.pid,
                )
                self._later(SLOW_START_REPORT, ("slow", worker))
        elif kind == "message":
            await self._on_message(event[1], event[2])
        elif kind == "garbage":
            worker, reason = event[1], event[2]
            logger.error("Worker %s (pid %s) sent %s; stopping it.", worker.seq, worker.pid, reason)
            worker.kill()
        elif kind == "exited":
            await self._on_exit(event[1], event[2])
        elif kind == "packages-changed":
            names = ", ".join(relative(p) for p in event[1][:3])
            logger.info("Installed packages changed (%s); replacing the warm worker.", names)
            await self._replace_standby()
        elif kind == "standby-late":
            worker = event[1]
            if worker is self._loading and worker is not None and not worker.greeted and worker.alive:
                logger.warning(
                    "The warm worker was not ready %.0f s after the reload began; starting a fresh one.",
                    STANDBY_WAIT,
                )
                self._loading = None
                worker.kill()
                await self._load(self._pending or _Pending((), time.time(), "reload"), cold=True)
        elif kind == "draining-deadline":
            event[1].drained()  # announce the new generation even if the old one is unresponsive
        elif kind == "drain-deadline":
            worker = event[1]
            if worker.alive and worker.state == "draining":
                logger.warning("Worker %s did not finish draining in time; killing it.", worker.seq)
                worker.kill()

    def _later(self, delay: float, event: _workers.Event) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, self._emit, event)

    # ---------------------------------------------------------------- generations

    async def _begin(self, pending: _Pending) -> None:
        """Start the next generation, superseding one that is still loading."""
        if self._stopping:
            return
        if self._after_exit is not None:
            # The older generations are still finishing: fold this change into the load that waits.
            self._after_exit = _merge(self._after_exit, pending)
            return
        if self._loading is not None:
            logger.info("Generation %s is superseded by a newer change.", self._loading.generation)
            stale, self._loading = self._loading, None
            stale.kill()  # it was never told to serve, so it has accepted nothing
            self._settle_failure()  # a superseded generation that had failed did fail
            if self._pending is not None:
                pending = _merge(self._pending, pending)
        if self._exclusive and self._apps_running():
            self._load_when_alone(pending)
            return
        await self._load(pending)

    def _apps_running(self) -> bool:
        """Whether any worker holds an app (loading, serving or draining), as opposed to a standby."""
        return any(w.alive and w.state in _WITH_APP for w in self._workers)

    def _load_when_alone(self, pending: _Pending) -> None:
        """Stop every generation, and load `pending` once the last of them has exited."""
        current, self._current = self._current, None
        if current is not None and current.alive:
            self._drain(current)
        self._after_exit = pending

    async def _load(
        self, pending: _Pending, failure: dict[str, Any] | None = None, cold: bool = False
    ) -> None:
        self.generation += 1
        self._pending = pending
        worker = self._standby if self._standby is not None and self._standby.alive else None
        self._standby = None
        if worker is None or cold:
            if worker is not None:
                worker.kill()
            try:
                worker = await self._spawn(preload=not cold)
            except SpawnError as exc:
                if not cold:
                    logger.error("%s; trying again without preloading.", exc)
                    self.generation -= 1
                    await self._load(pending, failure, cold=True)
                else:
                    self._could_not_start(exc, pending)
                return
        elif not worker.greeted:
            self._later(STANDBY_WAIT, ("standby-late", worker))
        env, env_failure = self._read_env()
        worker.error_page = bool(failure or env_failure)
        pending.mark("load sent")
        worker.load(
            {
                "type": protocol.LOAD,
                "generation": self.generation,
                "env": env,
                "fd_limit": self._fd_limit,  # the soft limit the app would have had (we raised ours)
                "failure": failure or env_failure,
            }
        )
        self._loading = worker
        self._later(SLOW_START_REPORT, ("slow", worker))
        if env_failure is not None:
            worker.failed = True
            self._record_failure(worker, env_failure)

    def _could_not_start(self, exc: SpawnError, pending: _Pending) -> None:
        """No worker could be started at all: say so, show it where a page serves, try again later."""
        failure = {"kind": "spawn", "summary": f"{exc}.", "traceback": "", "files": []}
        self.failure = failure
        logger.error("Generation %s could not start: %s.", self.generation, exc)
        current = self._current
        if current is not None and current.alive and current.error_page:
            current.send({"type": protocol.FAILURE, "failure": failure})
        self._pending = None
        self._settle(self.generation, "failed", pending, failure)
        self._schedule_retry(pending)

    def _schedule_retry(self, pending: _Pending | None) -> None:
        delay = min(BACKOFF_START * 2**self._crashes, BACKOFF_MAX)
        self._crashes += 1
        logger.warning("Restarting %s in %.1f s.", self.config.app, delay)
        if self._retry is not None:
            self._retry.cancel()
        self._retry_pending = pending
        self._retry = self._later(delay, ("retry",))

    def _read_env(self) -> tuple[dict[str, str], dict[str, Any] | None]:
        if self.config.env_file is None:
            return {}, None
        try:
            return read_env_file(self.config.env_file), None
        except EnvFileError as exc:
            logger.error("%s", exc)
            return {}, {"kind": "env", "summary": str(exc), "traceback": "", "files": [self.config.env_file]}

    async def _spawn(self, preload: bool = True) -> WorkerProcess:
        """A new worker (raises SpawnError if the OS refuses)."""
        self._spawned += 1
        spawning = asyncio.ensure_future(
            _workers.spawn(
                self._spawned,
                self._worker_settings(preload),
                self._listener,
                self._emit,
                self._capture if self.config.capture_output else None,
            )
        )
        try:
            worker = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # stop() cancelled us mid-spawn: finish it, so that stop() sees the worker and ends it
            with contextlib.suppress(SpawnError):
                self._workers.add(await spawning)
            raise
        self._workers.add(worker)
        worker.preloaded = preload and bool(self._preload) and self.config.preload
        worker.stop_relaying = _handoff.listen(worker.handoff, lambda fds: self._relay(worker, fds))
        return worker

    def _relay(self, sender: WorkerProcess | None, connections: list[_handoff.Connection]) -> None:
        """Pass connections a draining worker handed over to the serving one (or hold them)."""
        target = self._current
        if target is not None and target is not sender and target.alive:
            self._held.forward(target.handoff, connections)
        else:
            self._held.hold(connections)

    def _capture(self, line: str) -> None:
        self.output.append(line)

    def _worker_settings(self, preload: bool) -> dict[str, Any]:
        c = self.config
        env, _ = self._read_env()  # a broken env file is reported by the load that reads it
        return {
            "app": c.import_string,
            "factory": c.factory,
            "app_dir": c.app_dir,
            "roots": list(self.project.roots),
            "includes": list(c.reload_includes),
            "excludes": list(c.reload_excludes),
            "drain_timeout": c.drain_timeout,
            "show_errors": c.errors_visible,
            # details only for loopback Host headers, unless --show-errors asked for them anyway
            "only_loopback_hosts": c.is_loopback and c.show_errors is None,
            "env": env,
            "preload": self._preload if c.preload and preload else [],
            "uvicorn": c.uvicorn_options(),
        }

    async def _ensure_standby(self, preload: bool = True) -> None:
        if self.config.standby and not self._stopping and (self._standby is None or not self._standby.alive):
            try:
                worker = await self._spawn(preload=preload)
            except SpawnError as exc:
                logger.warning("%s; the next reload starts one instead of a warm worker.", exc)
                return
            worker.state = "standby"
            self._standby = worker

    async def _replace_standby(self) -> None:
        """A fresh warm worker: the one we have imported something that is out of date."""
        standby, self._standby = self._standby, None
        if standby is not None and standby.alive:
            standby.kill()
            await self._ensure_standby()

    def _drain(self, worker: WorkerProcess, then: Callable[[], None] | None = None) -> None:
        """Tell a generation that may be serving to finish and exit (one still starting is killed)."""
        if not worker.greeted:
            worker.kill()  # still starting: it cannot have accepted anything, nor hear a drain
            if then is not None:
                then()
            return
        worker.state = "draining"
        worker.when_drained = then
        worker.send({"type": protocol.DRAIN, "timeout": self.config.drain_timeout})
        self._later(DRAINING_DEADLINE, ("draining-deadline", worker))
        self._later(self.config.drain_timeout + 1.0, ("drain-deadline", worker))

    # ---------------------------------------------------------------- worker events

    async def _on_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == protocol.HELLO:
            failed = message.get("preload_failed")
            if isinstance(failed, dict) and failed.get("module") in self._preload:
                self._preload.remove(failed["module"])
                self._not_preloadable.add(failed["module"])
                logger.warning(
                    "Preloading %r failed (%s); it is imported with the app instead.",
                    failed["module"],
                    failed.get("error"),
                )
            if worker.pending_load is not None and worker.state == "loading":
                load, worker.pending_load = worker.pending_load, None
                worker.send(load)
        elif kind == protocol.FILES:
            worker.reported_files = True
            if worker is self._loading or worker is self._current:
                self._watch_reported(message)
        elif kind == protocol.FAILED:
            if worker is not self._loading:
                return  # superseded: it was killed already
            await self._on_failed(worker, message["failure"])
        elif kind == protocol.READY:
            worker.was_ready = True
            await self._on_ready(worker, bool(message.get("error_page")))
        elif kind == protocol.DRAINING:
            worker.drained()

    def _watch_reported(self, message: dict[str, Any]) -> None:
        assert self._scanner is not None
        entries, packages = [], []
        for path, mtime, size, ino in message["files"]:
            stat = None if mtime is None else (mtime, size, ino)
            if self.project.is_project_file(path):
                entries.append((path, stat))
            elif self.config.preload and self.project.is_installed_package(path):
                packages.append((path, stat))
        if entries:
            self._scanner.watch(entries)
        if packages and self._packages is not None:
            self._packages.watch(packages)
        known = set(self._preload) | self._not_preloadable
        for name in message.get("modules", []):
            if isinstance(name, str) and name not in known:
                known.add(name)
                self._preload.append(name)

    async def _on_failed(self, worker: WorkerProcess, failure: dict[str, Any]) -> None:
        """The loading generation could not start its app: retry, keep the old one, or show why."""
        worker.failed = True
        pending = self._pending or _Pending((), time.time(), "start")
        if failure.get("kind") == "usage" and worker.generation == 1:
            # A mistake in the command: start() turns it into one line and a failed exit.
            self.failure = dict(failure)
            self._loading = self._pending = None
            worker.kill()
            self._settle(1, "failed", pending, self.failure)
            return
        current = self._current
        keep = self.config.keep_last_good and current is not None and current.alive and not current.error_page
        overlapping = self._apps_running_besides(worker)
        retry = not keep and not self._exclusive and not pending.retried and _might_be_a_conflict(failure)
        if overlapping and retry:
            # It may have failed only because the old generation holds a port, a lock or a file
            # it needs: stop every older generation, and try once more alone.
            logger.info(
                "Generation %s failed while an older generation was running (%s); stopping that one "
                "and trying once more.",
                worker.generation,
                failure.get("summary", "unknown error"),
            )
            self._loading = None
            worker.kill()
            pending.retried = True
            self._load_when_alone(pending)
            return
        self._record_failure(worker, failure, old_running=keep and overlapping)
        if keep:
            assert current is not None
            # --keep-last-good: the failed worker exits, the last good generation serves on.
            self._loading = self._pending = None
            worker.kill()
            self._settle_failure()
            logger.warning("Keeping generation %s serving until the error is fixed.", current.generation)
            return
        await self._on_ready(worker, error_page=True)

    def _apps_running_besides(self, worker: WorkerProcess) -> bool:
        """Whether another generation's app (not an error page) still runs beside `worker`."""
        return any(
            w is not worker and w.alive and w.state in _WITH_APP and not w.error_page for w in self._workers
        )

    async def _on_ready(self, worker: WorkerProcess, error_page: bool) -> None:
        if worker is not self._loading:
            return  # superseded: it was killed, and never served
        self._loading = None
        worker.send({"type": protocol.SERVE})
        old, self._current = self._current, worker
        worker.state = "serving"
        worker.error_page = error_page
        pending = self._pending or _Pending((), time.time(), "start")
        pending.mark("ready")
        self._pending = None
        if not error_page:
            self._crashes = 0  # a healthy generation: the next crash starts the backoff afresh
            self._standby_deaths = 0
        if pending.retried and not error_page and not self._exclusive:
            self._exclusive = True
            logger.warning(
                "Generation %s started only once the old one had stopped: the app seems to hold something "
                "exclusively at import (a port, a lock or a file). Reloading sequentially from now on "
                "(pass --sequential to start that way).",
                worker.generation,
            )
        if self._held:
            self._relay(None, self._held.take())
        if error_page:
            announce = self._settle_failure  # only now does the error page answer in place of the app
        else:
            self.failure = None
            self._failed = None

            def announce() -> None:
                self._settle(worker.generation, "ready", pending)
                self._log_ready(worker, pending)

        if old is not None and old.alive:
            # Announced once the old generation answers nothing new, so that after the
            # "Reloaded" line (or an awaited ReloadEvent) every request gets the new code.
            self._drain(old, then=announce)
        else:
            announce()
        await self._ensure_standby()

    def _log_ready(self, worker: WorkerProcess, pending: _Pending) -> None:
        pending.mark("old generation stopped")
        took = (time.time() - pending.since) * 1000
        if logger.isEnabledFor(logging.DEBUG):
            steps = ", ".join(
                f"{step} +{(t - pending.since) * 1000:.1f} ms" for step, t in pending.steps.items()
            )
            logger.debug("Generation %s: changed at 0 ms, %s", worker.generation, steps)
        if pending.reason == "start":
            logger.info(
                "Started %s in %.0f ms, serving on %s (press CTRL+C to quit)", self.config.app, took, self.url
            )
        elif pending.changed:
            names = ", ".join(relative(p) for p in pending.changed[:5])
            more = f" and {len(pending.changed) - 5} more" if len(pending.changed) > 5 else ""
            logger.info(
                "Reloaded in %.0f ms (generation %s): %s%s changed", took, worker.generation, names, more
            )
        else:
            logger.info("Reloaded in %.0f ms (generation %s): %s", took, worker.generation, pending.reason)

    def _record_failure(
        self, worker: WorkerProcess, failure: dict[str, Any], old_running: bool = False
    ) -> None:
        failure = dict(failure)
        failure["files"] = [f for f in failure.get("files", []) if isinstance(f, str)]
        missing = [f for f in failure.get("missing", []) if isinstance(f, str)]
        self.failure = failure
        if self._scanner is not None:
            self._scanner.watch((p, stat_key(p)) for p in failure["files"] if p not in self._scanner)
            # where a module that is not found would be created: creating it recovers
            self._scanner.watch((p, stat_key(p)) for p in missing if p not in self._scanner)
        where = ", ".join(relative(p) for p in failure["files"][-2:])
        traceback = str(failure.get("traceback") or "").rstrip()
        logger.error(
            "Generation %s failed: %s%s%s%s",
            worker.generation,
            failure.get("summary", "unknown error"),
            f" (fix {where}; the server reloads by itself)" if where else "",
            " The previous generation was still running: if the app holds a port or a lock at import, "
            "pass --sequential."
            if old_running
            else "",
            "\n" + traceback if traceback else "",
        )
        if worker.generation is not None:
            self._failed = (worker.generation, self._pending or _Pending((), time.time(), "start"))

    def _settle_failure(self) -> None:
        """Report the recorded failure once the error page (or the last good generation) serves."""
        if self._failed is None:
            return
        (generation, pending), self._failed = self._failed, None
        self._settle(generation, "failed", pending, self.failure)

    def _settle(
        self,
        generation: int | None,
        outcome: Literal["ready", "failed"],
        pending: _Pending,
        failure: dict[str, Any] | None = None,
    ) -> None:
        assert generation is not None
        event = ReloadEvent(
            generation=generation,
            outcome=outcome,
            changed=pending.changed,
            duration=max(0.0, time.time() - pending.since),
            summary=str((failure or {}).get("summary", "")),
            traceback=str((failure or {}).get("traceback", "")),
        )
        self._outcomes[generation] = event
        for queue in self._subscribers:
            queue.put_nowait(event)
        task = asyncio.get_running_loop().create_task(self._notify())
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    async def _notify(self) -> None:
        async with self._settled:
            self._settled.notify_all()

    async def _on_exit(self, worker: WorkerProcess, returncode: int | None) -> None:
        worker.state = "gone"
        worker.drained()
        worker.close()
        self._workers.discard(worker)
        if self._stopping:
            return
        if worker is self._standby:
            self._standby = None
            await self._standby_died(worker)
        elif worker is self._loading:
            self._loading = None
            reason = f"The app's worker process {describe_exit(returncode)} before it was ready"
            await self._crashed(worker, reason)
        elif worker is self._current:
            self._current = None
            await self._crashed(worker, f"The app's worker process {describe_exit(returncode)} while serving")
        if self._after_exit is not None and not self._apps_running():
            pending, self._after_exit = self._after_exit, None
            await self._load(pending)

    async def _standby_died(self, worker: WorkerProcess) -> None:
        """Replace a warm worker that died, but never in a loop: after STANDBY_DEATHS in a row,
        keep none until a generation next starts well."""
        self._standby_deaths += 1
        if self._standby_deaths >= STANDBY_DEATHS:
            if self._standby_deaths == STANDBY_DEATHS:
                logger.warning(
                    "The warm worker died %d times in a row; keeping none until the app next starts "
                    "well (if preloading something kills it, try --no-preload).",
                    STANDBY_DEATHS,
                )
            return
        preload = worker.greeted and self._standby_deaths < 2
        if not worker.greeted and worker.preloaded:
            logger.warning("The warm worker died while preloading; the next one will not preload.")
        await self._ensure_standby(preload=preload)

    async def _crashed(self, worker: WorkerProcess, reason: str) -> None:
        """A worker died unexpectedly: show why, and try again with a growing delay.

        Only the backoff timer starts the app again, so a worker that dies at once can never
        make a hot loop; and a worker that was itself serving (or loading) the error page is
        not replaced by another error page, whatever killed it would kill that one too.
        """
        failure = {"kind": "crash", "summary": reason, "exit_reason": reason, "traceback": "", "files": []}
        if not worker.failed:
            self._record_failure(worker, failure)
        self._schedule_retry(None)
        current = self._current
        if worker.error_page:
            self._settle_failure()
        elif current is not None and current.alive and current.error_page:
            current.send({"type": protocol.FAILURE, "failure": self.failure or failure})
            self._settle_failure()
        elif current is not None and current.alive and self.config.keep_last_good:
            self._settle_failure()
        elif self._loading is not None and self._loading.alive:
            self._settle_failure()  # the generation loading now replaces the crashed one soon
        else:
            pending = self._pending or _Pending((), time.time(), reason)
            await self._load(pending, failure=self.failure or failure)  # settles when it serves


def _merge(earlier: _Pending, later: _Pending) -> _Pending:
    changed = tuple(sorted({*earlier.changed, *later.changed}))
    retried = earlier.retried or later.retried
    merged = _Pending(changed, min(earlier.since, later.since), later.reason, retried)
    merged.steps = {**later.steps, **earlier.steps}
    return merged


# Exceptions (the type named at the start of a failure's summary) that a resource held by an
# older generation can cause: a port, a lock, a file. Code errors (SyntaxError, NameError, a
# module not found) never are, so they are shown at once rather than retried.
_CONFLICTS = frozenset(
    {
        "OSError",
        "PermissionError",
        "BlockingIOError",
        "FileExistsError",
        "TimeoutError",
        "ConnectionError",
        "OperationalError",  # sqlite3 (and DB-API drivers): "database is locked"
    }
)


def _might_be_a_conflict(failure: dict[str, Any]) -> bool:
    """Whether a failure could come from something the older generation still holds."""
    if failure.get("kind") in ("lifespan", "startup"):
        return True  # start-up code takes locks and ports; its failures are worth one retry
    summary = str(failure.get("summary", ""))
    name = summary.partition(":")[0].rpartition(".")[2].strip()
    text = summary.lower()
    return name in _CONFLICTS or "lock" in text or "in use" in text


async def run_until_cancelled(supervisor: Supervisor) -> None:
    """Start, serve until cancelled, then stop: the body of serve(reload=True)."""
    try:
        await supervisor.start()
        await asyncio.Future()
    finally:
        await stop_completely(supervisor)


async def stop_completely(supervisor: Supervisor, *, force: bool = False) -> None:
    """Stop, and finish stopping even if cancelled again meanwhile (then re-raise that)."""
    stopping = asyncio.ensure_future(supervisor.stop(force=force))
    cancelled = False
    while not stopping.done():
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            cancelled = True
    stopping.result()
    if cancelled:
        raise asyncio.CancelledError


__all__ = ["EventStream", "ReloadEvent", "State", "Supervisor", "run_until_cancelled", "stop_completely"]
