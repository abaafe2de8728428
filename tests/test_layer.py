"""The project layer's own imports, in this process: stubs for packages it does not hold, and
fork safety detected per module."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgireload._protocol import Settings
from asgireload._worker import layer
from asgireload._worker.layer import LayerImport

from .conftest import write
from .test_imports import project as project  # the fixture: every module imported is forgotten


@pytest.fixture(autouse=True)
def _no_inheritance() -> Iterator[None]:
    yield
    layer.INHERITED = None


def settings_for(folder: Path) -> Settings:
    return Settings(
        app="main:app",
        factory=False,
        app_dir=str(folder),
        roots=(str(folder),),
        includes=(),
        excludes=(),
        drain_timeout=1.0,
        show_errors=True,
        only_loopback_hosts=True,
        env={},
        preload=(),
        uvicorn={},
        handoff_fd=-1,
        listen_fd=-1,
    )


def test_a_submodule_is_held_under_a_stub_of_its_package(project: Path) -> None:
    write(project / "pkg/__init__.py", "raise RuntimeError('the package is not held: never run')\n")
    write(project / "pkg/sub.py", "from . import leaf\nVALUE = leaf.VALUE\n")
    write(project / "pkg/leaf.py", "VALUE = 1\n")
    path = list(sys.path)
    report = LayerImport(settings_for(project), ["pkg.leaf", "pkg.sub"]).run()
    assert report["type"] == "layered"
    assert report["modules"] == ["pkg.leaf", "pkg.sub"]
    files = {entry[0]: entry for entry in report["files"]}
    st = os.stat(project / "pkg/sub.py")
    assert files[str(project / "pkg/sub.py")] == [
        str(project / "pkg/sub.py"),
        st.st_mtime_ns,
        st.st_size,
        st.st_ino,
    ]
    assert "pkg" not in sys.modules  # the stub is gone: a worker runs the real __init__
    assert sys.modules["pkg.sub"].VALUE == 1
    assert sys.path == path
    assert layer.INHERITED is not None
    assert layer.INHERITED.held == {"pkg.leaf", "pkg.sub"}
    assert str(project / "pkg/sub.py") in layer.INHERITED.stats


def test_a_thread_started_at_import_is_unsafe(project: Path) -> None:
    write(project / "quiet.py", "")
    write(
        project / "threaded.py",
        "import threading\nstop = threading.Event()\nthreading.Thread(target=stop.wait).start()\n",
    )
    try:
        report = LayerImport(settings_for(project), ["quiet", "threaded"]).run()
    finally:
        threaded = sys.modules.get("threaded")
        if threaded is not None:
            threaded.stop.set()
    assert report == {"type": "unsafe", "module": "threaded", "why": "it started a thread at import"}
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name.startswith("Thread-"):
            thread.join(5)


def test_a_socket_left_open_at_import_is_unsafe_a_file_is_not(project: Path) -> None:
    write(project / "reader.py", "import os\nFD = os.open(os.devnull, os.O_RDONLY)\n")
    write(project / "opener.py", "import socket\nPAIR = socket.socketpair()\n")
    try:
        report = LayerImport(settings_for(project), ["reader", "opener"]).run()
    finally:
        os.close(sys.modules["reader"].FD)
        for sock in getattr(sys.modules.get("opener"), "PAIR", ()):
            sock.close()
    assert report["type"] == "unsafe", report
    assert report["module"] == "opener"
    assert report["why"].startswith("it left socket:[")


def test_an_import_that_fails_here_or_pulls_in_a_module_not_held_is_unfit(project: Path) -> None:
    write(project / "broken.py", "import asyncio\nasyncio.get_running_loop()\n")
    write(project / "greedy.py", "import excluded\n")
    write(project / "excluded.py", "")
    report = LayerImport(settings_for(project), ["broken"]).run()
    assert report["type"] == "unfit"
    assert report["why"].startswith("RuntimeError: no running event loop")
    report = LayerImport(settings_for(project), ["greedy"]).run()
    assert report == {"type": "unfit", "module": "greedy", "why": "it imported excluded, not held"}


def test_a_file_left_open_for_writing_at_import_is_unsafe_one_for_appending_is_not(project: Path) -> None:
    write(project / "appender.py", "LOG = open(__file__ + '.log', 'a')\n")
    write(
        project / "database.py",
        "import sqlite3\nDB = sqlite3.connect(__file__ + '.db')\nDB.execute('create table t (x)')\n",
    )
    try:
        report = LayerImport(settings_for(project), ["appender", "database"]).run()
    finally:
        for name, attribute in (("appender", "LOG"), ("database", "DB")):
            opened = getattr(sys.modules.get(name), attribute, None)
            if opened is not None:
                opened.close()
    assert report["type"] == "unsafe", report
    assert report["module"] == "database"
    assert report["why"].endswith("database.py.db open for writing at import")


def test_an_exit_handler_registered_at_import_is_unsafe(project: Path) -> None:
    write(project / "cleaner.py", "import atexit\natexit.register(print, 'bye')\n")
    report = LayerImport(settings_for(project), ["cleaner"]).run()
    atexit.unregister(print)
    assert report == {
        "type": "unsafe",
        "module": "cleaner",
        "why": "it registered an exit handler (atexit) at import",
    }
