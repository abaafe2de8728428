"""The mtime scanner on real files, with inotify hints and with polling alone."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asgireload._supervisor import bursts as bursts_module
from asgireload._supervisor import scanner as scanner_module
from asgireload._supervisor.scanner import Scanner, stat_key
from asgireload._watchfilter import WatchFilter


class Watching:
    def __init__(self, scanner: Scanner, reports: asyncio.Queue[list[str]]) -> None:
        self.scanner = scanner
        self.reports = reports

    def add(self, *paths: Path) -> None:
        self.scanner.watch((str(p), stat_key(str(p))) for p in paths)

    async def next_report(self) -> list[str]:
        async with asyncio.timeout(5):
            return await self.reports.get()


@pytest.fixture(params=["file-events", "polling"])
async def watching(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Watching]:
    if request.param == "polling":
        monkeypatch.setattr(scanner_module, "_directory_events", lambda callback: None)
    reports: asyncio.Queue[list[str]] = asyncio.Queue()
    scanner = Scanner(lambda paths, since: reports.put_nowait(paths), interval=0.05)
    task = asyncio.create_task(scanner.run())
    try:
        yield Watching(scanner, reports)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def make(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_a_write_in_place_of_the_same_size(tmp_path: Path, watching: Watching) -> None:
    main = make(tmp_path / "main.py", "a = 1\n")
    watching.add(main)
    os.utime(main, ns=(0, 10**18))  # the same size and inode; only the mtime says it changed
    assert await watching.next_report() == [str(main)]


async def test_a_save_that_renames_over_the_original(tmp_path: Path, watching: Watching) -> None:
    main = make(tmp_path / "main.py", "a = 1\n")
    watching.add(main)
    temporary = make(tmp_path / ".main.py.swp", "a = 2\n")
    os.replace(temporary, main)
    assert await watching.next_report() == [str(main)]


async def test_delete_then_recreate(tmp_path: Path, watching: Watching) -> None:
    main = make(tmp_path / "main.py", "a = 1\n")
    watching.add(main)
    main.unlink()
    assert await watching.next_report() == [str(main)]
    make(main, "a = 1\n")
    assert await watching.next_report() == [str(main)]


async def test_an_mtime_that_goes_backwards(tmp_path: Path, watching: Watching) -> None:
    main = make(tmp_path / "main.py", "a = 1\n")
    watching.add(main)
    os.utime(main, (1_000_000, 1_000_000))  # like a checkout of an older version
    assert await watching.next_report() == [str(main)]


async def test_a_burst_is_one_report(tmp_path: Path, watching: Watching) -> None:
    files = [make(tmp_path / f"m{i}.py", "a = 1\n") for i in range(50)]
    watching.add(*files)
    for path in files:
        make(path, "a = 22\n")
    report = await watching.next_report()
    assert report == sorted(str(p) for p in files)


async def test_only_watched_files_are_reported(tmp_path: Path, watching: Watching) -> None:
    main = make(tmp_path / "main.py", "a = 1\n")
    other = make(tmp_path / "other.py", "a = 1\n")
    watching.add(main)
    make(other, "a = 2\n")
    make(main, "a = 2\n")
    assert await watching.next_report() == [str(main)]


async def test_a_baseline_older_than_the_disk_is_a_change_at_once(tmp_path: Path, watching: Watching) -> None:
    # The worker imported the file, then it was saved again before the report arrived.
    main = make(tmp_path / "main.py", "a = 1\n")
    imported = stat_key(str(main))
    assert imported is not None
    watching.scanner.watch([(str(main), (imported[0] - 1, imported[1], imported[2]))])
    assert await watching.next_report() == [str(main)]


def test_the_project_filter(tmp_path: Path) -> None:
    make(tmp_path / "main.py", "")
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    make(tmp_path / ".venv" / "pyvenv.cfg", "")
    make(tmp_path / ".venv" / "lib" / "pkg.py", "")
    (tmp_path / "migrations").mkdir()
    make(tmp_path / "migrations" / "m1.py", "")
    (tmp_path / "templates").mkdir()
    make(tmp_path / "templates" / "index.html", "")
    project = WatchFilter([str(tmp_path)], includes=["*.html"], excludes=["migrations/*"])
    assert project.is_project_file(str(tmp_path / "main.py"))
    assert not project.is_project_file(str(tmp_path / ".venv" / "lib" / "pkg.py"))
    assert not project.is_project_file(str(tmp_path / "migrations" / "m1.py"))
    assert not project.is_project_file(os.__file__)
    assert not project.is_project_file("/elsewhere/main.py")
    assert list(project.included_files()) == [str(tmp_path / "templates" / "index.html")]
    assert "migrations/*" in repr(project)


class SlowRules(WatchFilter):
    """A project filter that takes at least 2 ms per file name, so a walk has a known minimum cost."""

    def is_included(self, path: str) -> bool:
        time.sleep(0.002)
        return super().is_included(path)


async def test_the_include_walk_is_paid_for_in_the_scan_budget(tmp_path: Path) -> None:
    for i in range(50):
        make(tmp_path / f"page{i}.html", "")
    scanner = Scanner(
        lambda paths, since: None, interval=0.01, includes=SlowRules([str(tmp_path)], ["*.html"])
    )
    task = asyncio.create_task(scanner.run())
    try:
        async with asyncio.timeout(5):
            while len(scanner) < 50:  # noqa: ASYNC110 - the first walk runs in a thread
                await asyncio.sleep(0.01)
        # 50 names at >= 2 ms: the walk costs >= 0.1 s, so it may run at most every 0.1 / share seconds,
        # however short the interval.
        assert scanner.next_full_scan >= 0.1 / scanner_module.SAFETY_SCAN_SHARE
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------- saves caught half-way


async def test_a_file_renamed_away_and_back_is_no_change(tmp_path: Path, watching: Watching) -> None:
    main = make(tmp_path / "main.py", "a = 1\n")
    other = make(tmp_path / "other.py", "b = 1\n")
    watching.add(main, other)
    os.rename(main, tmp_path / "main.py~")
    await asyncio.sleep(0.05)  # part of the scenario: longer than any quiet gap
    os.rename(tmp_path / "main.py~", main)
    make(other, "b = 22\n")  # the next report says what changed: only this
    assert await watching.next_report() == [str(other)]


async def test_a_file_missing_midway_through_a_save_is_one_report(tmp_path: Path, watching: Watching) -> None:
    main = make(tmp_path / "main.py", "a = 1\n")
    watching.add(main)
    os.rename(main, tmp_path / "main.py___jb_old___")
    await asyncio.sleep(0.1)  # the IDE is busy
    make(main, "a = 22\n")
    assert await watching.next_report() == [str(main)]
    assert watching.reports.empty()
    assert watching.scanner._baseline[str(main)] == stat_key(str(main))


async def test_an_emptied_file_waits_for_its_content(tmp_path: Path, watching: Watching) -> None:
    main = make(tmp_path / "main.py", "a = 1\n")
    watching.add(main)

    def truncate_then_write() -> None:
        with open(main, "w") as file:
            file.flush()
            time.sleep(0.1)  # truncated, not yet written
            file.write("a = 22\n")

    await asyncio.to_thread(truncate_then_write)
    assert await watching.next_report() == [str(main)]
    assert watching.scanner._baseline[str(main)] == stat_key(str(main))


async def test_a_file_that_stays_gone_is_reported_after_the_grace(tmp_path: Path, watching: Watching) -> None:
    main = make(tmp_path / "main.py", "a = 1\n")
    watching.add(main)
    deleted = time.monotonic()
    main.unlink()
    assert await watching.next_report() == [str(main)]
    waited = time.monotonic() - deleted
    assert bursts_module.UNFINISHED_GRACE <= waited < bursts_module.UNFINISHED_GRACE + 2.0


# ---------------------------------------------------------------- symlinks


async def test_an_edit_of_a_symlink_target_is_seen_by_file_events(tmp_path: Path) -> None:
    # With no safety scan and file events on, only a watch of the target's folder can see it.
    reports: asyncio.Queue[list[str]] = asyncio.Queue()
    scanner = Scanner(lambda paths, since: reports.put_nowait(paths), interval=60.0)
    if not scanner.uses_file_events:
        pytest.skip("needs inotify")
    watching = Watching(scanner, reports)
    task = asyncio.create_task(scanner.run())
    try:
        (tmp_path / "app").mkdir()
        target = make(tmp_path / "shared.py", "a = 1\n")
        link = tmp_path / "app" / "helper.py"
        link.symlink_to(target)
        watching.add(link)
        make(target, "a = 22\n")
        assert await watching.next_report() == [str(link)]
        other = make(tmp_path / "other.py", "b = 1\n")
        link.unlink()
        link.symlink_to(other)  # re-pointed: a change of the link, and the new target is followed
        assert await watching.next_report() == [str(link)]
        make(other, "b = 22\n")
        assert await watching.next_report() == [str(link)]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
