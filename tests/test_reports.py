"""Failures and output of any size or encoding reach the developer, never a crash loop."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from asgireload import Reloader, StartupError

from .conftest import PLAIN_APP, write

TEXT = {"accept": "text/plain"}


async def page(server: Reloader) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(server.url, headers=TEXT)


async def test_an_exception_over_a_mebibyte_shows_the_error_page(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server:
        huge = "raise RuntimeError('first line\\n' + 'x' * 3_000_000)\n"
        event = await server.edit(plain_app / "main.py", huge)
        assert event.outcome == "failed", server.output[-500:]
        assert event.summary == "RuntimeError: first line"
        assert "characters cut" in event.traceback
        assert len(event.traceback) < 300_000
        response = await page(server)
        assert response.status_code == 500
        assert "RuntimeError: first line" in response.text
        assert "exited with code" not in response.text  # a report, not a crash


async def test_a_multi_line_message_is_summarised_by_its_first_line(plain_app: Path) -> None:
    async with Reloader("main:app", app_dir=plain_app) as server:
        event = await server.edit(
            plain_app / "main.py", "raise ValueError('bad setting\\nFor more, see https://example.invalid')\n"
        )
        assert event.summary == "ValueError: bad setting"


@pytest.mark.skipif(os.uname().sysname == "Darwin", reason="macOS file systems require UTF-8 names")
async def test_an_app_folder_whose_name_is_not_utf8(tmp_path: Path) -> None:
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    write(folder / "main.py", PLAIN_APP)
    async with Reloader("main:app", app_dir=folder) as server:
        assert (await page(server)).text == "v1"
        event = await server.edit(folder / "main.py", PLAIN_APP.replace('"v1"', '"v2"'))
        assert event.outcome == "ready", server.output[-1000:]
        assert (await page(server)).text == "v2"
        event = await server.edit(folder / "main.py", PLAIN_APP + "\ndef broken(:\n")
        assert event.outcome == "failed"
        response = await page(server)
        assert response.status_code == 500
        assert "SyntaxError" in response.text
        assert "main.py" in response.text


async def test_a_nul_byte_in_the_env_file(plain_app: Path) -> None:
    env = plain_app / ".env"
    env.write_bytes(b"A=1\nB=x\x00y\n")
    with pytest.raises(StartupError, match=r"line 2.*NUL"):
        async with Reloader("main:app", app_dir=plain_app, env_file=env):
            pass
    env.write_bytes(b"A=1\n")
    async with Reloader("main:app", app_dir=plain_app, env_file=env) as server:
        target = server.generation + 1
        env.write_bytes(b"A=1\nB=x\x00y\n")
        event = await server.wait_for_generation(target)
        assert event.outcome == "failed"
        assert "line 2" in event.summary
        response = await page(server)
        assert response.status_code == 500
        assert "NUL" in response.text


async def test_a_very_long_output_line_does_not_stall_the_worker(tmp_path: Path) -> None:
    write(
        tmp_path / "main.py",
        PLAIN_APP.replace(
            '    if scope["type"] != "http":\n        return\n',
            '    if scope["type"] != "http":\n        return\n    print("x" * 100_000, flush=True)\n',
        ),
    )
    async with asyncio.timeout(20):  # stop included: a stalled pipe used to make it take 11 s
        async with Reloader("main:app", app_dir=tmp_path) as server:
            for _ in range(20):  # 2 MB through the pipe: far past its buffer
                assert (await page(server)).text == "v1"
            assert "x" * 100_000 in server.output
