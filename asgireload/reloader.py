"""`Reloader`: a real reloading server as an async context manager, for tests and tools."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

from ._supervisor.supervisor import Supervisor, stop_completely
from .config import Config
from .errors import AsgireloadError
from .events import EventStream, Failure, ReloadEvent, State
from .serving import build_config, require_asyncio

DEFAULT_TIMEOUT = 30.0  # seconds; every wait has one, so a broken reload fails a test instead of hanging it


class Reloader:
    """Run `app` with reload on, in the current event loop, for the life of an `async with`.

    On entry the socket is bound (port 0 picks a free one) and generation 1 is ready or has
    failed; a failed app does not raise, `state` says "failed". A mistake in the command (no
    such module, no such attribute, port in use) raises StartupError. On exit every worker is
    drained and gone and every descriptor closed. It needs asyncio: under another event loop
    (trio) entering raises AsgireloadError before anything is bound or started.
    """

    def __init__(self, app: Any, *, start_timeout: float = DEFAULT_TIMEOUT, **options: Any) -> None:
        self._start_timeout = start_timeout
        options.setdefault("port", 0)
        options.setdefault("capture_output", True)
        self.config: Config = build_config(app, True, options)
        self._supervisor: Supervisor | None = None
        self._entered = False

    def __repr__(self) -> str:
        return f"<Reloader {self.config.app!r} {self.url or 'not started'} state={self.state}>"

    async def __aenter__(self) -> Reloader:
        """Bind, start generation 1 and wait for its outcome (ReloadTimeout after start_timeout).

        Cancelling it, or any error, stops what had started (workers killed and reaped, socket
        closed) before CancelledError or the error propagates: nothing is left behind.
        """
        require_asyncio("a Reloader was entered")
        if self._entered:
            raise AsgireloadError("a Reloader can be entered only once; create a new one.")
        self._entered = True
        self._supervisor = Supervisor(self.config)
        await self._supervisor.start(timeout=self._start_timeout)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Drain every worker (up to drain_timeout), reap every process, close every descriptor;
        every events() stream ends. Cancelled meanwhile, it finishes all of that first, then
        lets CancelledError propagate. If the supervisor stopped on an internal error and the
        body raised nothing, that error is raised here (AsgireloadError)."""
        if self._supervisor is not None:
            await stop_completely(self._supervisor)
            if exc_type is None:
                self._supervisor.raise_error()  # an internal error nobody has seen yet

    @property
    def _running(self) -> Supervisor:
        if self._supervisor is None:
            raise AsgireloadError("the Reloader is not running; use it inside `async with`.")
        return self._supervisor

    @property
    def url(self) -> str:
        return self._supervisor.url if self._supervisor else ""

    @property
    def host(self) -> str:
        return str(self._running.sockname[0])

    @property
    def port(self) -> int:
        return int(self._running.sockname[1])

    @property
    def state(self) -> State:
        return self._supervisor.state if self._supervisor else "starting"

    @property
    def generation(self) -> int:
        """The newest generation started (ready, failed, or still loading)."""
        return self._running.generation

    @property
    def failure(self) -> Failure | None:
        """While the app is broken: what failed (its kind, summary, traceback, the files to fix)."""
        return self._running.failure

    @property
    def output(self) -> str:
        """What the workers printed so far (stdout and stderr, interleaved)."""
        return "".join(self._running.output)

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the workers by role, for diagnostics: "serving", "loading", "standby", and
        "draining" for an older generation until its exit has been handled; "template" for the
        fork server's template process, which forks the workers, while it runs (Linux)."""
        return self._running.pids

    def is_watching(self, path: str | os.PathLike[str]) -> bool:
        """Whether a change to this file starts a new generation (a watched file, or one that
        --reload-include will pick up)."""
        supervisor = self._running
        absolute = os.path.abspath(path)
        return (
            absolute in supervisor.watched
            or os.path.realpath(absolute) in supervisor.watched
            or supervisor.project.is_included(absolute)
        )

    def _is_live_asset(self, path: str | os.PathLike[str]) -> bool:
        """A --live-include file, whose change reaches open pages and starts no generation."""
        return self._running.live.is_asset(os.path.abspath(path))

    async def reload(self, *, timeout: float = DEFAULT_TIMEOUT) -> ReloadEvent:
        """Start a new generation now and wait for its outcome (ReloadTimeout after `timeout` s).

        Cancelling it cancels the wait only: the reload was requested and goes on.
        """
        target = self._running.generation + 1
        self._running.request_reload("reload() called")
        return await self._running.wait_for_generation(target, timeout)

    async def wait_for_generation(self, generation: int, *, timeout: float = DEFAULT_TIMEOUT) -> ReloadEvent:
        """Wait until that generation (or a newer one) is ready or has failed; ReloadTimeout after
        `timeout` seconds, StartupError if the server stops first.

        Cancelling it cancels the wait only; it changes nothing in the server.
        """
        return await self._running.wait_for_generation(generation, timeout)

    async def next_generation(self, *, timeout: float = DEFAULT_TIMEOUT) -> ReloadEvent:
        """Wait for the outcome of the generation after the newest one started so far.

        Cancelling it cancels the wait only; it changes nothing in the server.
        """
        return await self.wait_for_generation(self._running.generation + 1, timeout=timeout)

    async def edit(
        self,
        path: str | os.PathLike[str],
        text: str,
        *,
        reload: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ReloadEvent:
        """Save `text` to `path` the way an editor does (temp file, then rename over) and wait
        for the generation that change starts.

        A file that no generation watches would start nothing, so it is refused at once, with
        nothing written (AsgireloadError naming the option that would watch it). For a file the
        app reads at start-up without importing it (a settings file), pass reload=True: the file
        is saved, then a reload is started by hand.

        Cancelling it cancels the wait only: once saved, the file stays saved and its reload
        goes on.
        """
        supervisor = self._running
        if self._is_live_asset(path) and not reload:
            raise AsgireloadError(
                f"{os.fspath(path)} matches --live-include: saving it updates open pages without a new "
                "generation, so there is none to wait for. Save it yourself (or pass reload=True)."
            )
        watched = self.is_watching(path)
        if not watched and not reload:
            raise AsgireloadError(unwatched_message(path, self.config))
        target = supervisor.generation + 1
        write_like_an_editor(path, text)
        if not watched:
            supervisor.request_reload(f"edit() of {os.path.basename(path)} with reload=True")
        return await supervisor.wait_for_generation(target, timeout)

    def events(self) -> EventStream:
        """Every generation's outcome from this call on, as it happens (`async for`).

        The stream ends when the server stops, for every task iterating it; one made after the
        server stopped is empty. Cancelling a task waiting on it loses no event.
        """
        return self._running.events()


def unwatched_message(path: str | os.PathLike[str], config: Config) -> str:
    """Why editing `path` would start no reload, and the option that would."""
    path = os.path.abspath(path)
    roots = config.watch_roots
    under_a_root = any(os.path.join(path, "").startswith(os.path.join(os.path.abspath(r), "")) for r in roots)
    if not path.endswith(".py"):
        _, extension = os.path.splitext(path)
        glob = f"*{extension}" if extension else os.path.basename(path)
        advice = f"pass --reload-include '{glob}' (reload_includes=({glob!r},))"
        if not under_a_root:
            folder = os.path.dirname(path)
            advice += f" and --reload-dir {folder} (reload_dirs=({folder!r},))"
    elif under_a_root:
        advice = "import it from the app (only imported modules are watched)"
    else:
        folder = os.path.dirname(path)
        advice = f"pass --reload-dir {folder} (reload_dirs=({folder!r},)) and import it from the app"
    return (
        f"edit() of {path} would start no reload: no generation watches that file. To watch it, "
        f"{advice}; or, for a file the app reads at start-up without importing it, call "
        "edit(path, text, reload=True) to save it and reload by hand."
    )


def write_like_an_editor(path: str | os.PathLike[str], text: str) -> None:
    """Write a temp file beside `path` and rename it over, as most editors save."""
    path = os.fspath(path)
    temporary = f"{path}.asgireload~"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)
