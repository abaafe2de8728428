"""Files matched by --reload-include: the walk, and the scanner noticing them at once.

The scanners here run with a 30 s full-scan interval, so the full re-walk cannot be what
notices a new or edited template within the tests' deadlines: only file events can.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from asgireload import Reloader
from asgireload._supervisor import scanner as scanner_module
from asgireload._supervisor.includes import is_skipped_folder, walk_includes
from asgireload._supervisor.inotify import DirectoryEvents
from asgireload._supervisor.scanner import Scanner
from asgireload._watchfilter import WatchFilter
from asgireload.reloader import write_like_an_editor

from .conftest import PLAIN_APP, write

needs_inotify = pytest.mark.skipif(not DirectoryEvents.available(), reason="inotify is not available")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write(tmp_path / "main.py", "")
    write(tmp_path / "templates" / "index.html", "<p>index</p>")
    write(tmp_path / "templates" / "parts" / "nav.html", "<nav/>")
    write(tmp_path / "templates" / "notes.txt", "")
    write(tmp_path / ".git" / "x.html", "")
    write(tmp_path / "node_modules" / "pkg" / "y.html", "")
    write(tmp_path / "venv" / "pyvenv.cfg", "")
    write(tmp_path / "venv" / "lib" / "z.html", "")
    write(tmp_path / "migrations" / "old.html", "")
    (tmp_path / "templates" / "loop").symlink_to(tmp_path)  # a link back up must not trap the walk
    return tmp_path


def test_the_walk_skips_what_the_project_filter_skips(tree: Path) -> None:
    rules = WatchFilter([str(tree)], includes=["*.html"], excludes=["migrations/*"])
    entered: list[str] = []

    def enter(folder: str) -> int:
        entered.append(folder)
        return len(entered)

    walk = walk_includes(rules.roots, rules, enter=enter)
    assert sorted(walk.files) == [
        str(tree / "templates" / "index.html"),
        str(tree / "templates" / "parts" / "nav.html"),
    ]
    assert walk.files[str(tree / "templates" / "index.html")] is not None  # stat'ed
    assert sorted(entered) == sorted(
        [str(tree), str(tree / "migrations"), str(tree / "templates"), str(tree / "templates" / "parts")]
    )
    assert sorted(walk.folders) == sorted(entered)
    assert walk.folders[str(tree)][1] == 1  # what enter() answered, kept per folder
    assert walk.folders[str(tree)][0] is not None  # the folder's own stat
    assert walk.seconds > 0


def test_a_walk_of_new_folders_marks_their_files_new(tree: Path) -> None:
    rules = WatchFilter([str(tree)], includes=["*.html"])
    walk = walk_includes([str(tree / "templates" / "parts")], rules, stat_files=False)
    assert walk.files == {str(tree / "templates" / "parts" / "nav.html"): None}


def test_the_folder_is_entered_before_it_is_listed(tree: Path) -> None:
    rules = WatchFilter([str(tree)], includes=["*.html"])
    late = tree / "templates" / "parts" / "late.html"

    def enter(folder: str) -> None:
        if folder.endswith("parts"):
            late.write_text("")  # created the moment the watch is in place: must still be found

    assert str(late) in walk_includes(rules.roots, rules, enter=enter).files


def test_skipped_folders(tree: Path) -> None:
    assert is_skipped_folder(str(tree / ".git"))
    assert is_skipped_folder(str(tree / "node_modules"))
    assert is_skipped_folder(str(tree / "venv"))
    assert not is_skipped_folder(str(tree / "templates"))


class CountingRules(WatchFilter):
    """The project filter, counting how many file names it is asked about (one per walked file)."""

    asked = 0

    def is_included(self, path: str) -> bool:
        self.asked += 1
        return super().is_included(path)


@pytest.fixture
async def scanner(tree: Path) -> AsyncIterator[tuple[Scanner, asyncio.Queue[list[str]], CountingRules]]:
    rules = CountingRules([str(tree)], includes=["*.html"])
    reports: asyncio.Queue[list[str]] = asyncio.Queue()
    scanner = Scanner(lambda paths, since: reports.put_nowait(paths), interval=30, includes=rules)
    task = asyncio.create_task(scanner.run())
    try:
        async with asyncio.timeout(5):
            while str(tree / "templates" / "index.html") not in scanner:  # noqa: ASYNC110 - the walk runs in a thread
                await asyncio.sleep(0.01)
        yield scanner, reports, rules
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def next_report(reports: asyncio.Queue[list[str]]) -> list[str]:
    async with asyncio.timeout(5):
        return await reports.get()


@needs_inotify
async def test_included_files_are_noticed_by_events_not_by_walking_again(
    tree: Path, scanner: tuple[Scanner, asyncio.Queue[list[str]], CountingRules]
) -> None:
    watched, reports, rules = scanner
    assert str(tree / "templates" / "parts" / "nav.html") in watched
    after_first_walk = rules.asked
    for n in range(3):
        write_like_an_editor(tree / "templates" / "parts" / "nav.html", f"<nav>{n}</nav>")
        assert await next_report(reports) == [str(tree / "templates" / "parts" / "nav.html")]
    # the editor's temporary files were looked at once each, the tree was not walked again
    assert rules.asked - after_first_walk <= 3


@needs_inotify
async def test_a_new_file_in_a_new_folder_counts_as_a_change(
    tree: Path, scanner: tuple[Scanner, asyncio.Queue[list[str]], CountingRules]
) -> None:
    watched, reports, _ = scanner
    deep = tree / "templates" / "emails" / "welcome"
    deep.mkdir(parents=True)
    write_like_an_editor(deep / "hello.html", "<p>hello</p>")
    assert await next_report(reports) == [str(deep / "hello.html")]
    write_like_an_editor(deep / "hello.html", "<p>hello again</p>")  # and the new folder is watched
    assert await next_report(reports) == [str(deep / "hello.html")]
    (tree / "templates" / "notes.txt").write_text("not included")
    write(tree / "templates" / "later.html", "")
    assert await next_report(reports) == [str(tree / "templates" / "later.html")]
    assert str(tree / "templates" / "notes.txt") not in watched


@needs_inotify
async def test_a_folder_moved_in_is_walked(
    tree: Path, scanner: tuple[Scanner, asyncio.Queue[list[str]], CountingRules]
) -> None:
    _, reports, _ = scanner
    outside = tree / ".staging" / "blog"
    write(outside / "post.html", "<p>post</p>")
    os.rename(outside, tree / "templates" / "blog")
    assert await next_report(reports) == [str(tree / "templates" / "blog" / "post.html")]


# ---------------------------------------------------------------- end to end

TEMPLATE_APP = PLAIN_APP.replace(
    'BODY = "v1"',
    """import glob
here = os.path.dirname(__file__)
pattern = os.path.join(here, "templates", "**", "*.html")
BODY = " ".join(open(path).read() for path in sorted(glob.glob(pattern, recursive=True)))""",
)


@needs_inotify
async def test_templates_reload_on_edit_and_on_a_new_file_in_a_new_folder(tmp_path: Path) -> None:
    write(tmp_path / "templates" / "a.html", "<a>")
    write(tmp_path / "main.py", TEMPLATE_APP)
    # poll_interval=30: the full scan cannot be what finds these changes within 10 s.
    async with (
        Reloader("main:app", app_dir=tmp_path, reload_includes=("*.html",), poll_interval=30) as server,
        httpx.AsyncClient() as client,
    ):
        assert (await client.get(server.url)).text == "<a>"
        event = await server.edit(tmp_path / "templates" / "a.html", "<a2>", timeout=10)
        assert (event.outcome, event.changed) == ("ready", (str(tmp_path / "templates" / "a.html"),))
        assert (await client.get(server.url)).text == "<a2>"

        (tmp_path / "templates" / "new" / "deeper").mkdir(parents=True)
        event = await server.edit(tmp_path / "templates" / "new" / "deeper" / "b.html", "<b>", timeout=10)
        assert (event.outcome, event.changed) == (
            "ready",
            (str(tmp_path / "templates" / "new" / "deeper" / "b.html"),),
        )
        assert (await client.get(server.url)).text == "<a2> <b>"


async def test_without_events_or_polling_the_full_walk_finds_new_files(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scanner_module, "_directory_events", lambda callback: None)
    rules = WatchFilter([str(tree)], includes=["*.html"])
    reports: asyncio.Queue[list[str]] = asyncio.Queue()
    scanner = Scanner(
        lambda paths, since: reports.put_nowait(paths), interval=0.05, includes=rules, fast_poll=None
    )
    task = asyncio.create_task(scanner.run())
    try:
        async with asyncio.timeout(5):
            while str(tree / "templates" / "index.html") not in scanner:  # noqa: ASYNC110 - the walk runs in a thread
                await asyncio.sleep(0.01)
        write(tree / "templates" / "new" / "x.html", "")
        assert await next_report(reports) == [str(tree / "templates" / "new" / "x.html")]
        shutil.rmtree(tree / "templates" / "parts")
        assert await next_report(reports) == [str(tree / "templates" / "parts" / "nav.html")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
