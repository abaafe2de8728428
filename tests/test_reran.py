"""End to end: the Reloaded line says what a reload ran, and the debug log what the graph says."""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import write
from .test_cli import client, run_cli, write_atomically

RELOADED = r"Reloaded in \d+ ms \(generation {}\): {} changed; re-ran 6 of 6 project modules$"
NEEDED = re.compile(
    r"Generation (\d): the import graph says \d+ project modules had to run again: (.*)$", re.M
)

MAIN = """\
import other
from routes import items


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": items.VALUE.encode()})
"""


def chain_project(folder: Path) -> None:
    """main -> routes.items -> services -> models, and main -> other beside the chain."""
    write(folder / "main.py", MAIN)
    write(folder / "other.py", "")
    write(folder / "routes/__init__.py", "")
    write(folder / "routes/items.py", "import services\nVALUE = services.VALUE\n")
    write(folder / "services.py", "from models import VALUE\n")
    write(folder / "models.py", "VALUE = 'first'\n")


async def test_the_log_names_the_file_the_counts_and_the_modules_that_had_to_run_again(
    tmp_path: Path,
) -> None:
    chain_project(tmp_path)
    async with run_cli(
        tmp_path, "main:app", "--port", "0", "--log-level", "debug", "--lifespan", "off", "--no-project-layer"
    ) as cli:
        port = await cli.started()
        async with client() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "first"
            write_atomically(tmp_path / "models.py", "VALUE = 'second'\n")
            await cli.wait_for_line(RELOADED.format(2, r"models\.py"))
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "second"
            write_atomically(tmp_path / "routes/items.py", "import services\nVALUE = 'third'\n")
            await cli.wait_for_line(RELOADED.format(3, r"routes/items\.py"))
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "third"
        said = NEEDED.findall(cli.transcript())
        assert said == [("2", "main, routes.items, services, models"), ("3", "main, routes.items")], (
            cli.transcript()
        )
