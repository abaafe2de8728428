"""Folders without file events: mount detection, the watch limit, and forced polling.

An edit made through a hard link in an unwatched folder changes the file without any inotify
event in the watched folder, just like an edit made on the far side of a network share or a
VM's shared folder. Every scanner here runs with a 30 s full-scan interval, so only the fast
poll can notice such an edit within the tests' deadlines.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgireload import Reloader
from asgireload._supervisor import inotify as _inotify
from asgireload._supervisor import mounts as _mounts
from asgireload._supervisor.mounts import (
    Mount,
    MountTable,
    forced_polling_reason,
    mount_of,
    no_events_reason,
    parse_mountinfo,
    parse_mounts,
)
from asgireload._supervisor.scanner import Scanner, stat_key

from .conftest import PLAIN_APP, write

MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 27 0:45 / /home/me/My\040Projects rw,relatime shared:9 master:3 - nfs4 srv:/export rw,vers=4.2
41 40 0:46 / /home/me/My\040Projects/local rw - tmpfs tmpfs rw
42 27 0:47 / /mnt/c rw,noatime - 9p drvfs rw,aname=drvfs;path=C:\134
43 27 0:48 / /workspace rw - fakeowner /run/host_mark/Users rw
44 27 0:49 / /mnt/back\134slash rw - fuse.sshfs me@host:/src rw
this line is not a mount
"""

PROC_MOUNTS = r"""/dev/vda / ext4 rw,relatime 0 0
//server/share /mnt/share\040drive cifs rw,vers=3.0 0 0
"""


def test_mountinfo_lines_with_escapes_and_optional_fields() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts == [
        Mount("/proc", "proc"),
        Mount("/", "ext4"),
        Mount("/home/me/My Projects", "nfs4"),
        Mount("/home/me/My Projects/local", "tmpfs"),
        Mount("/mnt/c", "9p"),
        Mount("/workspace", "fakeowner"),
        Mount("/mnt/back\\slash", "fuse.sshfs"),
    ]


def test_proc_mounts_lines() -> None:
    assert parse_mounts(PROC_MOUNTS) == [Mount("/", "ext4"), Mount("/mnt/share drive", "cifs")]


def test_the_longest_mount_point_wins() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mount_of("/home/me/My Projects/app/main.py", mounts) == Mount("/home/me/My Projects", "nfs4")
    assert mount_of("/home/me/My Projects/local/x", mounts) == Mount("/home/me/My Projects/local", "tmpfs")
    assert mount_of("/home/me/My Projects", mounts) == Mount("/home/me/My Projects", "nfs4")
    assert mount_of("/home/me/My ProjectsX/a", mounts) == Mount(
        "/", "ext4"
    )  # a prefix of a name is not enough
    assert mount_of("/srv", [Mount("/srv", "ext4"), Mount("/srv", "nfs")]) == Mount("/srv", "nfs")  # on top
    assert mount_of("/srv", []) is None


def test_which_types_send_no_events() -> None:
    for fstype in ("nfs", "nfs4", "cifs", "smb3", "9p", "drvfs", "virtiofs", "fakeowner", "vboxsf"):
        assert no_events_reason(fstype), fstype
    assert "network" in (no_events_reason("fuse.sshfs") or "")
    assert "host" in (no_events_reason("fuse.grpcfuse") or "")
    assert "FUSE" in (no_events_reason("fuse.rclone") or "")
    for fstype in ("ext4", "xfs", "btrfs", "tmpfs", "overlay", "fuse.fuse-overlayfs", "fuseblk"):
        assert no_events_reason(fstype) is None, fstype


def test_a_mount_table_answers_for_resolved_folders(tmp_path: Path) -> None:
    real = tmp_path / "share"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    table = MountTable([Mount("/", "ext4"), Mount(str(real), "nfs")])
    found = table.lacking_events(str(tmp_path / "link"))
    assert found is not None
    assert found[0] == Mount(str(real), "nfs")
    assert table.lacking_events(str(tmp_path)) is None


@pytest.mark.parametrize(
    ("value", "forced"),
    [("1", True), ("true", True), ("YES", True), ("0", False), ("no", False), ("", False)],
)
def test_the_environment_variable(monkeypatch: pytest.MonkeyPatch, value: str, forced: bool) -> None:
    monkeypatch.setenv("ASGIRELOAD_FORCE_POLLING", value)
    assert (forced_polling_reason(False) is not None) is forced
    assert forced_polling_reason(True) == "--force-polling is set"


class Watching:
    def __init__(self, scanner: Scanner, reports: asyncio.Queue[list[str]]) -> None:
        self.scanner = scanner
        self.reports = reports

    def add(self, path: Path) -> None:
        self.scanner.watch([(str(path), stat_key(str(path)))])

    async def add_and_settle(self, path: Path) -> None:
        """Watch `path` from a stale baseline and wait for that report: the scanner has looked."""
        current = stat_key(str(path))
        assert current is not None
        self.scanner.watch([(str(path), (current[0] - 1, current[1], current[2]))])
        assert await self.next_report() == [str(path)]

    async def next_report(self) -> list[str]:
        async with asyncio.timeout(5):
            return await self.reports.get()


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Watching]]:
    tasks: list[asyncio.Task[None]] = []

    def starting(**options: object) -> Watching:
        reports: asyncio.Queue[list[str]] = asyncio.Queue()
        scanner = Scanner(lambda paths, since: reports.put_nowait(paths), interval=30, **options)  # type: ignore[arg-type]
        tasks.append(asyncio.create_task(scanner.run()))
        return Watching(scanner, reports)

    try:
        yield starting
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def edit_from_elsewhere(watched: Path, elsewhere: Path) -> None:
    """Change `watched` through a hard link: no event reaches the watched folder."""
    link = elsewhere / watched.name
    if not link.exists():
        os.link(watched, link)
    with open(link, "a") as file:
        file.write("# edited on the other side\n")


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "share").mkdir()
    (tmp_path / "elsewhere").mkdir()
    return write(tmp_path / "share" / "main.py", "a = 1\n"), tmp_path / "elsewhere"


async def test_a_folder_on_a_mount_without_events_is_polled(
    project: tuple[Path, Path],
    start: Callable[..., Watching],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    main, elsewhere = project
    share = str(main.parent)
    monkeypatch.setattr(_mounts, "read_mount_table", lambda: [Mount("/", "ext4"), Mount(share, "nfs4")])
    caplog.set_level(logging.INFO, logger="asgireload")
    watching = start()
    write(main.parent / "other.py", "")
    watching.add(main.parent / "other.py")
    await watching.add_and_settle(main)
    assert watching.scanner.uses_file_events
    edit_from_elsewhere(main, elsewhere)
    assert await watching.next_report() == [str(main)]
    lines = [r.getMessage() for r in caplog.records if "nfs4" in r.getMessage()]
    assert len(lines) == 1, lines  # one line per mount, not per folder or file
    assert share in lines[0]
    assert "network" in lines[0]


async def test_running_out_of_watches_falls_back_to_polling(
    project: tuple[Path, Path],
    start: Callable[..., Watching],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_more_watches(self: object, fd: int, path: bytes, mask: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_inotify._Inotify, "add_watch", no_more_watches)
    main, elsewhere = project
    watching = start()
    await watching.add_and_settle(main)
    edit_from_elsewhere(main, elsewhere)
    assert await watching.next_report() == [str(main)]
    (main.parent / "sub").mkdir()
    watching.add(write(main.parent / "sub" / "two.py", ""))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "fs.inotify.max_user_watches" in warnings[0]


def inotify_fds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with_target = f"/proc/self/fd/{name}"
        try:
            if os.readlink(with_target) == "anon_inode:inotify":
                count += 1
        except OSError:
            continue
    return count


async def test_forced_polling_uses_no_file_events(
    project: tuple[Path, Path], start: Callable[..., Watching], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asgireload")
    main, _ = project
    watching = start(force_polling=True)
    assert not watching.scanner.uses_file_events
    assert inotify_fds() == 0
    await watching.add_and_settle(main)
    write(main, "a = 2\n")
    assert await watching.next_report() == [str(main)]
    assert ["--force-polling" in r.getMessage() for r in caplog.records] == [True]


# ---------------------------------------------------------------- end to end


def app_reading(tmp_path: Path) -> None:
    write(
        tmp_path / "main.py",
        PLAIN_APP.replace(
            'BODY = "v1"', 'BODY = open(os.path.join(os.path.dirname(__file__), "body.txt")).read()'
        ),
    )
    write(tmp_path / "body.txt", "one")


@pytest.mark.parametrize("how", ["option", "environment"])
async def test_forced_polling_reloads_without_file_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    app_reading(tmp_path)
    options: dict[str, Any] = {"reload_includes": ("*.txt",), "poll_interval": 30}
    if how == "option":
        options["force_polling"] = True
    else:
        monkeypatch.setenv("ASGIRELOAD_FORCE_POLLING", "1")
    async with Reloader("main:app", app_dir=tmp_path, **options) as server, httpx.AsyncClient() as client:
        assert inotify_fds() == 0
        scanner = server._running.watched
        assert isinstance(scanner, Scanner)
        assert not scanner.uses_file_events
        assert (await client.get(server.url)).text == "one"
        event = await server.edit(tmp_path / "body.txt", "two", timeout=10)
        assert event.outcome == "ready"
        assert event.changed == (str(tmp_path / "body.txt"),)
        assert (await client.get(server.url)).text == "two"
        target = server.generation + 1
        (tmp_path / "main.py").write_text(PLAIN_APP.replace('BODY = "v1"', 'BODY = "three"'))
        await server.wait_for_generation(target, timeout=10)
        assert (await client.get(server.url)).text == "three"
