"""`serve()` for asyncio programs, `run()` for scripts: the same Config, the same supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from . import _logging
from .config import Config
from .errors import AsgireloadError, ConfigError

logger = logging.getLogger("asgireload")

IN_WORKER = "ASGIRELOAD_WORKER"  # set in every worker's environment


def resolve_import_string(app: Any, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Find the module-level name that holds `app`, so a worker can import it again.

    An app defined in a script run as `python main.py` lives in `__main__`; the worker imports
    that file as the module `main` (from its folder), it never runs `__main__` again.
    """
    if isinstance(app, str):
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
    if reload:
        app, options = resolve_import_string(app, options)
    return Config(app=app, reload=reload, **options)


async def serve(app: Any, *, reload: bool = False, **options: Any) -> None:
    """Serve `app` (an import string or an ASGI app) until cancelled.

    With reload=True the app runs in worker processes that are replaced when its code changes.
    Cancellation drains the workers (in-flight requests finish, up to drain_timeout), waits for
    every process to exit, closes the socket, then lets CancelledError propagate. No signal
    handler is installed: the caller's program owns its signals (use run() in a script).
    """
    config = build_config(app, reload, options)
    if config.reload:
        from .supervisor import Supervisor, run_until_cancelled

        await run_until_cancelled(Supervisor(config))
    else:
        await _serve_in_process(config)


async def _serve_in_process(config: Config) -> None:
    """reload=False: uvicorn in this event loop, no subprocess."""
    import uvicorn

    from . import _sockets
    from ._server import Server

    app = import_app(config)
    sock = _sockets.bind(config)
    try:
        options = dict(config.uvicorn_options(), loop="none")  # this event loop serves it
        uv = uvicorn.Config(app, **options, log_config=None)
        server = Server(uv)
        if not await server.start([sock]):
            raise AsgireloadError(f"the app {config.app!r} failed its lifespan start-up (see the log).")
        logger.info("Serving on %s (no reload)", _sockets.describe(sock, config))
        try:
            await server.serve_until_stopped()
        finally:
            await asyncio.shield(server.drain(config.drain_timeout))
    finally:
        sock.close()


def run(app: Any, *, reload: bool = True, **options: Any) -> None:
    """Serve from a script: handles Ctrl-C and SIGTERM, logs like the command line, blocks.

    Unlike serve(), reload defaults to True: run() is the script form of `asgireload APP`.
    """
    config = build_config(app, reload, options)
    _logging.configure(config.log_level)
    code = asyncio.run(run_with_signals(config))
    if code:
        sys.exit(code)


async def run_with_signals(config: Config) -> int:
    """Serve until Ctrl-C or SIGTERM; SIGHUP or `r` + Enter reloads. Returns the exit code."""
    from .supervisor import Supervisor, run_until_cancelled

    supervisor = Supervisor(config)
    main = asyncio.create_task(run_until_cancelled(supervisor))
    loop = asyncio.get_running_loop()
    stops = 0

    def stop(signame: str) -> None:
        nonlocal stops
        stops += 1
        if stops == 1:
            logger.info("Shutting down (%s); press CTRL+C again to stop at once.", signame)
            main.cancel()
        else:
            logger.warning("Stopping at once.")
            supervisor.kill_all()

    loop.add_signal_handler(signal.SIGINT, stop, "CTRL+C")
    loop.add_signal_handler(signal.SIGTERM, stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGHUP, supervisor.request_reload, "SIGHUP")
    keys = _watch_keys(loop, supervisor)
    try:
        await main
    except asyncio.CancelledError:
        if stops == 0:
            raise
    except AsgireloadError as exc:
        print(f"asgireload: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if keys:
            loop.remove_reader(0)
    return 0


def _watch_keys(loop: asyncio.AbstractEventLoop, supervisor: Any) -> bool:
    """`r` and Enter in the terminal reloads; only when stdin is a terminal."""
    try:
        if not os.isatty(0):
            return False
    except OSError:
        return False

    def on_input() -> None:
        try:
            data = os.read(0, 1024)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
        elif data.strip().lower() == b"r":
            supervisor.request_reload("reload requested from the terminal")

    with contextlib.suppress(OSError, ValueError):
        loop.add_reader(0, on_input)
        return True
    return False


def import_app(config: Config) -> Any:
    """Import the app for reload=False, with the same friendly errors as a worker."""
    from ._loader import AppLoadError, load_app

    if not isinstance(config.app, str):
        return config.app
    if config.app_dir not in sys.path:
        sys.path.insert(0, config.app_dir)
    try:
        return load_app(config.app, factory=config.factory, app_dir=config.app_dir)
    except AppLoadError as exc:
        raise AsgireloadError(exc.failure["summary"]) from None
