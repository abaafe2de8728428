"""The preload list's import loop (`_preload.import_each`), shared by a worker and the template."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from asgireload._preload import import_each


def test_every_module_is_tried_and_failures_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "preload_good.py").write_text("VALUE = 1\n")
    (tmp_path / "preload_broken.py").write_text("raise RuntimeError('broken on import')\n")
    (tmp_path / "preload_exits.py").write_text("raise SystemExit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ["preload_broken", "preload_missing_module", "preload_exits", "preload_good"]
    try:
        failed = list(import_each(names))
        assert [(name, type(exc)) for name, exc in failed] == [
            ("preload_broken", RuntimeError),
            ("preload_missing_module", ModuleNotFoundError),
            ("preload_exits", SystemExit),
        ]
        assert "preload_good" in sys.modules
    finally:
        for name in names:
            sys.modules.pop(name, None)


def test_stopping_the_loop_stops_importing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "preload_first_fails.py").write_text("raise ValueError('no')\n")
    (tmp_path / "preload_after.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        for name, _ in import_each(["preload_first_fails", "preload_after"]):
            assert name == "preload_first_fails"
            break
        assert "preload_after" not in sys.modules
    finally:
        sys.modules.pop("preload_first_fails", None)
        sys.modules.pop("preload_after", None)


def test_keyboard_interrupt_goes_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "preload_interrupted.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(KeyboardInterrupt):
            list(import_each(["preload_interrupted"]))
    finally:
        sys.modules.pop("preload_interrupted", None)


def test_no_submodule_is_left_without_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the package's __init__ imports a submodule, then fails (a Django app's, before the settings):
    # the submodule must not stay imported alone, or the package's next import finds it half-made
    package = tmp_path / "preload_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import os\nfrom . import sub\nif not os.environ.get('PRELOAD_PKG_READY'):\n"
        "    raise RuntimeError('settings are not configured')\n"
    )
    (package / "sub.py").write_text("from . import deeper\n")
    (package / "deeper.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ["preload_pkg.sub", "preload_pkg.deeper"]
    try:
        assert [name for name, _ in import_each(names)] == names
        assert not [name for name in sys.modules if name.startswith("preload_pkg")]
        monkeypatch.setenv("PRELOAD_PKG_READY", "1")
        import preload_pkg  # type: ignore[import-not-found]  # (as the app would, once it can)

        assert preload_pkg.sub is sys.modules["preload_pkg.sub"]
        assert preload_pkg.sub.deeper is sys.modules["preload_pkg.deeper"]
    finally:
        for name in [name for name in sys.modules if name.startswith("preload_pkg")]:
            del sys.modules[name]
