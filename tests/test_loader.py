"""The worker's import side: compiling from source, what a standby may preload, failure reports."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asgireload import _protocol as protocol
from asgireload._protocol import Failure
from asgireload._watchfilter import InstallLocations, WatchFilter
from asgireload._worker.loader import AppLoadError, ImportRecorder, load_app
from asgireload._worker.loadfailure import (
    MAX_SUMMARY_BYTES,
    MAX_TRACEBACK_BYTES,
    cap_text,
    catch_lifespan_failure,
    failure_from_exception,
    missing_module_paths,
    summary_of,
)

from .conftest import write
from .test_watchfilter import fake_interpreter


@pytest.fixture
def fresh_modules() -> Iterator[None]:
    """Forget the modules a test imported, so names and files never leak into another test."""
    before = set(sys.modules)
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
        importlib.invalidate_caches()


def import_error(name: str) -> ImportError:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        return exc
    raise AssertionError(f"{name} imported")


# ---------------------------------------------------------------- what the standby may preload


@pytest.mark.usefixtures("fresh_modules")
def test_new_modules_names_only_installed_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = InstallLocations.of_interpreter()
    fake, _, site_dir = fake_interpreter(tmp_path / "prefix")
    locations = InstallLocations(stdlib=real.stdlib, site=real.site + fake.site)
    app, sibling = tmp_path / "app", tmp_path / "sibling"
    write(site_dir / "h1_installed" / "__init__.py", "from . import sub\n")
    write(site_dir / "h1_installed" / "sub.py", "")
    write(site_dir / "h1_mixed" / "__init__.py", "")
    write(site_dir / "h1_nsok" / "part.py", "")
    write(site_dir / "h1_nsmixed" / "a.py", "")
    write(sibling / "h1_nsmixed" / "b.py", "")
    write(sibling / "h1_sibling.py", "")
    write(app / "h1_project.py", "")
    write(app / "h1_mixed_ext" / "local.py", "")
    for folder in (sibling, app, site_dir):
        monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("colorsys", None)  # a small stdlib module, imported again below

    recorder = ImportRecorder(WatchFilter([str(app)], locations=locations))
    recorder.new_modules()  # what the test process had imported already
    recorder.install()
    try:
        for name in ("colorsys", "h1_installed", "h1_nsok.part", "h1_nsmixed.a", "h1_nsmixed.b"):
            importlib.import_module(name)
        importlib.import_module("h1_sibling")
        importlib.import_module("h1_project")
        mixed = importlib.import_module("h1_mixed")
        mixed.__path__.append(str(app / "h1_mixed_ext"))  # an installed package extended by the project
        importlib.import_module("h1_mixed.local")
    finally:
        recorder.uninstall()
    sys.modules["h1_dyn_top"] = types.ModuleType("h1_dyn_top")  # made by code, not importable by name
    sys.modules["h1_installed.dyn"] = types.ModuleType("h1_installed.dyn")  # made by its package

    files, names = recorder.new_modules()

    ours = [n for n in names if n.startswith("h1_") or n == "colorsys"]
    assert sorted(ours) == [
        "colorsys",
        "h1_installed",
        "h1_installed.dyn",
        "h1_installed.sub",
        "h1_nsok",
        "h1_nsok.part",
    ]
    reported = {path: stat for path, *stat in files}
    for source in (app / "h1_project.py", sibling / "h1_sibling.py", site_dir / "h1_installed" / "sub.py"):
        assert reported[str(source)][0] is not None, source
    # compiled from source (and its stat taken as it was read): everything but installed code
    assert str(app / "h1_project.py") in recorder.stats
    assert str(sibling / "h1_sibling.py") in recorder.stats
    assert str(app / "h1_mixed_ext" / "local.py") in recorder.stats
    assert str(site_dir / "h1_installed" / "sub.py") not in recorder.stats
    assert recorder.new_modules() == ([], [])


STALE_CHECK = """
import importlib, sys
from asgireload._worker.loader import ImportRecorder
from asgireload._watchfilter import WatchFilter
sys.path.insert(0, sys.argv[1])
if sys.argv[3] == "recorder":
    ImportRecorder(WatchFilter([sys.argv[2]])).install()
print(importlib.import_module("h1_helper").VALUE)
"""


def run_python(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=30, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_file_outside_the_watched_folders_never_runs_from_a_stale_pyc(tmp_path: Path) -> None:
    """Two same-size saves within one mtime: CPython's .pyc check cannot tell them apart."""
    sibling, app = tmp_path / "sibling", tmp_path / "app"
    app.mkdir()
    helper = write(sibling / "h1_helper.py", "VALUE = 'one'\n")
    assert run_python("-c", STALE_CHECK, str(sibling), str(app), "plain") == "one"  # writes the .pyc
    before = helper.stat()
    helper.write_text("VALUE = 'two'\n")
    os.utime(helper, ns=(before.st_atime_ns, before.st_mtime_ns))

    assert run_python("-c", STALE_CHECK, str(sibling), str(app), "plain") == "one"  # the trap is set
    assert run_python("-c", STALE_CHECK, str(sibling), str(app), "recorder") == "two"


# ---------------------------------------------------------------- a module that is missing


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_modules: None) -> tuple[Path, Path]:
    """A watched app folder with a package, and an unwatched folder, both on sys.path."""
    app, other = tmp_path / "app", tmp_path / "other"
    write(app / "h1pkg" / "__init__.py", "")
    write(app / "h1pkg" / "sub" / "__init__.py", "")
    write(app / "h1plain.py", "VALUE = 1\n")
    other.mkdir()
    monkeypatch.syspath_prepend(str(other))
    monkeypatch.syspath_prepend(str(app))
    return app, other


def test_missing_top_level_module(layout: tuple[Path, Path]) -> None:
    app, _ = layout
    exc = import_error("h1_nowhere")

    assert missing_module_paths(exc, [str(app)]) == [str(app / "h1_nowhere.py"), str(app / "h1_nowhere")]
    assert missing_module_paths(exc, []) == []


@pytest.mark.parametrize(
    ("statement", "where"),
    [
        ("import h1pkg.gone", "h1pkg/gone"),  # a.b whose parent a is imported
        ("import h1pkg.sub.gone", "h1pkg/sub/gone"),
        ("import h1pkg.gone.deeper", "h1pkg/gone"),  # the first part that is missing
        ("from h1pkg import gone", "h1pkg/gone"),  # neither attribute nor submodule yet
        ("from h1pkg.sub import gone", "h1pkg/sub/gone"),
    ],
)
def test_missing_submodule(layout: tuple[Path, Path], statement: str, where: str) -> None:
    app, _ = layout
    with pytest.raises(ImportError) as excinfo:
        exec(statement, {})

    base = str(app / where)
    assert missing_module_paths(excinfo.value, [str(app)]) == [base + ".py", base]


def test_a_missing_attribute_of_a_module_is_not_a_missing_module(layout: tuple[Path, Path]) -> None:
    app, _ = layout
    with pytest.raises(ImportError) as excinfo:
        exec("from h1plain import nothing", {})

    assert missing_module_paths(excinfo.value, [str(app)]) == []


def test_the_failure_lists_where_the_module_would_be_created(layout: tuple[Path, Path]) -> None:
    app, _ = layout
    write(app / "h1_main.py", "import h1_helpers\n")
    project = WatchFilter([str(app)])

    with pytest.raises(AppLoadError) as excinfo:
        load_app("h1_main:app", factory=False, app_dir=str(app), project=project)
    failure = excinfo.value.failure
    assert failure.summary == "ModuleNotFoundError: No module named 'h1_helpers'"
    assert failure.missing == (str(app / "h1_helpers.py"), str(app / "h1_helpers"))
    assert failure.files == (str(app / "h1_main.py"),)

    with pytest.raises(AppLoadError) as excinfo:
        load_app("h1_renamed:app", factory=False, app_dir=str(app), project=project)
    assert excinfo.value.failure.kind == "usage"
    assert excinfo.value.failure.missing == (str(app / "h1_renamed.py"), str(app / "h1_renamed"))

    exc = import_error("h1_other_missing")
    assert failure_from_exception(exc, "import").missing == ()  # no project, no roots


# ---------------------------------------------------------------- summaries and sizes


class CustomError(Exception):
    pass


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    ("exc", "summary"),
    [
        (ValueError("first line\nsecond line\nthird"), "ValueError: first line"),
        (ValueError("\n\n  first after blanks  \nnext"), "ValueError: first after blanks"),
        (KeyError("name"), "KeyError: 'name'"),
        (RuntimeError(), "RuntimeError"),
        (CustomError("boom"), f"{__name__}.CustomError: boom"),
        (Unprintable(), f"{__name__}.Unprintable: <the exception's str() failed>"),
    ],
)
def test_summary_is_the_type_and_the_first_line(exc: BaseException, summary: str) -> None:
    assert summary_of(exc) == summary
    assert failure_from_exception(raised(exc), "import").summary == summary


def test_a_syntax_error_keeps_its_usual_line(tmp_path: Path) -> None:
    path = str(tmp_path / "main.py")
    with pytest.raises(SyntaxError) as excinfo:
        compile("x = 1\ny = 2\ndef broken(:\n", path, "exec")

    failure = failure_from_exception(excinfo.value, "import")

    assert failure.summary == "SyntaxError: invalid syntax (main.py, line 3)"
    assert failure.files[-1] == path  # the file to fix comes last
    assert "def broken(:" in failure.traceback


CUT = re.compile(r"\u2026 \[([\d,]+) characters cut\]")


@pytest.mark.parametrize("char", ["x", "é", "日", "\U0001f600", "\\", "\x01"])
def test_a_huge_failure_is_cut_and_still_fits_in_a_message(char: str) -> None:
    exc = raised(ValueError("start " + char * 2_000_000 + " the end"))

    failure = failure_from_exception(exc, "import")

    assert len(failure.traceback.encode()) <= MAX_TRACEBACK_BYTES
    assert len(failure.summary.encode()) <= MAX_SUMMARY_BYTES
    assert failure.summary.startswith("ValueError: start ")
    assert CUT.search(failure.summary)
    assert failure.traceback.startswith("Traceback (most recent call last):")
    assert failure.traceback.rstrip().endswith(" the end")  # the end of the message is kept
    assert CUT.search(failure.traceback)
    assert "\ufffd" not in failure.traceback  # no character was split
    line = protocol.encode(protocol.Failed(1, failure))
    assert len(line) <= protocol.MAX_LINE


def test_cap_text_counts_what_it_cut() -> None:
    text = "a" * 10_000 + "é" * 10_000

    for keep_end in (False, True):
        capped = cap_text(text, 4096, keep_end=keep_end)
        match = CUT.search(capped)
        assert match is not None
        kept = len(capped) - len(match.group(0)) - (2 if keep_end else 0)
        assert int(match.group(1).replace(",", "")) == len(text) - kept
        assert len(capped.encode()) <= 4096
    assert cap_text("short", 4096) == "short"
    assert cap_text(text, 4096, keep_end=True).endswith("é")


def test_the_cut_is_announced_with_thousands_separators() -> None:
    capped = cap_text("x" * 1_300_000, 4096)

    match = CUT.search(capped)
    assert match is not None
    assert re.fullmatch(r"\d{1,3}(,\d{3})+", match.group(1))


# ---------------------------------------------------------------- lifespan failures


async def run_lifespan(app: Any, sink: dict[str, Failure], *, project: WatchFilter | None = None) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        pass

    wrapped = catch_lifespan_failure(app, sink, project=project)
    with contextlib.suppress(Exception):  # raised again after the failure was recorded
        await wrapped({"type": "lifespan"}, receive, send)


@pytest.mark.parametrize(
    ("message", "summary"),
    [
        ("\n\n  migrations pending  \nrun: alembic upgrade head\n", "migrations pending"),
        ("Traceback (most recent call last):\n  File 'x.py'\n    boom()\nKeyError: 'db'\n", "KeyError: 'db'"),
        ("", "lifespan start-up failed"),
    ],
)
async def test_a_lifespan_failure_message_summary(message: str, summary: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": message})

    sink: dict[str, Failure] = {}
    await run_lifespan(app, sink)

    assert sink["failure"].kind == "lifespan"
    assert sink["failure"].summary == summary
    assert (sink["failure"].files, sink["failure"].missing) == ((), ())


async def test_a_lifespan_exception_after_its_message_wins() -> None:
    """Starlette sends the formatted traceback, then raises: the exception names the files."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        try:
            raise ConnectionError("cache unreachable\nat 10.0.0.1")
        except ConnectionError:
            import traceback

            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            raise

    sink: dict[str, Failure] = {}
    await run_lifespan(app, sink)

    assert sink["failure"].summary == "ConnectionError: cache unreachable"
    assert __file__ in sink["failure"].files


async def test_a_huge_lifespan_message_is_cut() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "bad " + "x" * 1_000_000})

    sink: dict[str, Failure] = {}
    await run_lifespan(app, sink)

    assert len(sink["failure"].summary.encode()) <= MAX_SUMMARY_BYTES
    assert len(sink["failure"].traceback.encode()) <= MAX_TRACEBACK_BYTES


# ---------------------------------------------------------------- paths that are not UTF-8


@pytest.mark.usefixtures("fresh_modules")
def test_a_failure_in_a_folder_whose_name_is_not_utf8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9"))
    os.mkdir(folder)
    module = os.path.join(folder, "h1_latin.py")
    Path(module).write_text(
        textwrap.dedent("""
        import h1_latin_missing
    """)
    )
    monkeypatch.syspath_prepend(folder)

    exc = import_error("h1_latin")
    failure = failure_from_exception(exc, "import", project=WatchFilter([folder]))

    assert failure.files[-1] == module  # the exact path, to watch
    assert os.path.join(folder, "h1_latin_missing.py") in failure.missing
    assert "caf\\xe9" in failure.traceback  # shown as text
    json.dumps(failure.to_json())
    line = protocol.encode(protocol.Failed(1, failure))
    decoded = protocol.decode(line, protocol.WORKER_MESSAGES)
    assert isinstance(decoded, protocol.Failed)
    assert decoded.failure.files[-1] == module
