"""uvicorn's options beyond the ones every server needs: which are passed through, which are
refused (and why), which change nothing here, and the ranges and combinations they must keep.

config.py declares them as Config fields like every other option; this module only holds what
is particular to them, so that the Config stays one readable list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

# The rest of uvicorn's options that reach uvicorn.Config unchanged. Each is passed only when it
# is not at its default, so an older uvicorn that lacks one works as long as it is not used.
PASSED_WHEN_SET = (
    "log_config",
    "use_colors",
    "headers",
    "server_header",
    "date_header",
    "timeout_keep_alive",
    "limit_concurrency",
    "backlog",
    "h11_max_incomplete_event_size",
    "http2",
    "ws_max_size",
    "ws_max_queue",
    "ws_ping_interval",
    "ws_ping_timeout",
    "ws_per_message_deflate",
    "reset_contextvars",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_keyfile_password",
    "ssl_version",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ciphers",
)
# What uvicorn's click command reads from UVICORN_<NAME> (auto_envvar_prefix), by parameter name:
# the app and every option (tests/test_dropin.py checks it against the installed uvicorn).
UVICORN_COMMAND_OPTIONS = (
    "app", "host", "port", "uds", "fd", "reload", "reload_dirs", "reload_includes", "reload_excludes",
    "reload_delay", "workers", "loop", "http", "http2", "ws", "ws_max_size", "ws_max_queue",
    "ws_ping_interval", "ws_ping_timeout", "ws_per_message_deflate", "lifespan", "interface", "env_file",
    "log_config", "log_level", "access_log", "use_colors", "proxy_headers", "server_header", "date_header",
    "forwarded_allow_ips", "root_path", "limit_concurrency", "backlog", "limit_max_requests",
    "limit_max_requests_jitter", "timeout_keep_alive", "timeout_graceful_shutdown",
    "timeout_worker_healthcheck", "ssl_keyfile", "ssl_certfile", "ssl_keyfile_password", "ssl_version",
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_ciphers", "headers", "app_dir", "h11_max_incomplete_event_size",
    "reset_contextvars", "factory",
)  # fmt: skip
# uvicorn's options that cannot apply to one reloading server, the value each must keep, and why.
REFUSED: dict[str, tuple[tuple[object, ...], str]] = {
    "workers": (
        (None, 1),
        "asgireload runs one worker per generation and replaces it on every change; for N workers "
        "without reload, use uvicorn --workers N",
    ),
    "limit_max_requests": (
        (None,),
        "a worker that exits after N requests would be taken for a crash; for that, use uvicorn "
        "without reload",
    ),
    "limit_max_requests_jitter": ((0,), "it only spreads --limit-max-requests, which is refused"),
}
# uvicorn's options that are accepted and change nothing here, and why (for the docs and tests).
NO_EFFECT = {
    "reload": "asgireload always reloads",
    "timeout_worker_healthcheck": "it only concerns uvicorn's --workers processes",
}


def check_uvicorn_options(config: Any, fail: Callable[[str, str], Exception]) -> None:
    """The ranges and combinations of the options taken from uvicorn (types are checked already)."""
    for name, (allowed, reason) in REFUSED.items():
        if getattr(config, name) not in allowed:
            raise fail(name, f"cannot be {getattr(config, name)!r} here: {reason}.")
    for name in ("reload_delay", "timeout_graceful_shutdown", "ws_ping_interval", "ws_ping_timeout"):
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise fail(name, f"must be a number of seconds, 0 or more, got {value}.")
    minimums = {
        "timeout_keep_alive": 0,
        "timeout_worker_healthcheck": 0,
        "limit_concurrency": 1,
        "backlog": 1,
        "h11_max_incomplete_event_size": 1,
        "ws_max_size": 1,
        "ws_max_queue": 1,
    }
    for name, minimum in minimums.items():
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise fail(name, f"must be {minimum} or more, got {value}.")
    if config.ssl_cert_reqs not in (0, 1, 2):
        raise fail(
            "ssl_cert_reqs", f"must be 0 (none), 1 (optional) or 2 (required), got {config.ssl_cert_reqs}"
        )
    for header in config.headers:
        name, colon, _ = header.partition(":")
        if not colon or not _HEADER_NAME.match(name.strip()):
            raise fail("headers", f"takes 'Name: value', got {header!r}.")
        if not header.isascii() or any(ord(c) < 32 and c != "\t" for c in header):
            raise fail("headers", f"must be printable ASCII, got {header!r}.")
    if config.ssl_certfile is None:
        for name in ("ssl_keyfile", "ssl_keyfile_password", "ssl_ca_certs", "ssl_ciphers"):
            if getattr(config, name) is not None:
                raise fail(name, "needs --ssl-certfile too (the certificate to serve).")
    if config.http2 and config.http != "zttp":
        raise fail("http2", f"needs --http zttp (uvicorn's HTTP/2 protocol), got --http {config.http}.")
