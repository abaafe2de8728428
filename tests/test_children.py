"""The one way a child process ends (children.Child): real, tiny processes, no server.

What a spawned worker, a forked worker and a template share: `aclose` gives the process its
time, then kills it, its group and everything carrying its tag, and reaps it within a deadline,
even when the caller is cancelled.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from asgireload import _reaper
from asgireload._supervisor import workers
from asgireload._supervisor.children import SpawnedChild

from .conftest import until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and tags are POSIX")


async def spawn(code: str, tag: str | None = None) -> SpawnedChild:
    """`python -c code` in a session of its own, as a worker is started."""
    loop = asyncio.get_running_loop()
    environment = dict(os.environ)
    if tag is not None:
        environment[_reaper.TAG_VARIABLE] = tag
    transport, protocol = await loop.subprocess_exec(
        lambda: workers._Protocol(limit=workers.OUTPUT_CHUNK, loop=loop),
        sys.executable,
        "-c",
        code,
        start_new_session=True,
        stdin=asyncio.subprocess.DEVNULL,
        env=environment,
    )
    return SpawnedChild(tag, transport, protocol.exited)


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_child_that_exits_in_time_is_not_counted_as_killed() -> None:
    child = await spawn("pass")
    try:
        assert await child.aclose(10.0) is False
        assert child.returncode == 0
        assert not child.alive
    finally:
        child.release()


async def test_a_stuck_child_is_killed_at_its_deadline_and_reaped() -> None:
    child = await spawn("import time; time.sleep(60)")
    try:
        started = time.monotonic()
        assert await child.aclose(0.2) is True
        assert time.monotonic() - started < 5.0
        assert child.returncode == -9
        assert not running(child.pid)
    finally:
        child.release()


async def test_cancelling_the_close_still_kills_the_child() -> None:
    child = await spawn("import time; time.sleep(60)")
    try:
        closing = asyncio.ensure_future(child.aclose(30.0))
        await asyncio.sleep(0)  # (a yield: the close is now waiting for the child to exit)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        async with asyncio.timeout(5.0):
            assert await child.wait() == -9
    finally:
        child.release()


async def test_what_the_child_started_goes_with_it_even_outside_its_group(tmp_path: Path) -> None:
    # one grandchild stays in the child's group; the other leaves it (setsid) but keeps the tag
    pids = tmp_path / "pids"
    code = (
        "import subprocess, sys, time\n"
        "sleep = [sys.executable, '-c', 'import time; time.sleep(60)']\n"
        "a = subprocess.Popen(sleep)\n"
        "b = subprocess.Popen(sleep, start_new_session=True)\n"
        f"open({str(pids)!r}, 'w').write(f'{{a.pid}} {{b.pid}}')\n"
        "time.sleep(60)\n"
    )
    child = await spawn(code, tag=_reaper.new_tag(7))
    try:
        await until(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="the grandchildren")
        in_group, outside = map(int, pids.read_text().split())
        assert await child.aclose(0.0) is True
        await until(lambda: not running(in_group) and not running(outside), what="the grandchildren to end")
    finally:
        child.release()
