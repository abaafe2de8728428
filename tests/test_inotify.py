"""Real-kernel tests for the inotify hint source.

Everything here uses real directories and real events, because the failure modes worth catching
(which events an editor's save actually produces, which path gets reported, fd leaks) live in the
kernel interaction, not in our parsing.  Tests synchronise on the reported paths with a timeout
rather than sleeping, so they are both fast and deterministic.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from asgireload._supervisor.inotify import DirectoryEvents

pytestmark = pytest.mark.skipif(not DirectoryEvents.available(), reason="inotify is not available")

Reports = asyncio.Queue[str | None]


def inotify_fds() -> int:
    """Count this process's inotify fds; a leak shows up here whichever object owns the fd."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the fd listdir itself used is gone by now
            continue
        if target == "anon_inode:inotify":
            count += 1
    return count


async def reported(queue: Reports, wanted: str | None) -> list[str | None]:
    """Wait until ``wanted`` is reported; return everything reported up to and including it."""
    seen: list[str | None] = []
    async with asyncio.timeout(5):
        while True:
            seen.append(await queue.get())
            if seen[-1] == wanted:
                return seen


@pytest.fixture
def queue() -> Reports:
    return asyncio.Queue()


@pytest.fixture
async def events(queue: Reports) -> AsyncIterator[DirectoryEvents]:
    with DirectoryEvents(queue.put_nowait) as watcher:
        yield watcher


# File operations are deliberately synchronous helpers: while one runs, the loop cannot run the
# reader, which is what makes "all these events arrive in one wakeup" and the overflow test work.
def write(path: Path, data: str, mode: str = "w") -> None:
    with open(path, mode) as f:
        f.write(data)


def max_queued_events() -> int:
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


async def test_in_place_write(tmp_path: Path, events: DirectoryEvents, queue: Reports) -> None:
    target = tmp_path / "app.py"
    write(target, "x = 1\n")
    assert events.watch(str(tmp_path))

    write(target, "y = 2\n", mode="a")

    await reported(queue, str(target))


async def test_replace_reports_original_path(tmp_path: Path, events: DirectoryEvents, queue: Reports) -> None:
    # The editor save: write a temporary file, then rename it over the original.  The scanner keys
    # on the original's path, so that is the path that must be reported, not just the temp file.
    target = tmp_path / "app.py"
    write(target, "x = 1\n")
    assert events.watch(str(tmp_path))

    temp = tmp_path / ".app.py.swp"
    write(temp, "x = 2\n")
    os.replace(temp, target)

    seen = await reported(queue, str(target))
    assert None not in seen


async def test_delete(tmp_path: Path, events: DirectoryEvents, queue: Reports) -> None:
    target = tmp_path / "app.py"
    write(target, "")
    assert events.watch(str(tmp_path))

    target.unlink()

    await reported(queue, str(target))


async def test_create(tmp_path: Path, events: DirectoryEvents, queue: Reports) -> None:
    assert events.watch(str(tmp_path))

    target = tmp_path / "new.py"
    write(target, "")
    (tmp_path / "pkg").mkdir()

    await reported(queue, str(target))
    await reported(queue, str(tmp_path / "pkg"))


async def test_unwatchable_paths_return_false(tmp_path: Path, events: DirectoryEvents) -> None:
    regular = tmp_path / "file.txt"
    write(regular, "")

    assert not events.watch(str(tmp_path / "missing"))
    assert not events.watch(str(regular))
    assert not events.watch(str(tmp_path) + "\0/etc")


async def test_try_watch_says_why_and_is_watching_follows_the_kernel(
    tmp_path: Path, events: DirectoryEvents, queue: Reports
) -> None:
    regular = tmp_path / "file.txt"
    write(regular, "")
    assert events.try_watch(str(tmp_path / "missing")) == errno.ENOENT
    assert events.try_watch(str(regular)) == errno.ENOTDIR
    watched = tmp_path / "pkg"
    watched.mkdir()
    assert not events.is_watching(str(watched))
    assert events.try_watch(str(watched)) == 0
    assert events.is_watching(str(watched))

    watched.rmdir()
    await reported(queue, None)  # the kernel dropped the watch

    assert not events.is_watching(str(watched))


async def test_a_folder_watched_from_another_thread_reports(
    tmp_path: Path, events: DirectoryEvents, queue: Reports
) -> None:
    # The scanner's include walk runs in a worker thread and watches each folder it enters.
    folders = [tmp_path / f"d{i}" for i in range(20)]
    for folder in folders:
        folder.mkdir()
    results = await asyncio.to_thread(lambda: [events.try_watch(str(f)) for f in folders])
    assert results == [0] * 20
    write(folders[-1] / "m.py", "")
    await reported(queue, str(folders[-1] / "m.py"))


async def test_watch_is_idempotent_and_reports_once(
    tmp_path: Path, events: DirectoryEvents, queue: Reports
) -> None:
    assert events.watch(str(tmp_path))
    assert events.watch(str(tmp_path))
    target = tmp_path / "a.py"

    # CREATE, MODIFY, CLOSE_WRITE for a.py, then CREATE, CLOSE_WRITE for b.py.  Nothing awaits in
    # between, so the reader sees them all in one wakeup, and each path is reported exactly once.
    write(target, "data")
    write(tmp_path / "b.py", "")

    seen = await reported(queue, str(tmp_path / "b.py"))
    assert seen == [str(target), str(tmp_path / "b.py")]


async def test_aliases_are_all_reported(tmp_path: Path, events: DirectoryEvents, queue: Reports) -> None:
    # A symlinked directory shares the kernel watch (same inode) but must be reported under
    # each spelling the caller registered.
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert events.watch(str(real))
    assert events.watch(str(link))

    write(real / "m.py", "")

    seen = await reported(queue, str(real / "m.py"))
    if str(link / "m.py") not in seen:
        await reported(queue, str(link / "m.py"))


async def test_deleted_directory_loses_watch_and_can_be_rewatched(
    tmp_path: Path, events: DirectoryEvents, queue: Reports
) -> None:
    watched = tmp_path / "pkg"
    watched.mkdir()
    assert events.watch(str(watched))

    watched.rmdir()

    # The directory itself is reported, then None because its watch is gone.
    seen = await reported(queue, None)
    assert str(watched) in seen
    assert not events.watch(str(watched))

    watched.mkdir()
    assert events.watch(str(watched))
    write(watched / "m.py", "")
    await reported(queue, str(watched / "m.py"))


async def test_moved_directory_requests_rescan(
    tmp_path: Path, events: DirectoryEvents, queue: Reports
) -> None:
    watched = tmp_path / "pkg"
    watched.mkdir()
    assert events.watch(str(watched))

    watched.rename(tmp_path / "elsewhere")

    seen = await reported(queue, None)
    assert str(watched) in seen
    # The old watch was dropped, so a new directory at the old path gets a fresh, working watch.
    watched.mkdir()
    assert events.watch(str(watched))
    write(watched / "m.py", "")
    await reported(queue, str(watched / "m.py"))


async def test_queue_overflow_requests_rescan(
    tmp_path: Path, events: DirectoryEvents, queue: Reports
) -> None:
    limit = max_queued_events()
    if limit > 100_000:
        pytest.skip(f"max_queued_events={limit} is too large to overflow quickly")
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "")
    write(b, "")
    assert events.watch(str(tmp_path))

    # The loop cannot run the reader while this synchronous loop runs, so the kernel queue fills.
    # Alternate two names because identical consecutive events are merged by the kernel.
    for _ in range(limit // 2 + 1):
        os.utime(a)
        os.utime(b)

    await reported(queue, None)


async def test_close_releases_fd(tmp_path: Path, queue: Reports) -> None:
    before = inotify_fds()
    watcher = DirectoryEvents(queue.put_nowait)
    assert inotify_fds() == before + 1
    assert watcher.watch(str(tmp_path))

    watcher.close()
    watcher.close()

    assert inotify_fds() == before
    assert not watcher.watch(str(tmp_path))
    assert "closed" in repr(watcher)


async def test_context_manager_closes(queue: Reports) -> None:
    before = inotify_fds()
    with DirectoryEvents(queue.put_nowait) as watcher:
        assert "fd=" in repr(watcher)
    assert inotify_fds() == before


def test_available_does_not_leak() -> None:
    before = inotify_fds()
    assert DirectoryEvents.available()
    assert inotify_fds() == before


def test_requires_running_loop() -> None:
    before = inotify_fds()
    callback: Callable[[str | None], None] = print
    with pytest.raises(RuntimeError):
        DirectoryEvents(callback)
    assert inotify_fds() == before


async def test_a_file_open_for_writing_is_being_written_until_closed(
    tmp_path: Path, events: DirectoryEvents, queue: Reports
) -> None:
    target = tmp_path / "app.py"
    write(target, "x = 1\n")
    assert events.watch(str(tmp_path))
    writer = open(target, "w")  # noqa: SIM115, ASYNC230 - kept open on purpose: a save under way
    try:
        writer.write("x = ")
        writer.flush()
        await reported(queue, str(target))
        assert events.is_being_written(str(target))
        assert not events.is_being_written(str(tmp_path / "other.py"))
    finally:
        writer.close()
    await reported(queue, str(target))
    assert not events.is_being_written(str(target))
