"""The one place where every option is declared, defaulted and validated.

The command line, `serve()` and `Reloader` all build a `Config`; the CLI generates its flags
from the field metadata below, so an option is written down exactly once. Construction has
no side effects: it validates values (the checks are _optionvalues.py's) and resolves relative
paths against the current folder, nothing else (whether a folder exists or a port is free is
checked when the server starts).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

from ._loopback import bind_is_loopback
from ._optionvalues import accept_other_forms, check_values
from ._uvicorn import PASSED_WHEN_SET
from .errors import ConfigError

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

_PATH_OPTIONS = ("app_dir", "uds", "env_file", "log_config", "ssl_keyfile", "ssl_certfile", "ssl_ca_certs")
UVICORN_BASE_OPTIONS = (  # every supported uvicorn (pyproject's lower bound) has these
    "lifespan",
    "http",
    "ws",
    "loop",
    "log_level",
    "access_log",
    "root_path",
    "proxy_headers",
    "forwarded_allow_ips",
    "interface",
)
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_IMPORT_STRING = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _option(
    default: Any,
    help: str,
    *,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    negatable: bool = False,
    cli: bool = True,
) -> Any:
    """A dataclass field whose metadata tells the CLI how to expose it."""
    meta = {
        "help": help,
        "metavar": metavar,
        "choices": choices,
        "flag": flag,
        "negatable": negatable,
        "cli": cli,
    }
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Every option of asgireload. Times are in seconds, paths absolute once built."""

    app: str | ASGIApp = _option(
        None, "The app as module:attribute, e.g. main:app or pkg.web:create_app.", cli=False
    )
    host: str = _option("127.0.0.1", "Bind the socket to this host.", metavar="HOST")
    port: int = _option(8000, "Bind the socket to this port; 0 picks a free one.", metavar="PORT")
    uds: str | None = _option(None, "Bind to this Unix domain socket path instead.", metavar="PATH")
    fd: int | None = _option(
        None, "Serve on this already-listening socket file descriptor instead.", metavar="FD"
    )
    factory: bool = _option(False, "Treat APP as a factory: call it with no arguments to get the app.")
    app_dir: str = _option(
        ".", "Look for APP's module in this folder (put first on sys.path).", metavar="DIR"
    )
    reload: bool = _option(True, "Restart the app when its code changes.", cli=False)
    reload_dirs: tuple[str, ...] = _option(
        (),
        "Watch imported modules under this folder (repeatable; replaces the default, the app folder).",
        metavar="DIR",
        flag="--reload-dir",
    )
    reload_includes: tuple[str, ...] = _option(
        (),
        "Also watch files under the watched folders that match this glob, e.g. '*.html' (repeatable).",
        metavar="GLOB",
        flag="--reload-include",
    )
    reload_excludes: tuple[str, ...] = _option(
        (),
        "Never watch files that match this glob, e.g. 'migrations/*' (repeatable).",
        metavar="GLOB",
        flag="--reload-exclude",
    )
    env_file: str | None = _option(
        None,
        "Load environment variables from this file; re-read, and watched, on every reload.",
        metavar="PATH",
    )
    drain_timeout: float = _option(
        10.0,
        "How long an old generation may finish its in-flight requests before it is killed.",
        metavar="SECONDS",
    )
    sequential: bool = _option(
        False,
        "Stop the old generation before starting the new one, for apps that cannot run twice at once "
        "(requests wait, none is refused).",
    )
    keep_last_good: bool = _option(
        False,
        "When a reload fails, keep the last working generation serving and only log the error "
        "(default: serve the error page).",
    )
    clear_screen: bool = _option(
        False,
        "Clear the terminal when a new generation starts loading, unless an error was logged since "
        "the last ready generation (it stays on the screen until one is ready).",
        negatable=True,
    )
    show_errors: bool | None = _option(
        None,
        "Show tracebacks and file paths on the error page (default: only when bound to loopback).",
        negatable=True,
    )
    standby: bool = _option(
        True,
        "Keep a warm worker (interpreter and uvicorn already imported) ready for the next reload.",
        negatable=True,
    )
    preload: bool = _option(
        True,
        "Let the warm worker import the third-party modules the app used last time, ahead of the reload.",
        negatable=True,
    )
    fork: bool = _option(
        True,
        "On Linux, fork warm workers from a template process that has imported uvicorn and the "
        "app's installed packages once, instead of starting a new interpreter for each.",
        negatable=True,
    )
    project_layer: bool = _option(
        True,
        "With forking: keep a second template that has also imported the project modules the next "
        "edits likely leave alone, so that a reload runs only what changed and what imports it.",
        negatable=True,
    )
    force_polling: bool = _option(
        False,
        "Find changes by polling every watched file, never by file events (for mounts that deliver "
        "none: network shares, some container and VM mounts). Also set by ASGIRELOAD_FORCE_POLLING=1.",
    )
    watch_editable: bool = _option(
        True,
        "Watch packages installed in editable mode (pip install -e) whose sources sit in the same "
        "checkout as the app, like the app's own files.",
        negatable=True,
    )
    # Live reload: None is "on for the command line (cli.py says so), off for serve() and Reloader".
    live_reload: bool | None = _option(
        None,
        "Reload open browser pages when the app reloads, and swap changed stylesheets in place "
        "(default: on for the command line when bound to loopback; never for other binds).",
        negatable=True,
    )
    live_includes: tuple[str, ...] = _option(
        ("*.css", "*.js"),
        "With live reload, files under the watched folders that match this glob update open pages "
        "instead of restarting the app: a stylesheet is swapped in place, anything else reloads "
        "the pages (repeatable; default: '*.css' and '*.js').",
        metavar="GLOB",
        flag="--live-include",
    )
    poll_interval: float | None = _option(
        None,
        "Seconds between full scans of the watched files [default: 1.0 where the OS gives file events "
        "(Linux), which make changes show up at once; 0.2 elsewhere].",
        metavar="SECONDS",
    )
    lifespan: Literal["auto", "on", "off"] = _option(
        "auto", "Run the app's lifespan start-up and shut-down.", choices=("auto", "on", "off")
    )
    log_level: str | None = _option(
        None,
        "Log level of asgireload and uvicorn (default: info, or what --log-config sets).",
        choices=LOG_LEVELS,
    )
    access_log: bool = _option(True, "Log every request.", negatable=True)
    root_path: str = _option("", "Set the ASGI root_path for an app mounted below a path.", metavar="PATH")
    proxy_headers: bool = _option(
        True, "Trust X-Forwarded-Proto/For from the addresses in --forwarded-allow-ips.", negatable=True
    )
    forwarded_allow_ips: str | None = _option(
        None,
        "Comma-separated addresses trusted for proxy headers (uvicorn's default: 127.0.0.1).",
        metavar="IPS",
    )
    http: str = _option("auto", "HTTP implementation.", choices=("auto", "h11", "httptools", "zttp"))
    ws: str = _option(
        "auto",
        "WebSocket implementation.",
        choices=("auto", "none", "websockets", "websockets-sansio", "wsproto"),
    )
    loop: str = _option(
        "auto", "Event loop implementation.", choices=("auto", "asyncio", "uvloop", "zuvloop")
    )
    interface: str = _option(
        "auto",
        "Application interface; wsgi serves a WSGI app such as Flask through uvicorn.",
        choices=("auto", "asgi3", "asgi2", "wsgi"),
    )
    # ---- the rest of uvicorn's options, under uvicorn's names, types and defaults (issue 12) ----
    reload_delay: float | None = _option(
        None,
        "Wait until the watched files have been quiet this long before reloading (uvicorn's name; "
        "default: 2 ms, 50 ms once several files changed, at most 0.5 s).",
        metavar="SECONDS",
    )
    timeout_graceful_shutdown: float | None = _option(
        None, "uvicorn's name for --drain-timeout; when given, it is the drain timeout.", metavar="SECONDS"
    )
    workers: int | None = _option(
        None, "Accepted only as 1: asgireload runs one worker per generation.", metavar="N"
    )
    limit_max_requests: int | None = _option(
        None, "Refused: a worker that exits after N requests would look like a crash.", metavar="N"
    )
    limit_max_requests_jitter: int = _option(0, "Refused unless 0, like --limit-max-requests.", metavar="N")
    timeout_worker_healthcheck: int = _option(
        5, "Accepted and ignored: it only matters for uvicorn --workers.", metavar="SECONDS"
    )
    log_config: str | dict[str, Any] | None = _option(
        None,
        "Logging configuration file (.json, .yaml/.yml with PyYAML, else ini), applied in every worker "
        "and to asgireload's own lines.",
        metavar="PATH",
    )
    use_colors: bool | None = _option(
        None, "Colour the log's level names (default: when the output is a terminal).", negatable=True
    )
    headers: tuple[str, ...] = _option(
        (),
        "Add this header to every response, as 'Name: value' (repeatable).",
        metavar="HEADER",
        flag="--header",
    )
    server_header: bool = _option(True, "Send a Server header on every response.", negatable=True)
    date_header: bool = _option(True, "Send a Date header on every response.", negatable=True)
    timeout_keep_alive: int = _option(
        5, "Close a keep-alive connection after this many seconds without a request.", metavar="SECONDS"
    )
    limit_concurrency: int | None = _option(
        None, "Answer 503 once this many connections or tasks are open.", metavar="N"
    )
    backlog: int = _option(
        2048, "Connections the listening socket holds before they are accepted.", metavar="N"
    )
    h11_max_incomplete_event_size: int | None = _option(
        None, "Largest request head h11 buffers, in bytes (uvicorn's default: 16 KiB).", metavar="BYTES"
    )
    http2: bool = _option(False, "Serve HTTP/2 (needs the zttp package and --http zttp).")
    ws_max_size: int = _option(16777216, "Largest websocket message, in bytes.", metavar="BYTES")
    ws_max_queue: int = _option(32, "Most websocket messages queued for the app.", metavar="N")
    ws_ping_interval: float | None = _option(20.0, "Seconds between websocket pings.", metavar="SECONDS")
    ws_ping_timeout: float | None = _option(20.0, "Seconds to wait for a websocket pong.", metavar="SECONDS")
    ws_per_message_deflate: bool = _option(
        True, "Compress websocket messages (permessage-deflate).", negatable=True
    )
    reset_contextvars: bool = _option(False, "Run each request in a fresh contextvars.Context.")
    ssl_keyfile: str | None = _option(None, "TLS private key file.", metavar="PATH")
    ssl_certfile: str | None = _option(None, "TLS certificate file (serves https://).", metavar="PATH")
    ssl_keyfile_password: str | None = _option(None, "Password of the TLS key file.", metavar="PASSWORD")
    ssl_version: int = _option(17, "TLS protocol of ssl.SSLContext (17: PROTOCOL_TLS_SERVER).", metavar="N")
    ssl_cert_reqs: int = _option(0, "Client certificates: 0 none, 1 optional, 2 required.", metavar="N")
    ssl_ca_certs: str | None = _option(None, "CA certificates to verify clients with.", metavar="PATH")
    ssl_ciphers: str | None = _option(None, "TLS ciphers, in OpenSSL's syntax.", metavar="CIPHERS")
    # ---- end of uvicorn's options ----
    capture_output: bool = _option(
        False, "Collect the workers' output (for tests) instead of letting it reach the terminal.", cli=False
    )

    def __post_init__(self) -> None:
        accept_other_forms(self, _PATH_OPTIONS)
        _check_app(self.app)
        check_values(self, option_fields(), _fail)
        resolve = os.path.abspath
        object.__setattr__(self, "app_dir", resolve(self.app_dir))
        object.__setattr__(self, "reload_dirs", tuple(resolve(d) for d in self.reload_dirs))
        if self.env_file is not None:
            object.__setattr__(self, "env_file", resolve(self.env_file))
        if self.uds is not None:
            object.__setattr__(self, "uds", resolve(self.uds))
        for name in ("log_config", "ssl_keyfile", "ssl_certfile", "ssl_ca_certs"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, resolve(getattr(self, name)))
        if self.timeout_graceful_shutdown is not None:  # uvicorn's name for it wins when given
            object.__setattr__(self, "drain_timeout", float(self.timeout_graceful_shutdown))

    @property
    def import_string(self) -> str:
        """The app as module:attribute (only for a Config whose app is a string)."""
        if not isinstance(self.app, str):
            raise ConfigError("this Config holds an app object, not an import string.")
        return self.app

    def uvicorn_options(self) -> dict[str, Any]:
        """The options that are uvicorn.Config's too, under uvicorn's names."""
        options = {name: getattr(self, name) for name in UVICORN_BASE_OPTIONS}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in PASSED_WHEN_SET:
            value = getattr(self, name)
            if value != defaults[name]:
                options[name] = value
        if "headers" in options:  # "Name: value", as uvicorn's --header takes it
            options["headers"] = [[part.strip() for part in h.split(":", 1)] for h in self.headers]
        return options

    @property
    def watch_roots(self) -> tuple[str, ...]:
        return self.reload_dirs or (self.app_dir,)

    @property
    def is_loopback(self) -> bool:
        """Only this machine can connect: judged by the address, also an inherited --fd's."""
        return bind_is_loopback(self.host, self.uds, self.fd)

    @property
    def live_reload_active(self) -> bool:
        """Live reload runs: asked for, and bound to loopback (never injected for other binds)."""
        return bool(self.live_reload) and self.is_loopback

    @property
    def errors_visible(self) -> bool:
        return self.is_loopback if self.show_errors is None else self.show_errors


def cli_flag(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("flag") or "--" + field.name.replace("_", "-"))


def option_fields() -> list[dataclasses.Field[Any]]:
    """The options, in declaration order (the app itself is not one)."""
    return [f for f in dataclasses.fields(Config) if f.name != "app"]


def _fail(name: str, problem: str) -> ConfigError:
    field = {f.name: f for f in dataclasses.fields(Config)}[name]
    return ConfigError(f"option {name} ({cli_flag(field)}) {problem}")


def _check_app(app: object) -> None:
    """The app is no option (the CLI takes it as an argument): an import string or a callable."""
    if isinstance(app, str):
        if not _IMPORT_STRING.match(app):
            raise ConfigError(f"APP must look like module:attribute (for example main:app), got {app!r}.")
    elif app is None:
        raise ConfigError("an app is required: pass an import string such as 'main:app' or an ASGI app.")
    elif not callable(app):
        raise ConfigError(
            "the app must be an ASGI callable or an import string, "
            f"got an object of type {type(app).__name__}."
        )
