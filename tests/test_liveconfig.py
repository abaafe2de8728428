"""Configuration that applies itself, in a real pseudo-terminal: `[tool.asgireload]` and `--log-config`
saved while the command runs apply at the next generation; what needs a restart is said; a bad
save is one error line and the previous settings keep serving."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from .test_cli import ProcStat, client, write_atomically
from .test_keys import exits_cleanly, start
from .test_terminal import Terminal, terminal_session, wait_for_children

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

APP = """\
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["root_path"].encode() or b"-"})
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text(APP)
    (tmp_path / "pyproject.toml").write_text('[tool.asgireload]\nroot_path = "/one"\n')
    return tmp_path


async def served(port: int) -> str:
    async with client() as http:
        return (await http.get(f"http://127.0.0.1:{port}/")).text


def save(project: Path, text: str, name: str = "pyproject.toml") -> None:
    write_atomically(project / name, text)


async def said(terminal: Terminal, pattern: str, after: int) -> int:
    """Wait for `pattern`; return where the terminal's text ends now."""
    await terminal.wait_for(pattern, after)
    return len(terminal.text)


async def test_a_saved_setting_applies_and_a_restart_one_is_named(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start(terminal, project)
        workers |= await wait_for_children(process.pid, 2)
        assert await served(port) == "/one"

        after = len(terminal.text)
        save(project, '[tool.asgireload]\nroot_path = "/two"\n')
        await terminal.wait_for(r"pyproject\.toml: root_path applies from the next generation\.", after)
        after = await said(terminal, r"Reloaded in \d+ ms \(generation 2\): pyproject\.toml changed", after)
        assert await served(port) == "/two"

        # the host needs a restart: said, and the server stays where it is; root_path applies. The
        # port is a flag (--port 0), which wins over the file: not a change at all
        save(project, '[tool.asgireload]\nroot_path = "/three"\nport = 1\nhost = "0.0.0.0"\n')
        await terminal.wait_for(
            r"pyproject\.toml: host changed, which applies only when asgireload is restarted\.", after
        )
        after = await said(terminal, r"Reloaded in \d+ ms \(generation 3\)", after)
        assert await served(port) == "/three"

        # only a restart key (or a comment) changed: nothing to reload
        save(project, '[tool.asgireload]\nroot_path = "/three"\nport = 2\nhost = "::"\n# note\n')
        await terminal.wait_for(r"host changed, which applies only when asgireload is restarted", after)
        workers |= await wait_for_children(process.pid, 2)
        terminal.type("q")
        await exits_cleanly(process, workers, port)
        assert "generation 4" not in terminal.text


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("[tool.asgireload\nroot_pa", r"pyproject\.toml"),  # saved half-written
        ('[tool.asgireload]\ndrain_timeout = "soon"\n', r"pyproject\.toml.*drain_timeout"),
        (None, r"pyproject\.toml: No such file"),
    ],
    ids=["half-written", "bad-value", "deleted"],
)
async def test_a_bad_save_is_one_line_and_the_previous_settings_keep_serving(
    project: Path, bad: str | None, error: str
) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start(terminal, project)
        workers |= await wait_for_children(process.pid, 2)
        after = len(terminal.text)
        if bad is None:
            (project / "pyproject.toml").unlink()
        else:
            save(project, bad)
        match = await terminal.wait_for(
            rf"ERROR: +[^\n]*{error}[^\n]*the previous settings keep serving\.", after
        )
        assert await served(port) == "/one"
        after = match.end()
        save(project, '[tool.asgireload]\nroot_path = "/fixed"\n')  # then saved whole
        await terminal.wait_for(r"Reloaded in \d+ ms \(generation 2\): pyproject\.toml changed", after)
        assert await served(port) == "/fixed"
        assert "generation 3" not in terminal.text
        assert "Traceback" not in terminal.text
        workers |= await wait_for_children(process.pid, 2)
        terminal.type("q")
        await exits_cleanly(process, workers, port)


def log_config(prefix: str) -> str:
    formatter = {"format": f"{prefix} %(levelname)s %(message)s"}
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    loggers = {
        name: {"handlers": ["out"], "level": "INFO", "propagate": False} for name in ("uvicorn", "asgireload")
    }
    return json.dumps(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": formatter},
            "handlers": {"out": handler},
            "loggers": loggers,
        }
    )


async def test_a_saved_log_config_applies_and_a_broken_one_is_refused(project: Path) -> None:
    save(project, log_config("ONE"), "log.json")
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process = await terminal.start(
            [sys.executable, "-m", "asgireload", "main:app", "--port", "0", "--log-config", "log.json"],
            project,
        )
        port = int((await terminal.wait_for(r"ONE INFO Started main:app in \d+ ms, serving on \S+:(\d+)"))[1])
        workers |= await wait_for_children(process.pid, 2)

        after = len(terminal.text)
        save(project, "{not json", "log.json")
        after = await said(
            terminal, r"ONE ERROR [^\n]*log\.json[^\n]*the previous settings keep serving\.", after
        )
        save(project, log_config("TWO"), "log.json")
        await terminal.wait_for(
            r"TWO INFO log\.json: the log configuration applies from the next generation", after
        )
        # the new generation's uvicorn lines too: its worker was started with the new file
        await terminal.wait_for(r"TWO INFO Application startup complete", after)
        await terminal.wait_for(r"TWO INFO Reloaded in \d+ ms \(generation 2\): log\.json changed", after)
        assert await served(port) == "/one"
        assert not re.search(r"ONE INFO Reloaded", terminal.text)
        workers |= await wait_for_children(process.pid, 2)
        terminal.type("q")
        await exits_cleanly(process, workers, port)
