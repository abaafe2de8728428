"""`serve()` for asyncio programs, `run()` for scripts: the same Config, the same supervisor."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _logging, discovery
from ._supervisor import terminal
from .config import Config
from .errors import AsgireloadError, ConfigError

if TYPE_CHECKING:
    from ._supervisor import keyboard
    from ._supervisor.debugging import DebugTerminal
    from ._supervisor.liveconfig import LiveSettings
    from ._supervisor.supervisor import Supervisor

logger = logging.getLogger("asgireload")

IN_WORKER = "ASGIRELOAD_WORKER"  # set in every worker's environment


def resolve_import_string(app: Any, options: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Find the module-level name that holds `app`, so a worker can import it again.

    An app defined in a script run as `python main.py` lives in `__main__`; the worker imports
    that file as the module `main` (from its folder), it never runs `__main__` again.
    """
    if app is None or isinstance(app, str):
        return app, options
    found: list[tuple[str, str, str | None]] = []
    for module_name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or module_name.startswith("asgireload"):
            continue
        for attribute, value in list(vars(module).items()):
            if value is app and not attribute.startswith("__"):
                found.append((module_name, attribute, os.path.abspath(path)))
    if not found:
        raise ConfigError(
            "with reload=True the app must be importable, but this object is not a module-level name "
            "of any imported module; pass an import string instead, e.g. serve('main:app', reload=True)."
        )
    by_file = {path: (name, attr) for name, attr, path in found}
    if len(by_file) > 1:
        names = ", ".join(sorted(f"{n}:{a}" for n, a, _ in found))
        raise ConfigError(
            f"with reload=True the app must be importable by one name, and this one is held by {names}; "
            "pass the import string you mean, e.g. serve('main:app', reload=True)."
        )
    path, (module_name, attribute) = next(iter(by_file.items()))
    options = dict(options)
    if module_name in ("__main__", "__mp_main__"):
        stem = os.path.splitext(os.path.basename(str(path)))[0]
        if not stem.isidentifier():
            raise ConfigError(
                f"the script {path} cannot be imported as a module (its name is not an identifier); "
                "rename it, or pass an import string."
            )
        module_name = stem
        options.setdefault("app_dir", os.path.dirname(str(path)))
    else:
        depth = module_name.count(".") + (1 if os.path.basename(str(path)) == "__init__.py" else 0)
        root = os.path.dirname(str(path))
        for _ in range(depth):
            root = os.path.dirname(root)
        options.setdefault("app_dir", root)
    return f"{module_name}:{attribute}", options


def build_config(app: Any, reload: bool, options: dict[str, Any]) -> Config:
    if os.environ.get(IN_WORKER):
        raise AsgireloadError(
            "serve() or run() was called while a worker imported the app: guard the call with "
            "`if __name__ == '__main__':` so importing the module does not start a server."
        )
    pyproject = options.pop("pyproject", False)
    if pyproject is not False:  # only when asked: [tool.asgireload], then ASGIRELOAD_*, then these
        from .configfile import layered

        given = dict(options, app=app) if app is not None else options
        options, _ = layered(given, pyproject=pyproject)
        discovery.resolve(options)  # app = "src/main.py", as on the command line
        app = options.pop("app", None)
    if reload:
        app, options = resolve_import_string(app, options)
    return Config(app=app, reload=reload, **options)


async def serve(app: Any, *, reload: bool = False, **options: Any) -> None:
    """Serve `app` (an import string or an ASGI app) until cancelled.

    Options come from the keywords only, unless `pyproject=True` (the nearest pyproject.toml) or
    `pyproject="path/to/pyproject.toml"`: then its [tool.asgireload] and the ASGIRELOAD_*
    variables apply too, under the keywords (and `app` may be None, to take the file's).

    With reload=True the app runs in worker processes that are replaced when its code changes.
    Cancelling it (at any point, even during start-up) drains the workers (in-flight requests
    finish, up to drain_timeout), waits for every process to exit, closes the socket, then lets
    CancelledError propagate: nothing is left running or bound. Cancelled again while draining,
    it still finishes the clean-up first. No signal handler is installed: the caller's program
    owns its signals (use run() in a script). It needs asyncio: under another event loop (trio)
    it raises AsgireloadError before anything starts. Should the supervisor stop on an internal
    error (a bug in asgireload), it stops everything the same way and raises AsgireloadError.
    """
    require_asyncio("serve() was awaited")
    config = build_config(app, reload, options)
    if config.reload:
        from ._supervisor.supervisor import Supervisor, run_until_cancelled

        await run_until_cancelled(Supervisor(config))
    else:
        await _serve_in_process(config)


def require_asyncio(what: str) -> None:
    """Refuse, in one sentence, to start under an event loop that is not asyncio's.

    The supervisor's tasks, subprocesses and signal handling are asyncio's; under trio nothing
    would work, and half of it would have started (a socket bound, a coroutine never awaited).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return
    where = "with no asyncio event loop running"
    if under_trio():
        where = "under trio, where no asyncio event loop runs"
    raise AsgireloadError(
        f"asgireload needs asyncio, but {what} {where}: run it with asyncio.run(), or in "
        "tests use the asyncio backend, e.g. @pytest.mark.anyio with anyio_backend = 'asyncio'."
    )


def under_trio() -> bool:
    """Whether this code runs inside trio.run() (trio is never imported to find out)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


async def _serve_in_process(config: Config) -> None:
    """reload=False: uvicorn in this event loop, no subprocess."""
    import uvicorn

    from ._supervisor import sockets
    from ._worker.server import Server

    if config.log_config is not None:  # as uvicorn.run() applies it: in this process, before the app
        try:
            _logging.apply_config_file(config.log_config, config.log_level, config.app_dir)
        except _logging.LogConfigError as exc:
            raise ConfigError(str(exc)) from None
    app = import_app(config)
    sock = sockets.bind(config)
    try:
        options = dict(config.uvicorn_options(), loop="none", log_config=None)  # this loop serves it
        uv = uvicorn.Config(app, **options)
        server = Server(uv)
        if not await server.start([sock]):
            raise AsgireloadError(f"the app {config.app!r} failed its lifespan start-up (see the log).")
        logger.info("Serving on %s (no reload)", sockets.describe(sock, config))
        try:
            await server.serve_until_stopped()
        finally:
            await asyncio.shield(server.drain(config.drain_timeout))
    finally:
        sock.close()


def run(app: Any, *, reload: bool = True, **options: Any) -> None:
    """Serve from a script: handles Ctrl-C, SIGTERM and a hang-up, logs like the command line, blocks.

    Unlike serve(), reload defaults to True: run() is the script form of `asgireload APP`.
    """
    reopened = check_standard_streams()
    config = build_config(app, reload, options)
    try:
        _logging.set_up(config.log_level, config.use_colors, config.log_config, config.app_dir)
    except _logging.LogConfigError as exc:
        raise ConfigError(str(exc)) from None
    warn_about_reopened(reopened)
    code = asyncio.run(run_with_signals(config))
    if code:
        sys.exit(code)


def check_standard_streams() -> list[str]:
    """For the entry points that own the terminal: fix closed streams, exit 1 on a broken one."""
    try:
        return terminal.ensure_standard_streams()
    except terminal.BrokenStream as exc:
        terminal.report_broken_stream(exc)
        raise SystemExit(1) from None


def warn_about_reopened(names: list[str]) -> None:
    """Say once, in the log, that a closed stream's output is dropped (if the log is not the one)."""
    if "stdout" in names and "stderr" not in names:
        logger.warning(
            "stdout is closed, so the app's output and the access log are dropped; redirect it to a "
            "file to keep them."
        )


async def run_with_signals(config: Config, live_settings: LiveSettings | None = None) -> int:
    """Serve until CTRL+C, `q`, SIGTERM or the terminal hanging up (SIGHUP); SIGUSR1 or `r`
    reloads (keyboard.py has the other keys, _supervisor/signals.py the signals). Returns the
    exit code.

    SIGHUP stops, as it stops any program whose terminal is closed; a SIGHUP that was ignored
    when asgireload started (`nohup asgireload ...`) stays ignored. Cancelled (other than by its
    own signals), it stops everything as serve() does, removes its signal handlers and lets
    CancelledError propagate.
    """
    from ._supervisor.signals import CommandLineSignals
    from ._supervisor.supervisor import Supervisor, run_until_cancelled

    loop = asyncio.get_running_loop()
    supervisor = Supervisor(config)
    supervisor.live_settings = live_settings  # the command line's: its pyproject.toml applies itself
    signals = CommandLineSignals(supervisor)
    keys, debug_terminal = attach_terminal(loop, supervisor, signals.quit)
    main = signals.start(run_until_cancelled(supervisor), debug_terminal)
    try:
        with terminal.job_control_ignored():
            keys.start()
            await main
    except asyncio.CancelledError:
        if not signals.stopping:
            raise
    except AsgireloadError as exc:
        from .configfile import name_the_source  # where the culprit's value was set, if not a flag

        print(f"asgireload: error: {name_the_source(exc)}", file=sys.stderr)
        return 1
    finally:
        keys.close()
        signals.close()
    return 0


def attach_terminal(
    loop: asyncio.AbstractEventLoop, supervisor: Supervisor, quit: Callable[[], None]
) -> tuple[keyboard.Keyboard, DebugTerminal]:
    """The keys, the terminal lent to breakpoint() and the clear per reload, for the command line."""
    from ._supervisor import keyboard, screen
    from ._supervisor.debugging import DebugTerminal
    from ._supervisor.screen import ClearPerReload

    def clear_by_hand() -> None:  # `c`: whatever error was on the screen has been seen
        keyboard.clear_screen()
        clearing.seen()

    keys = keyboard.Keyboard(
        loop,
        keyboard.KeyActions(
            reload=lambda: supervisor.request_reload("reload requested from the terminal"),
            quit=quit,
            url=lambda: supervisor.url or None,
            clear=clear_by_hand,
            open_url=lambda url: _keep(loop.create_task(keyboard.open_in_browser(url))),
        ),
    )
    # breakpoint() in the app gets this terminal: keys are not read while a debugger has it
    debug_terminal = DebugTerminal.of_this_process(keys.lend, terminal.in_foreground)
    supervisor.debug_terminal = debug_terminal
    clearing = ClearPerReload(
        supervisor.config.clear_screen,
        may_clear=lambda: screen.stdout_in_foreground() and debug_terminal.holder_pid is None,
        clear=keyboard.clear_screen,
        where=lambda: supervisor.url,
    )
    supervisor.on_command = clearing.on_command
    _logging.follow_prompt(lambda: debug_terminal.prompt_shown)
    return keys, debug_terminal


_background: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    """Hold a fire-and-forget task until it is done (the loop keeps only a weak reference)."""
    _background.add(task)
    task.add_done_callback(_background.discard)


def import_app(config: Config) -> Any:
    """Import the app for reload=False, with the same friendly errors as a worker."""
    from ._worker.loader import AppLoadError, load_app

    if not isinstance(config.app, str):
        return config.app
    if config.app_dir not in sys.path:
        sys.path.insert(0, config.app_dir)
    try:
        return load_app(config.app, factory=config.factory, app_dir=config.app_dir)
    except AppLoadError as exc:
        raise AsgireloadError(exc.failure.summary) from None
