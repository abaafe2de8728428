"""What the Config means for each part: the machine's Policy, a worker's Settings, the env file."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from .._protocol import Failure, Settings
from ..config import Config
from .debugging import debugger_attached
from .envfile import EnvFileError, env_file_values
from .records import Policy

logger = logging.getLogger("asgireload")


def policy_for(config: Config, url: str) -> Policy:
    return Policy(
        app=str(config.app),
        url=url,
        sequential=config.sequential,
        keep_last_good=config.keep_last_good,
        standby=config.standby,
        preload=config.preload,
        drain_timeout=config.drain_timeout,
        env_file=config.env_file,
        cwd=os.getcwd(),
        under_debugger=debugger_attached(),
    )


def read_env(config: Config) -> tuple[Mapping[str, str], Failure | None]:
    """The variables the env file adds to the environment (as uvicorn's load_dotenv: none that is
    set already), or why it cannot be read (a failure to show, and to watch)."""
    if config.env_file is None:
        return {}, None
    try:
        return env_file_values(config.env_file), None
    except EnvFileError as exc:
        return {}, Failure(kind="env", summary=str(exc), files=(config.env_file,))


def worker_settings(
    config: Config,
    roots: tuple[str, ...],
    preload: tuple[str, ...],
    fd_limit: int | None,
    run: str,
    handoff_fd: int,
    listen_fd: int,
    debug_fd: int,
) -> Settings:
    """Everything a new worker is: the app, what to watch, what to preload, its descriptors."""
    env, _ = read_env(config)  # a broken env file is reported by the load that reads it
    return Settings(
        app=config.import_string,
        factory=config.factory,
        app_dir=config.app_dir,
        roots=roots,
        includes=tuple(config.reload_includes),
        excludes=tuple(config.reload_excludes),
        drain_timeout=config.drain_timeout,
        show_errors=config.errors_visible,
        # details only for loopback Host headers, unless --show-errors asked for them anyway
        only_loopback_hosts=config.is_loopback and config.show_errors is None,
        env=dict(env),
        preload=preload,
        uvicorn=config.uvicorn_options(),
        handoff_fd=handoff_fd,
        listen_fd=listen_fd,
        fd_limit=fd_limit,
        live_reload=config.live_reload_active,
        run=run,
        debug_fd=debug_fd,
    )
