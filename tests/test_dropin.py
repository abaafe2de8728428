"""asgireload as a drop-in for uvicorn: every uvicorn option, and the ones that do real work.

The options list is checked against the installed uvicorn's own click command, so a new
uvicorn option fails here rather than being a silent gap. End-to-end: HTTPS with a certificate
made in the test (a real handshake, across a reload), --log-config reformatting every line
(the supervisor's too), --header on every generation, --backlog on the bound socket.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import re
import shutil
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme  # the [test] extra installs it (with cryptography), and PyYAML
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from asgireload._uvicorn import NO_EFFECT, REFUSED
from asgireload.cli import build_parser, parse_config
from asgireload.config import Config, cli_flag, option_fields
from asgireload.errors import ConfigError

from .test_cli import (
    app_source,
    client,
    fails_with_one_line,
    free_port,
    port_is_free,
    run_cli,
    write_atomically,
)

ROOT = Path(__file__).resolve().parent.parent
CLI_ONLY = {"app", "version", "reload"}  # not options of Config: the argument, --version, the no-op


def write_atomically_in(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def uvicorn_params() -> list[Any]:
    importlib.import_module("uvicorn.main")
    main = sys.modules["uvicorn.main"].main  # the click command (uvicorn.main is also the module)
    return list(main.params)


def fields() -> dict[str, Any]:
    return {f.name: f for f in option_fields()}


# ------------------------------------------------------------------------ the option list


def test_every_uvicorn_option_is_accepted_or_refused_with_a_reason() -> None:
    import uvicorn.main  # noqa: F401  (the module, so that sys.modules has it)

    ours = fields()
    help_text = build_parser().format_help()
    for param in uvicorn_params():
        if param.name in CLI_ONLY:
            assert param.name == "app" or param.opts[0] in help_text, param.opts
            continue
        assert param.name in ours, f"uvicorn's {param.opts[0]} is neither accepted nor refused"
        field = ours[param.name]
        assert cli_flag(field) == param.opts[0], (cli_flag(field), param.opts)
        if param.secondary_opts:
            assert field.metadata["negatable"], f"{param.opts[0]} should have {param.secondary_opts[0]}"
        if param.name in REFUSED:
            assert REFUSED[param.name][1], param.name


# Where our default differs from uvicorn's, and why (everything else must match).
DIFFERENT_DEFAULTS = {
    "port": "same value",
    "reload_delay": "None means the adaptive debounce (2 ms, 50 ms in a burst), faster than 0.25 s",
    "app_dir": "'.' and '' are both the current folder",
    "reload_dirs": "an empty tuple, not click's UNSET",
    "reload_includes": "an empty tuple",
    "reload_excludes": "an empty tuple",
    "headers": "an empty tuple",
}


def test_types_and_defaults_match_uvicorn() -> None:
    import click

    ours = fields()
    for param in uvicorn_params():
        if param.name in CLI_ONLY or param.name in DIFFERENT_DEFAULTS:
            continue
        field = ours[param.name]
        assert field.default == param.default, (param.name, field.default, param.default)
        kind = str(field.type)
        if isinstance(param.type, click.types.BoolParamType):
            assert kind.startswith("bool"), param.name
        elif isinstance(param.type, click.types.IntParamType):
            assert kind.startswith(("int", "float")), param.name  # float: a superset (seconds)
        elif isinstance(param.type, click.types.FloatParamType):
            assert kind.startswith("float"), param.name
        elif isinstance(param.type, click.Choice):
            assert set(param.type.choices) <= set(field.metadata["choices"]), param.name


def test_the_refused_and_no_effect_tables_name_real_options() -> None:
    names = {p.name for p in uvicorn_params()}
    assert set(REFUSED) <= names
    assert set(NO_EFFECT) <= names


def uvicorn_command_line() -> list[str]:
    return [
        "main:app", "--reload", "--port", "8080", "--reload-delay", "0.5", "--workers", "1",
        "--ws-max-size", "1000", "--ws-max-queue", "4", "--ws-ping-interval", "5",
        "--ws-ping-timeout", "6", "--no-ws-per-message-deflate", "--use-colors",
        "--no-server-header", "--no-date-header", "--limit-concurrency", "50", "--backlog", "64",
        "--timeout-keep-alive", "9", "--timeout-graceful-shutdown", "3",
        "--timeout-worker-healthcheck", "7", "--header", "X-One: 1", "--header", "X-Two: 2",
        "--h11-max-incomplete-event-size", "4096", "--reset-contextvars", "--limit-max-requests-jitter", "0",
    ]  # fmt: skip


def test_a_uvicorn_command_line_parses_into_uvicorns_meaning() -> None:
    config = parse_config(uvicorn_command_line())
    options = config.uvicorn_options()
    assert options["headers"] == [["X-One", "1"], ["X-Two", "2"]]
    assert options["server_header"] is False
    assert options["date_header"] is False
    assert options["ws_max_size"] == 1000
    assert options["ws_per_message_deflate"] is False
    assert options["backlog"] == 64
    assert options["use_colors"] is True
    assert config.drain_timeout == 3.0  # --timeout-graceful-shutdown is the drain timeout
    assert config.reload_delay == 0.5
    import uvicorn

    uvicorn.Config(app="main:app", **options, log_config=None)  # every name is uvicorn.Config's too


# Options the supervisor (or asgireload itself) handles: they never reach the worker's uvicorn.Config.
SUPERVISOR_HANDLED = {
    "host", "port", "uds", "fd", "factory", "env_file", "reload", "reload_dirs", "reload_includes",
    "reload_excludes", "reload_delay", "timeout_graceful_shutdown", "workers", "limit_max_requests",
    "limit_max_requests_jitter", "timeout_worker_healthcheck",
}  # fmt: skip
# A value other than the default for each option that needs one of a particular form.
NON_DEFAULT: dict[str, Any] = {
    "headers": ("X-A: 1",),
    "log_level": "debug",
    "forwarded_allow_ips": "10.0.0.1",
    "root_path": "/api",
    "ssl_ciphers": "ECDHE+AESGCM",
    "ssl_cert_reqs": 1,
}


def _other_value(field: Any) -> Any:
    if field.name in NON_DEFAULT:
        return NON_DEFAULT[field.name]
    choices = field.metadata["choices"]
    if choices:
        return next(c for c in choices if c != field.default and c not in ("zttp", "zuvloop"))
    kind = str(field.type)
    if kind.startswith("bool"):
        return not field.default if field.default is not None else True
    if kind.startswith("int"):
        return (field.default or 0) + 7
    if kind.startswith("float"):
        return (field.default or 0) + 1.5
    return f"/some/{field.name}.pem"


def test_every_option_uvicorn_takes_reaches_it() -> None:
    """Each Config field that is a uvicorn.Config parameter too, set to something else than its
    default, is in uvicorn_options() with that value (or the supervisor handles it)."""
    import inspect

    import uvicorn

    parameters = set(inspect.signature(uvicorn.Config).parameters) - {"app"}
    shared = [f for f in option_fields() if f.name in parameters and f.name not in SUPERVISOR_HANDLED]
    assert len(shared) > 30, [f.name for f in shared]
    for field in shared:
        value = _other_value(field)
        extra = {"ssl_certfile": "/some/cert.pem"} if field.name.startswith("ssl_") else {}
        if field.name == "http2":
            extra = {"http": "zttp"}
        options = Config(app="main:app", **{**extra, field.name: value}).uvicorn_options()
        expected = [["X-A", "1"]] if field.name == "headers" else value
        assert options.get(field.name, "missing") == expected, (field.name, value, options.get(field.name))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"headers": [("X-A", "1")]}, {"headers": [["X-A", "1"]]}),  # uvicorn.Config's own form
        ({"headers": ["X-A: 1", ["X-B", "2"]]}, {"headers": [["X-A", "1"], ["X-B", "2"]]}),
        ({"forwarded_allow_ips": ["10.0.0.1", "10.0.0.2"]}, {"forwarded_allow_ips": "10.0.0.1,10.0.0.2"}),
        ({"log_config": {"version": 1}}, {"log_config": {"version": 1}}),
        ({}, {"log_level": None}),  # uvicorn's default: info, unless a log config sets the levels
    ],
)
def test_uvicorns_forms_of_values_are_accepted(given: dict[str, Any], expected: dict[str, Any]) -> None:
    options = Config(app="main:app", **given).uvicorn_options()
    for name, value in expected.items():
        assert options[name] == value


def test_only_changed_options_reach_uvicorn() -> None:
    options = Config(app="main:app").uvicorn_options()
    assert "ssl_certfile" not in options
    assert "backlog" not in options
    assert "http2" not in options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 2}, "workers (--workers) cannot be 2 here: asgireload runs one worker per generation"),
        ({"workers": 0}, "workers (--workers) cannot be 0"),
        ({"limit_max_requests": 100}, "limit_max_requests (--limit-max-requests) cannot be 100"),
        ({"limit_max_requests_jitter": 5}, "--limit-max-requests-jitter) cannot be 5"),
        ({"backlog": 0}, "backlog (--backlog) must be 1 or more"),
        ({"limit_concurrency": 0}, "limit_concurrency (--limit-concurrency) must be 1 or more"),
        ({"ws_max_size": -1}, "ws_max_size (--ws-max-size) must be 1 or more"),
        ({"timeout_keep_alive": -1}, "timeout_keep_alive (--timeout-keep-alive) must be 0 or more"),
        ({"reload_delay": -0.5}, "reload_delay (--reload-delay) must be a number of seconds"),
        ({"reload_delay": float("inf")}, "reload_delay (--reload-delay) must be a number of seconds"),
        ({"timeout_graceful_shutdown": -1}, "--timeout-graceful-shutdown) must be a number of seconds"),
        ({"ws_ping_interval": float("nan")}, "ws_ping_interval (--ws-ping-interval) must be a number"),
        ({"headers": ("X-No-Colon",)}, "headers (--header) takes 'Name: value', got 'X-No-Colon'"),
        ({"headers": (": value",)}, "headers (--header) takes 'Name: value'"),
        ({"headers": ("X Bad: v",)}, "headers (--header) takes 'Name: value'"),
        ({"headers": ("X-A: caf\u00e9",)}, "headers (--header) must be printable ASCII"),
        ({"headers": ("X-A: a\nb",)}, "headers (--header) must be printable ASCII"),
        ({"headers": "X-A: 1"}, "headers (--header) must be a tuple of strings"),
        ({"ssl_keyfile": "key.pem"}, "ssl_keyfile (--ssl-keyfile) needs --ssl-certfile"),
        ({"ssl_ca_certs": "ca.pem"}, "ssl_ca_certs (--ssl-ca-certs) needs --ssl-certfile"),
        ({"ssl_cert_reqs": 5}, "ssl_cert_reqs (--ssl-cert-reqs) must be 0 (none), 1 (optional) or 2"),
        ({"http2": True}, "http2 (--http2) needs --http zttp"),
        ({"use_colors": "yes"}, "use_colors (--use-colors) must be True or False"),
        ({"backlog": 2.5}, "backlog (--backlog) must be a whole number"),
    ],
)
def test_a_bad_uvicorn_option_is_one_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config(app="main:app", **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ bad input, end to end


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text(app_source("first"))
    return tmp_path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA, a certificate for 127.0.0.1 and localhost signed by it, and an unrelated key."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    other = trustme.CA().issue_cert("127.0.0.1")
    paths = {
        "ca": folder / "ca.pem",
        "cert": folder / "cert.pem",
        "key": folder / "key.pem",
        "other_key": folder / "other-key.pem",
        "garbage": folder / "garbage.pem",
        "encrypted_key": folder / "encrypted-key.pem",
        "rsa_key": folder / "rsa-key.pem",
    }
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    paths["rsa_key"].write_bytes(  # PKCS#8, "BEGIN PRIVATE KEY": what OpenSSL cannot pair at all
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    other.private_key_pem.write_to_path(str(paths["other_key"]))
    paths["garbage"].write_text("not a certificate\n")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    encrypted = serialization.BestAvailableEncryption(b"s3cret")
    paths["encrypted_key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encrypted)
    )
    return paths


BAD_INPUT = [
    pytest.param(["--http", "zttp"], ["--http zttp needs the zttp package"], id="zttp-missing"),
    pytest.param(["--http2"], ["--http2", "needs --http zttp"], id="http2-without-zttp"),
    *[  # only where the package is missing: named before binding, not a traceback in every worker
        pytest.param(
            [flag, package], [f"{flag} {package} needs the {package} package"], id=f"{package}-missing"
        )
        for flag, package in (("--loop", "uvloop"), ("--ws", "wsproto"), ("--http", "httptools"))
        if importlib.util.find_spec(package) is None
    ],
    pytest.param(["--workers", "2"], ["--workers", "one worker per generation"], id="workers-2"),
    pytest.param(["--limit-max-requests", "10"], ["--limit-max-requests", "crash"], id="limit-max-requests"),
    pytest.param(["--header", "nocolon"], ["--header", "'nocolon'"], id="header-without-colon"),
    pytest.param(["--backlog", "0"], ["--backlog", "1 or more"], id="backlog-0"),
    pytest.param(["--ws-max-size", "big"], ["--ws-max-size", "'big'"], id="ws-max-size-not-a-number"),
    pytest.param(
        ["--ssl-keyfile", "{key}"], ["--ssl-keyfile", "needs --ssl-certfile"], id="key-without-cert"
    ),
    pytest.param(
        ["--ssl-certfile", "{tmp}/nope.pem"],
        ["--ssl-certfile", "nope.pem", "does not exist"],
        id="cert-missing",
    ),
    pytest.param(
        ["--ssl-certfile", "{cert}", "--ssl-keyfile", "{tmp}/nokey.pem"],
        ["--ssl-keyfile", "nokey.pem"],
        id="key-missing",
    ),
    pytest.param(
        ["--ssl-certfile", "{cert}", "--ssl-keyfile", "{other_key}"],
        ["does not match the certificate"],
        id="key-mismatch",
    ),
    pytest.param(  # OpenSSL says NO_CERTIFICATE_ASSIGNED here, which is no reason to doubt the PEM
        ["--ssl-certfile", "{cert}", "--ssl-keyfile", "{rsa_key}"],  # trustme's certificate is EC
        ["does not match the certificate", "rsa-key.pem", "each loads alone"],
        id="ec-cert-rsa-key",
    ),
    pytest.param(
        ["--ssl-certfile", "{cert}", "--ssl-keyfile", "{encrypted_key}"],
        ["encrypted-key.pem is encrypted", "--ssl-keyfile-password"],
        id="key-encrypted-no-password",
    ),
    pytest.param(
        ["--ssl-certfile", "{cert}", "--ssl-keyfile", "{encrypted_key}", "--ssl-keyfile-password", "nope"],
        ["cannot decrypt the key", "encrypted-key.pem"],
        id="key-wrong-password",
    ),
    pytest.param(
        ["--ssl-certfile", "{cert}", "--ssl-keyfile", "{key}", "--ssl-ca-certs", "{garbage}"],
        ["--ssl-ca-certs", "garbage.pem"],
        id="ca-certs-garbage",
    ),
    pytest.param(
        ["--ssl-certfile", "{cert}", "--ssl-keyfile", "{key}", "--ssl-version", "999"],
        ["--ssl-version 999"],
        id="ssl-version",
    ),
    pytest.param(
        ["--ssl-certfile", "{garbage}"], ["cannot load the certificate", "garbage.pem"], id="cert-garbage"
    ),
    pytest.param(
        ["--ssl-certfile", "{cert}", "--ssl-keyfile", "{key}", "--ssl-ciphers", "NO-SUCH-CIPHER"],
        ["--ssl-ciphers", "NO-SUCH-CIPHER"],
        id="ciphers",
    ),
    pytest.param(
        ["--log-config", "{tmp}/nolog.json"], ["--log-config", "nolog.json"], id="log-config-missing"
    ),
    pytest.param(
        ["--log-config", "{tmp}/bad.json"],
        ["--log-config", "bad.json", "not valid JSON"],
        id="log-config-json",
    ),
    pytest.param(["--log-config", "{tmp}/bad.ini"], ["--log-config", "bad.ini"], id="log-config-ini"),
    pytest.param(
        ["--log-config", "{tmp}/wrong.json"],
        ["cannot apply --log-config", "wrong.json"],
        id="log-config-apply",
    ),
    pytest.param(
        ["--log-config", "{tmp}/list.yaml"], ["--log-config", "list.yaml", "dictConfig"], id="log-config-yaml"
    ),
]


@pytest.mark.parametrize(("argv", "expected"), BAD_INPUT)
async def test_bad_uvicorn_option_is_one_line_before_binding(
    project: Path, tls: dict[str, Path], argv: list[str], expected: list[str]
) -> None:
    (project / "bad.json").write_text("{not json")
    (project / "bad.ini").write_text("[loggers\nkeys=root\n")
    (project / "wrong.json").write_text(
        json.dumps({"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}})
    )
    (project / "list.yaml").write_text("- a\n- b\n")
    port = free_port()
    values = {"tmp": str(project), **{name: str(path) for name, path in tls.items()}}
    args = [arg.format(**values) for arg in argv]
    async with run_cli(project, "main:app", "--port", str(port), *args) as cli:
        await fails_with_one_line(cli, *(text.format(**values) for text in expected))
    assert port_is_free(port), f"port {port} was left bound"


# ------------------------------------------------------------------------ working options, end to end


SERVING = re.compile(r"serving on (https?)://127\.0\.0\.1:(\d+) ")


async def test_https_with_a_certificate_made_here_across_a_reload(
    project: Path, tls: dict[str, Path]
) -> None:
    args = ["main:app", "--port", "0", "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile", str(tls["key"])]
    async with run_cli(project, *args) as cli:
        match = await cli.wait_for_line(SERVING)
        assert match[1] == "https", cli.transcript()
        url = f"https://127.0.0.1:{match[2]}/"
        context = ssl.create_default_context(cafile=str(tls["ca"]))
        async with httpx.AsyncClient(verify=context, timeout=20, trust_env=False) as http:
            first = await http.get(url)
            assert (first.status_code, first.text) == (200, "first"), cli.transcript()
            slow = asyncio.create_task(http.get(url + "slow"))  # in flight across the reload
            await cli.wait_for_line("SLOW-REQUEST-RECEIVED")
            write_atomically(project / "main.py", app_source("second"))
            await cli.wait_for_line(r"Reloaded in \d+ ms \(generation 2\)")
            again = await http.get(url)  # same client: its idle TLS connection was closed, not cut
            assert (again.status_code, again.text) == (200, "second"), cli.transcript()
            slow.cancel()
        async with httpx.AsyncClient(timeout=20, trust_env=False) as plain:
            with pytest.raises(httpx.HTTPError):  # the test CA is needed: it is real TLS
                await plain.get(url)


async def test_https_slow_request_finishes_across_a_reload(project: Path, tls: dict[str, Path]) -> None:
    # /slow answers once the test releases it (a file), so it is surely in flight across the reload
    release = project / "release"
    wait = f"""for _ in range(2000):
            if __import__("os").path.exists({str(release)!r}):
                break
            await asyncio.sleep(0.01)"""
    source = app_source("first").replace("await asyncio.sleep(30)", wait)
    (project / "main.py").write_text(source)
    args = ["main:app", "--port", "0", "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile", str(tls["key"])]
    async with run_cli(project, *args) as cli:
        match = await cli.wait_for_line(SERVING)
        url = f"https://127.0.0.1:{match[2]}/"
        context = ssl.create_default_context(cafile=str(tls["ca"]))
        async with httpx.AsyncClient(verify=context, timeout=20, trust_env=False) as http:
            slow = asyncio.create_task(http.get(url + "slow"))
            await cli.wait_for_line("SLOW-REQUEST-RECEIVED")
            write_atomically(project / "main.py", source.replace("'first'", "'second'"))
            await cli.wait_for_line(r"Reloaded in \d+ ms \(generation 2\)")  # generation 1 drains
            release.touch()
            response = await slow  # began under generation 1: finished by it, over TLS
            assert (response.status_code, response.text) == (200, "first"), cli.transcript()
            assert response.headers["connection"] == "close"  # a TLS session cannot move: told so
            assert (await http.get(url)).text == "second"


LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"custom": {"format": "CUSTOM|%(name)s|%(levelname)s|%(message)s"}},
    "handlers": {
        "err": {"class": "logging.StreamHandler", "formatter": "custom", "stream": "ext://sys.stderr"},
        "out": {"class": "logging.StreamHandler", "formatter": "custom", "stream": "ext://sys.stdout"},
    },
    "loggers": {
        "uvicorn": {"handlers": ["err"], "level": "INFO", "propagate": False},
        "uvicorn.access": {"handlers": ["out"], "level": "INFO", "propagate": False},
    },
}
LOG_INI = """\
[loggers]
keys=root,uvicorn,access

[handlers]
keys=err,out

[formatters]
keys=custom

[logger_root]
level=WARNING
handlers=err

[logger_uvicorn]
level=INFO
handlers=err
propagate=0
qualname=uvicorn

[logger_access]
level=INFO
handlers=out
propagate=0
qualname=uvicorn.access

[handler_err]
class=StreamHandler
formatter=custom
args=(sys.stderr,)

[handler_out]
class=StreamHandler
formatter=custom
args=(sys.stdout,)

[formatter_custom]
format=CUSTOM|%(name)s|%(levelname)s|%(message)s
"""


@pytest.mark.parametrize("kind", ["json", "yaml", "ini"])
async def test_log_config_formats_every_line_the_supervisors_too(project: Path, kind: str) -> None:
    if kind == "yaml":
        (project / "log.yaml").write_text(yaml.safe_dump(LOG_CONFIG))
    elif kind == "json":
        (project / "log.json").write_text(json.dumps(LOG_CONFIG))
    else:
        (project / "log.ini").write_text(LOG_INI)
    async with run_cli(project, "main:app", "--port", "0", "--log-config", f"log.{kind}") as cli:
        match = await cli.wait_for_line(
            r"^CUSTOM\|asgireload\|INFO\|Started main:app .* serving on http://127\.0\.0\.1:(\d+)"
        )
        url = f"http://127.0.0.1:{match[1]}/"
        async with client() as http:
            assert (await http.get(url)).text == "first"
            await cli.wait_for_line(
                r"^CUSTOM\|uvicorn\.access\|INFO\|.*GET / HTTP/1\.1.* 200", stream="stdout"
            )
            write_atomically(project / "main.py", app_source("second"))
            await cli.wait_for_line(r"^CUSTOM\|asgireload\|INFO\|Reloaded in \d+ ms \(generation 2\)")
            assert (await http.get(url)).text == "second"
            await cli.wait_for_line(r"^CUSTOM\|uvicorn\.error\|INFO\|Application startup complete")
        cli.send(2)
        assert await cli.exited() == 0
    lines = [line for _, line in cli.lines if line.strip()]
    assert len(lines) >= 6, cli.transcript()
    assert all(line.startswith("CUSTOM|") for line in lines), cli.transcript()


ROOT_ONLY = {  # no uvicorn logger handled: everything reaches the root handler, as with uvicorn
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"f": {"format": "ROOT|%(name)s|%(levelname)s|%(message)s"}},
    "handlers": {"h": {"class": "logging.StreamHandler", "formatter": "f", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["h"]},
    "loggers": {"uvicorn.access": {"level": "INFO"}, "uvicorn.error": {"level": "WARNING"}},
}


async def test_a_root_only_log_config_is_all_there_is(project: Path) -> None:
    """Only the user's file applies (not uvicorn's default set-up under it), and its levels stay:
    no --log-level given means none overrides uvicorn.error's WARNING."""
    (project / "log.json").write_text(json.dumps(ROOT_ONLY))
    async with run_cli(project, "main:app", "--port", "0", "--log-config", "log.json") as cli:
        match = await cli.wait_for_line(
            r"^ROOT\|asgireload\|INFO\|Started main:app .* http://127\.0\.0\.1:(\d+)"
        )
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{match[1]}/")).text == "first"
        await cli.wait_for_line(r"^ROOT\|uvicorn\.access\|INFO\|.*GET / HTTP/1\.1.* 200")
        cli.send(2)
        assert await cli.exited() == 0
    lines = [line for _, line in cli.lines if line.strip()]
    assert all(line.startswith("ROOT|") for line in lines), cli.transcript()  # no uvicorn default line
    assert not any("Application startup complete" in line for line in lines), cli.transcript()


async def test_log_level_given_overrides_the_files_levels(project: Path) -> None:
    (project / "log.json").write_text(json.dumps(ROOT_ONLY))
    args = ["main:app", "--port", "0", "--log-config", "log.json", "--log-level", "info"]
    async with run_cli(project, *args) as cli:
        await cli.wait_for_line(r"^ROOT\|uvicorn\.error\|INFO\|Application startup complete")
        cli.send(2)
        assert await cli.exited() == 0


LOG_WITH_A_PROJECT_CLASS = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"mine": {"()": "mylog.Formatter"}},
    "handlers": {"h": {"class": "logging.StreamHandler", "formatter": "mine", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["h"]},
}
MYLOG = """
import logging


class Formatter(logging.Formatter):
    def format(self, record):
        return "MYLOG|" + record.name + "|" + record.getMessage()
"""


async def test_a_log_config_may_name_a_class_of_the_project(tmp_path: Path) -> None:
    """uvicorn puts the app dir first on sys.path before it applies the file: so do we."""
    write_atomically_in(tmp_path / "src" / "main.py", app_source("first"))
    write_atomically_in(tmp_path / "src" / "mylog.py", MYLOG)
    (tmp_path / "log.json").write_text(json.dumps(LOG_WITH_A_PROJECT_CLASS))
    args = ["main:app", "--app-dir", "src", "--port", "0", "--log-config", "log.json"]
    async with run_cli(tmp_path, *args) as cli:
        match = await cli.wait_for_line(r"^MYLOG\|asgireload\|Started main:app .* http://127\.0\.0\.1:(\d+)")
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{match[1]}/")).text == "first"
        await cli.wait_for_line(r"^MYLOG\|uvicorn\.access\|.*GET / HTTP/1\.1.* 200")
        cli.send(2)
        assert await cli.exited() == 0


async def test_a_log_config_class_that_fails_names_the_cause(tmp_path: Path) -> None:
    write_atomically_in(tmp_path / "main.py", app_source("first"))
    (tmp_path / "log.json").write_text(json.dumps(LOG_WITH_A_PROJECT_CLASS))  # no mylog.py
    async with run_cli(tmp_path, "main:app", "--port", "0", "--log-config", "log.json") as cli:
        await fails_with_one_line(cli, "cannot apply --log-config", "No module named 'mylog'")


SERVE_WITHOUT_RELOAD = """
import asyncio
import sys

import asgireload

asyncio.run(asgireload.serve("main:app", reload=False, port=0, log_config=sys.argv[1]))
"""


async def test_serve_without_reload_applies_the_log_config(project: Path) -> None:
    (project / "log.json").write_text(json.dumps(LOG_WITH_A_PROJECT_CLASS))
    (project / "mylog.py").write_text(MYLOG)
    (project / "serve_it.py").write_text(SERVE_WITHOUT_RELOAD)
    async with run_cli(project, "log.json", command=("serve_it.py",)) as cli:
        match = await cli.wait_for_line(r"^MYLOG\|asgireload\|Serving on http://127\.0\.0\.1:(\d+)")
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{match[1]}/")).text == "first"
        await cli.wait_for_line(r"^MYLOG\|uvicorn\.access\|.*GET / HTTP/1\.1.* 200")
        cli.send(15)
        await cli.exited()


async def test_header_is_on_responses_of_every_generation(project: Path) -> None:
    args = [
        "main:app",
        "--port",
        "0",
        "--header",
        "X-Team: blue",
        "--header",
        "X-Build: 7",
        "--no-server-header",
    ]
    async with run_cli(project, *args) as cli:
        match = await cli.wait_for_line(SERVING)
        url = f"http://127.0.0.1:{match[2]}/"
        async with client() as http:
            for generation, body in ((1, "first"), (2, "second"), (3, "third")):
                if generation > 1:
                    write_atomically(project / "main.py", app_source(body))
                    await cli.wait_for_line(rf"Reloaded in \d+ ms \(generation {generation}\)")
                response = await http.get(url)
                assert response.text == body, cli.transcript()
                assert response.headers["x-team"] == "blue"
                assert response.headers["x-build"] == "7"
                assert "server" not in response.headers
            write_atomically(project / "main.py", "raise RuntimeError('broken on purpose')\n")
            await cli.wait_for_line(r"Generation 4 failed")
            async with asyncio.timeout(20):  # the error page serves right after the failure is logged
                while (failed := await http.get(url)).status_code != 500:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            assert failed.headers["x-team"] == "blue"  # the error page's responses too


async def test_backlog_is_the_bound_sockets(project: Path) -> None:
    if shutil.which("ss") is None:
        if os.environ.get("CI"):
            pytest.fail("ss (iproute2) is needed to read a listening socket's backlog")
        pytest.skip("ss (iproute2) is not installed")
    async with run_cli(project, "main:app", "--port", "0", "--backlog", "37") as cli:
        match = await cli.wait_for_line(SERVING)
        port = match[2]
        ss = await asyncio.create_subprocess_exec(
            "ss", "-ltnH", f"sport = :{port}", stdout=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(10):
            listing = (await ss.communicate())[0].decode()
        # for a listening socket, ss shows the backlog as Send-Q (the third column)
        assert [line.split()[2] for line in listing.splitlines()] == ["37"], listing


async def test_reload_delay_waits_for_quiet(project: Path) -> None:
    """--reload-delay 1.5: two saves 0.2 s apart make one reload, no sooner than 1.5 s after the last."""
    (project / "helper.py").write_text("X = 1\n")
    (project / "main.py").write_text("import helper\n" + app_source("first"))
    async with run_cli(project, "main:app", "--port", "0", "--reload-delay", "1.5") as cli:
        match = await cli.wait_for_line(SERVING)
        write_atomically(project / "helper.py", "X = 2\n")
        await asyncio.sleep(0.2)  # spacing the two saves, not a synchronisation
        write_atomically(project / "main.py", "import helper\n" + app_source("second"))
        last_save = time.monotonic()
        reloaded = await cli.wait_for_line(
            r"Reloaded in \d+ ms \(generation (\d+)\): (.*) changed; re-ran 2 of 2 project modules$"
        )
        waited = time.monotonic() - last_save
        assert reloaded[1] == "2", cli.transcript()
        assert set(reloaded[2].split(", ")) == {"helper.py", "main.py"}, cli.transcript()
        assert waited >= 1.5, waited  # a lower bound: the quiet gap cannot have been skipped
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{match[2]}/")).text == "second"


def test_the_readme_table_lists_exactly_the_command_lines_options() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Options", 1)[1].split("\n\n", 2)[1]
    in_readme = set(re.findall(r"^\| `(--[a-z0-9-]+)", table, flags=re.MULTILINE))
    parser = build_parser()
    in_cli = {
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings and action.option_strings[0] not in ("-h", "--version")
    }
    assert in_readme == in_cli, in_readme ^ in_cli


@pytest.mark.parametrize(("flag", "coloured"), [("--use-colors", True), ("--no-use-colors", False)])
async def test_use_colors_reaches_the_supervisors_lines_and_uvicorns(
    project: Path, flag: str, coloured: bool
) -> None:
    async with run_cli(project, "main:app", "--port", "0", flag) as cli:  # stderr is a pipe
        started = await cli.wait_for_line(SERVING)
        startup = await cli.wait_for_line("Application startup complete")
    assert ("\x1b[32mINFO" in started.string) is coloured, cli.transcript()
    assert ("\x1b[32mINFO" in startup.string) is coloured, cli.transcript()


def test_an_encrypted_key_with_its_password_is_accepted(tls: dict[str, Path]) -> None:
    from asgireload._supervisor.tls import check_tls

    config = Config(
        app="main:app",
        ssl_certfile=str(tls["cert"]),
        ssl_keyfile=str(tls["encrypted_key"]),
        ssl_keyfile_password="s3cret",
    )
    check_tls(config)  # no error, and no pass phrase prompt


def test_the_implementations_uvicorn_offers_are_choices() -> None:
    import uvicorn.config

    ours = fields()
    assert set(uvicorn.config.HTTP_PROTOCOLS) <= set(ours["http"].metadata["choices"])
    assert set(uvicorn.config.WS_PROTOCOLS) <= set(ours["ws"].metadata["choices"])
    assert set(uvicorn.config.LOOP_FACTORIES) - {"none"} <= set(ours["loop"].metadata["choices"])
    assert set(uvicorn.config.INTERFACES) <= set(ours["interface"].metadata["choices"])
    assert set(uvicorn.config.LIFESPAN) <= set(ours["lifespan"].metadata["choices"])
