"""`--clear-screen`, in a real pseudo-terminal: a clear per new generation, never over an unseen error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .test_cli import ProcStat, app_source, write_atomically
from .test_keys import HINT, exits_cleanly, start
from .test_terminal import Terminal, terminal_session, wait_for_children

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

CLEAR = b"\x1b[H\x1b[2J"
BROKEN = "def broken(:\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text(app_source("v1"))
    return tmp_path


def clears(terminal: Terminal) -> int:
    return terminal.output.count(CLEAR)


async def edit(terminal: Terminal, project: Path, source: str, generation: int, outcome: str) -> None:
    """Save main.py and wait until generation `generation` is ready (or has failed)."""
    after = len(terminal.text)
    write_atomically(project / "main.py", source)
    if outcome == "ready":
        await terminal.wait_for(rf"Reloaded in \d+ ms \(generation {generation}\)", after)
    else:
        await terminal.wait_for(r"SyntaxError", after)
        await terminal.wait_for(rf"(?i)generation {generation}[^\n]*(fail|could not)", after)


async def test_each_generation_clears_but_not_over_an_unseen_error(project: Path) -> None:
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start(terminal, project, "--clear-screen")
        workers |= await wait_for_children(process.pid, 2)
        assert clears(terminal) == 0  # never for the first generation

        await edit(terminal, project, app_source("v2"), 2, "ready")
        assert clears(terminal) == 1
        await terminal.wait_for(
            rf"Cleared the screen for generation 2; the app is at http://127\.0\.0\.1:{port}"
        )

        await edit(terminal, project, BROKEN, 3, "failed")  # cleared when it started: nothing unseen yet
        assert clears(terminal) == 2
        error_shown_at = len(terminal.output)
        await edit(terminal, project, app_source("v4"), 4, "ready")  # the fix: the error stays
        assert clears(terminal) == 2
        assert b"SyntaxError" in terminal.output  # still on the screen, above the fix's line
        assert terminal.output.rfind(CLEAR) < error_shown_at

        await edit(terminal, project, app_source("v5"), 5, "ready")  # seen, fixed: clears again
        assert clears(terminal) == 3

        await edit(terminal, project, BROKEN, 6, "failed")
        after = len(terminal.text)
        terminal.type("h")  # a round trip through the supervisor: the failure is settled by now
        await terminal.wait_for(r"Keys: r reload now", after)
        raw = len(terminal.output)
        terminal.type("c")  # cleared by hand: the error has been seen
        await terminal.wait_for_bytes(CLEAR, raw)
        await edit(terminal, project, app_source("v7"), 7, "ready")
        assert clears(terminal) == 6  # 4 at generation 6, 5 by hand, 6 at generation 7

        terminal.type("q")
        await exits_cleanly(process, workers, port)


@pytest.mark.parametrize("how", ["default", "pyproject", "variable-off"])
async def test_off_by_default_and_set_from_the_file_or_a_variable(project: Path, how: str) -> None:
    before: list[str] = []
    if how == "pyproject":
        (project / "pyproject.toml").write_text("[tool.asgireload]\nclear_screen = true\n")
    if how == "variable-off":
        (project / "pyproject.toml").write_text("[tool.asgireload]\nclear_screen = true\n")
        before = ["env", "ASGIRELOAD_CLEAR_SCREEN=0"]
    workers: set[ProcStat] = set()
    async with terminal_session(project, workers) as terminal:
        process, port = await start(terminal, project, before=before)
        await terminal.wait_for(HINT)
        workers |= await wait_for_children(process.pid, 2)
        await edit(terminal, project, app_source("v2"), 2, "ready")
        assert clears(terminal) == (1 if how == "pyproject" else 0)
        terminal.type("q")
        await exits_cleanly(process, workers, port)
