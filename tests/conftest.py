"""Shared helpers: apps written into tmp_path, and waits that always have a deadline."""

from __future__ import annotations

import asyncio
import os
import shutil
import sysconfig
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PLAIN_APP = """
import os

BODY = "v1"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": BODY.encode()})
"""


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip())
    return path


@pytest.fixture(scope="session", autouse=True)
def _warm_cache_outside_home() -> Iterator[Path]:
    """The warm cache (the modules an app imported last time) goes to a folder of the session's,
    never to the real ~/.cache; the workers and CLI processes the tests start inherit it."""
    folder = Path(tempfile.mkdtemp(prefix="asgireload-cache-"))
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = before
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def plain_app(tmp_path: Path) -> Path:
    """A folder holding main.py, whose app answers its BODY ("v1")."""
    write(tmp_path / "main.py", PLAIN_APP)
    return tmp_path


async def until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for a condition set by another process (a file, a log line), with a deadline."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - the condition is set by another process
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


@pytest.fixture
def installed() -> Iterator[Path]:
    """The interpreter's own site-packages, for a test's fake installed package.

    Only installed code (the standard library and site-packages) is ever preloaded or left
    unwatched, so a package standing in for one must really be there; whatever the test adds is
    removed afterwards (the suite runs in a virtualenv of its own).
    """
    site = Path(sysconfig.get_paths()["purelib"])
    cache = site / "__pycache__"
    before = set(site.iterdir()) | (set(cache.iterdir()) if cache.is_dir() else set())
    try:
        yield site
    finally:
        after = set(site.iterdir()) | (set(cache.iterdir()) if cache.is_dir() else set())
        for path in after - before:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
