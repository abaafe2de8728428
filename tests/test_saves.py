"""End to end: a save is one change, however the editor writes it, and wherever the file lives.

Each editor's sequence runs in a thread, with a delay between its steps (part of the scenario: a
busy IDE, a slow disk), while a client polls the app the whole time. A save must start exactly
one generation, which is ready and serves the final content; no request may get a 5xx. "Exactly
one" is checked by numbers, never by waiting for nothing to happen: save k must be generation
start + k, and a last plain save must be the very next generation after the last editor save.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from asgireload import Reloader, ReloadEvent

from .conftest import PLAIN_APP, until, write

Save = Callable[[Path, str, float], None]
DELAYS = [0.0, 0.005, 0.1]  # seconds between two steps of a save
NO_SAFETY_SCAN = 60.0  # the periodic full scan must not be what finds a change


def with_body(body: str) -> str:
    return PLAIN_APP.replace('BODY = "v1"', f"BODY = {body!r}")


# ------------------------------------------------------------------ how editors save


def jetbrains_safe_write(path: Path, text: str, delay: float) -> None:
    """PyCharm & co: new content to a temp file, the original renamed away, the temp file renamed in."""
    temporary, old = path.with_name(path.name + "___jb_tmp___"), path.with_name(path.name + "___jb_old___")
    temporary.write_text(text)
    time.sleep(delay)
    os.rename(path, old)
    time.sleep(delay)
    os.rename(temporary, path)
    time.sleep(delay)
    old.unlink()


def vim_backup_and_rename(path: Path, text: str, delay: float) -> None:
    """vim (backupcopy=no): the original renamed to a backup, a new file written, the backup deleted."""
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    time.sleep(delay)
    with open(path, "w") as file:  # created empty, then written
        file.flush()
        time.sleep(delay)
        file.write(text)
    time.sleep(delay)
    backup.unlink()


def truncate_then_write(path: Path, text: str, delay: float) -> None:
    """An in-place save that truncates the file, then writes it (the file is empty meanwhile)."""
    with open(path, "w") as file:
        file.flush()
        time.sleep(delay)
        file.write(text)


def delete_then_create(path: Path, text: str, delay: float) -> None:
    """A tool that removes the file, then writes a new one (git does this for each file it changes)."""
    path.unlink()
    time.sleep(delay)
    path.write_text(text)


def temp_and_rename(path: Path, text: str, delay: float) -> None:
    """Most editors: a temp file beside it, renamed over the original (never missing, never empty)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    time.sleep(delay)
    os.replace(temporary, path)


EDITORS: dict[str, Save] = {
    "jetbrains": jetbrains_safe_write,
    "vim": vim_backup_and_rename,
    "truncate-then-write": truncate_then_write,
    "delete-then-create": delete_then_create,
    "temp-and-rename": temp_and_rename,
}


# ------------------------------------------------------------------ a client that polls throughout


class Polling:
    """GETs the app in a loop; remembers every 5xx (with its body) and what was served last."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.errors: list[str] = []
        self.requests = 0
        self.last = ""

    async def run(self) -> None:
        async with httpx.AsyncClient() as client:
            while True:
                response = await client.get(self.url)
                self.requests += 1
                self.last = response.text
                if response.status_code >= 500:
                    self.errors.append(f"{response.status_code}: {response.text[:200]}")


@contextlib.asynccontextmanager
async def polling(url: str) -> AsyncIterator[Polling]:
    poller = Polling(url)
    task = asyncio.create_task(poller.run())
    try:
        yield poller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def served(url: str) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.text


async def served_soon(url: str, body: str, timeout: float = 10.0) -> None:
    """Wait, with a deadline, until `url` answers `body` (a generation being loaded, not yet served)."""
    async with asyncio.timeout(timeout):
        while await served(url) != body:  # noqa: ASYNC110 - another process serves it
            await asyncio.sleep(0.01)


async def save_once(server: Reloader, save: Save, path: Path, text: str, delay: float) -> None:
    """Save in a thread (the server runs in this loop), and check that it made one good generation."""
    target = server.generation + 1
    await asyncio.to_thread(save, path, text, delay)
    event = await server.wait_for_generation(target)
    assert (event.generation, event.outcome) == (target, "ready"), event.summary or event
    assert server.generation == target, f"one save started {server.generation - target + 1} generations"


async def assert_none_failed(server: Reloader, events: AsyncIterator[ReloadEvent]) -> None:
    """Every outcome up to the last generation's (a superseded generation has none) is ready."""
    outcomes: list[tuple[int, str]] = []
    while not outcomes or outcomes[-1][0] < server.generation:
        event = await asyncio.wait_for(anext(events), 10)
        outcomes.append((event.generation, event.outcome))
    assert [o for o in outcomes if o[1] != "ready"] == [], outcomes


async def one_more_plain_save(server: Reloader, path: Path, text: str) -> None:
    """A last ordinary save: it must be the very next generation (nothing else was started meanwhile)."""
    expected = server.generation + 1
    event = await server.edit(path, text)
    assert (event.generation, event.outcome) == (expected, "ready"), event


# ------------------------------------------------------------------ editors


@pytest.mark.parametrize("delay", DELAYS, ids=lambda d: f"{d * 1000:g}ms")
@pytest.mark.parametrize("editor", list(EDITORS))
async def test_each_save_is_one_reload_and_never_an_error(tmp_path: Path, editor: str, delay: float) -> None:
    main = write(tmp_path / "main.py", with_body("v1"))
    save = EDITORS[editor]
    async with Reloader("main:app", app_dir=tmp_path) as server, polling(server.url) as poller:
        for version in range(2, 5):
            body = f"v{version} " + "x" * version  # a new size each time
            await save_once(server, save, main, with_body(body), delay)
            assert await served(server.url) == body
        await one_more_plain_save(server, main, with_body("last"))
        assert poller.errors == [], f"{len(poller.errors)} of {poller.requests} requests failed"
        assert poller.requests > 0


def written_in_chunks(path: Path, text: str, delay: float) -> None:
    """An in-place write that comes in three parts (a slow disk, a network mount): in between,
    the file holds the start of the new code, cut in the middle of a line."""
    cut = [len(text) // 3, 2 * len(text) // 3]
    with open(path, "w") as file:
        for start, end in zip([0, *cut], [*cut, len(text)], strict=True):
            file.write(text[start:end])
            file.flush()
            time.sleep(delay)


async def test_a_save_written_in_chunks_never_shows_an_error(tmp_path: Path) -> None:
    # Each part may start a generation that fails (a SyntaxError in the half-written file): the
    # next part supersedes it within the machine's grace, so the failure is never shown. Several
    # generations per save are expected here; what is asserted is that none of them failed.
    main = write(tmp_path / "main.py", with_body("v1"))
    async with Reloader("main:app", app_dir=tmp_path) as server, polling(server.url) as poller:
        events = server.events()
        for version in range(2, 4):
            body = f"v{version} " + "x" * version
            await asyncio.to_thread(written_in_chunks, main, with_body(body), 0.1)
            await served_soon(server.url, body)  # the last part's generation, before the next save
            await one_more_plain_save(server, main, with_body(f"{body} end"))
            assert await served(server.url) == f"{body} end"
        await assert_none_failed(server, events)
        assert poller.errors == [], f"{len(poller.errors)} of {poller.requests} requests failed"


async def test_a_save_of_a_module_the_app_imports(tmp_path: Path) -> None:
    # The module that goes missing is not the app's own: the import error would name it.
    write(tmp_path / "words.py", 'WORD = "one"\n')
    write(tmp_path / "main.py", PLAIN_APP.replace('BODY = "v1"', "from words import WORD as BODY"))
    async with Reloader("main:app", app_dir=tmp_path) as server, polling(server.url) as poller:
        for word in ("two", "three"):
            await save_once(server, jetbrains_safe_write, tmp_path / "words.py", f"WORD = {word!r}\n", 0.1)
            assert await served(server.url) == word
        assert poller.errors == []


async def test_a_real_deletion_still_fails_and_recovers(tmp_path: Path) -> None:
    # The grace given to a save is bounded: a file that stays gone is a change, shown as an error.
    write(tmp_path / "words.py", 'WORD = "one"\n')
    write(tmp_path / "main.py", PLAIN_APP.replace('BODY = "v1"', "from words import WORD as BODY"))
    async with Reloader("main:app", app_dir=tmp_path) as server:
        target = server.generation + 1
        started = time.monotonic()
        (tmp_path / "words.py").unlink()
        failed = await server.wait_for_generation(target, timeout=10)
        assert failed.outcome == "failed"
        assert "words" in failed.summary
        assert time.monotonic() - started < 5.0  # the grace is half a second, not forever
        target = server.generation + 1
        write(tmp_path / "words.py", 'WORD = "two"\n')
        assert (await server.wait_for_generation(target)).outcome == "ready"
        assert await served(server.url) == "two"


# ------------------------------------------------------------------ git checkout of many files

MODULES = 50


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def write_branch(repo: Path, value: int, helper: str, extra: str | None = None) -> None:
    """50 modules and a helper module (`helpers` or `pkg.helpers`); main imports them all, and
    `extra` if given."""
    for i in range(MODULES):
        write(repo / "mods" / f"m{i:02}.py", f"VALUE = {value}  # {'#' * value}\n")
    write(repo / "mods" / "__init__.py", "")
    (repo / "helpers.py").unlink(missing_ok=True)
    shutil.rmtree(repo / "pkg", ignore_errors=True)
    if helper == "pkg.helpers":
        write(repo / "pkg" / "__init__.py", "")
    write(repo / (helper.replace(".", "/") + ".py"), f"NAME = {helper!r}\n")
    imports = "\n".join(f"from mods.m{i:02} import VALUE as V{i}" for i in range(MODULES))
    imports += f"\nfrom {helper} import NAME"
    if extra is not None:
        write(repo / f"{extra}.py", f"NAME = {extra!r}\n")
        imports += f"\nfrom {extra} import NAME"
    total = " + ".join(f"V{i}" for i in range(MODULES))
    write(repo / "main.py", PLAIN_APP.replace('BODY = "v1"', f"{imports}\nBODY = f'{{NAME}} {{{total}}}'"))


def make_repository(repo: Path, go: Path) -> None:
    """Branch main; branch `package`, where every module changes and the helper moves into a
    package; branch `late`, where main imports a new module that git writes last, through a
    smudge filter (as git-lfs has) that waits until the file `go` exists: a checkout that pauses
    midway, as on a slow disk or a busy machine, for as long as the test wants."""
    git(repo, "init", "-q")
    wait = f"for i in $(seq 2000); do [ -e '{go}' ] && break; sleep 0.01; done; cat"
    git(repo, "config", "filter.slow.smudge", wait)
    git(repo, "config", "filter.slow.clean", "cat")
    (repo / ".git" / "info" / "attributes").write_text("wordlist.py filter=slow\n")
    go.touch()  # (the commits below go through the filter too)
    for branch, value, helper, extra in (
        ("main", 1, "helpers", None),
        ("package", 2, "pkg.helpers", None),
        ("late", 3, "helpers", "wordlist"),  # written after main.py and mods/ (in path order)
    ):
        if branch != "main":
            git(repo, "checkout", "-q", "-b", branch, "main")
        write_branch(repo, value, helper, extra)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", branch)
    git(repo, "checkout", "-q", "main")
    go.unlink()


async def test_git_checkout_of_many_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if shutil.which("git") is None:  # CI installs it (.ci/run, scripts/test-python.sh): fail there
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)("needs git")
    repo, go = tmp_path / "repo", tmp_path / "go"
    repo.mkdir()
    make_repository(repo, go)
    caplog.set_level(logging.DEBUG, logger="asgireload")
    checkout: asyncio.Task[None] | None = None
    try:
        async with Reloader("main:app", app_dir=repo) as server, polling(server.url) as poller:
            assert await served(server.url) == f"helpers {MODULES}"
            events = server.events()
            for branch, expected in (
                ("package", f"pkg.helpers {2 * MODULES}"),
                ("main", f"helpers {MODULES}"),
                ("late", f"wordlist {3 * MODULES}"),
                ("main", f"helpers {MODULES}"),
            ):
                target = server.generation + 1
                caplog.clear()
                checkout = asyncio.create_task(asyncio.to_thread(git, repo, "checkout", "-q", branch))
                if branch == "late":
                    # main.py, importing wordlist, is on disk and wordlist.py is not: the generation
                    # that loads it fails; git goes on only once that failure is being held back.
                    await until(
                        lambda: "serves on for" in caplog.text, timeout=20, what="a failure held back"
                    )
                    go.touch()
                await checkout
                event = await server.wait_for_generation(target)
                assert event.outcome == "ready", event.summary
                assert await served(server.url) == expected
            await one_more_plain_save(server, repo / "mods" / "m00.py", "VALUE = 100\n")
            # a checkout may come as more than one burst on a loaded machine, but none of them fails
            await assert_none_failed(server, events)
            assert poller.errors == [], f"{len(poller.errors)} of {poller.requests} requests failed"
    finally:
        go.touch()  # whatever happened, git finishes now
        if checkout is not None:
            with contextlib.suppress(Exception):
                await checkout


# ------------------------------------------------------------------ symlinks


def symlinked_helper(tmp_path: Path) -> tuple[Path, Path]:
    """app/helper.py -> ../shared/helper.py; main answers helper's WORD."""
    app, shared = tmp_path / "app", tmp_path / "shared"
    write(shared / "helper.py", 'WORD = "one"\n')
    write(app / "main.py", PLAIN_APP.replace('BODY = "v1"', "from helper import WORD as BODY"))
    (app / "helper.py").symlink_to(Path("..") / "shared" / "helper.py")
    return app, shared


async def test_an_edit_of_a_symlinked_module_is_seen_by_file_events(tmp_path: Path) -> None:
    app, shared = symlinked_helper(tmp_path)
    async with Reloader("main:app", app_dir=app, poll_interval=NO_SAFETY_SCAN) as server:
        assert await served(server.url) == "one"
        for word, save in (("two", truncate_then_write), ("three", temp_and_rename)):
            target = server.generation + 1
            save(shared / "helper.py", f"WORD = {word!r}\n", 0.0)
            event = await server.wait_for_generation(target, timeout=10)
            assert event.outcome == "ready", event.summary
            assert await served(server.url) == word


async def test_a_re_pointed_symlink_is_followed(tmp_path: Path) -> None:
    app, _ = symlinked_helper(tmp_path)
    write(tmp_path / "other" / "helper.py", 'WORD = "other"\n')
    async with Reloader("main:app", app_dir=app, poll_interval=NO_SAFETY_SCAN) as server:
        target = server.generation + 1
        temporary = app / ".helper.py.new"
        temporary.symlink_to(Path("..") / "other" / "helper.py")
        os.replace(temporary, app / "helper.py")  # like ln -sfn: the link is replaced at once
        assert (await server.wait_for_generation(target, timeout=10)).outcome == "ready"
        assert await served(server.url) == "other"
        # the new target is the one watched now
        target = server.generation + 1
        temp_and_rename(tmp_path / "other" / "helper.py", 'WORD = "other two"\n', 0.0)
        assert (await server.wait_for_generation(target, timeout=10)).outcome == "ready"
        assert await served(server.url) == "other two"


async def test_a_module_in_a_symlinked_folder(tmp_path: Path) -> None:
    app, shared = tmp_path / "app", tmp_path / "shared"
    write(shared / "pkg" / "__init__.py", "")
    write(shared / "pkg" / "words.py", 'WORD = "one"\n')
    write(tmp_path / "elsewhere" / "pkg" / "__init__.py", "")
    write(tmp_path / "elsewhere" / "pkg" / "words.py", 'WORD = "elsewhere"\n')
    write(app / "main.py", PLAIN_APP.replace('BODY = "v1"', "from pkg.words import WORD as BODY"))
    (app / "pkg").symlink_to(Path("..") / "shared" / "pkg", target_is_directory=True)
    async with Reloader("main:app", app_dir=app, poll_interval=NO_SAFETY_SCAN) as server:
        assert await served(server.url) == "one"
        target = server.generation + 1
        jetbrains_safe_write(shared / "pkg" / "words.py", 'WORD = "two"\n', 0.005)
        assert (await server.wait_for_generation(target, timeout=10)).outcome == "ready"
        assert await served(server.url) == "two"
        # the folder link re-pointed
        target = server.generation + 1
        temporary = app / ".pkg.new"
        temporary.symlink_to(Path("..") / "elsewhere" / "pkg", target_is_directory=True)
        os.replace(temporary, app / "pkg")
        assert (await server.wait_for_generation(target, timeout=10)).outcome == "ready"
        assert await served(server.url) == "elsewhere"
