"""The worker's import graph: which project module's body imported which, recorded in process."""

from __future__ import annotations

import builtins
import importlib
import importlib.machinery
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgireload._worker.imports import MAX_IMPORTS_PER_ENTRY, ImportGraphRecorder

from .conftest import write


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A folder first on sys.path; every module imported meanwhile is forgotten afterwards."""
    before = set(sys.modules)
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in set(sys.modules) - before:
            del sys.modules[name]
        importlib.invalidate_caches()


def record(root: Path, module: str) -> dict[str, set[str]]:
    """Import `module` with the recorder on; the graph as {module: modules its body imported}."""
    recorder = ImportGraphRecorder(lambda path: path.startswith(str(root)))
    recorder.install()
    try:
        importlib.import_module(module)
    finally:
        recorder.uninstall()
    graph: dict[str, set[str]] = {}
    for name, _path, imported in recorder.new_entries():
        graph.setdefault(name, set()).update(imported)
    return graph


def test_a_chain_and_a_module_used_twice(project: Path) -> None:
    write(project / "main.py", "import a\nimport b\n")
    write(project / "a.py", "import c\nimport json\n")
    write(project / "b.py", "from c import value\n")  # imported already: the statement counts
    write(project / "c.py", "value = 1\n")
    assert record(project, "main") == {"main": {"a", "b"}, "a": {"c"}, "b": {"c"}, "c": set()}


def test_circular_imports(project: Path) -> None:
    write(project / "main.py", "import x\n")
    write(project / "x.py", "import y\nX = 1\n")
    write(project / "y.py", "import x\n")
    assert record(project, "main") == {"main": {"x"}, "x": {"y"}, "y": {"x"}}


def test_submodules_through_their_package_and_relative_imports(project: Path) -> None:
    write(project / "main.py", "from app import routes\nfrom app.routes import items as i\n")
    write(project / "app/__init__.py", "")
    write(project / "app/routes/__init__.py", "from . import items, users\n")  # every submodule
    write(project / "app/routes/items.py", "from ..models import Item\nrouter = Item\n")
    write(project / "app/routes/users.py", "from .items import router\n")
    write(project / "app/models.py", "Item = 1\nrouter = 2\n")
    graph = record(project, "main")
    # `from app import routes` binds the submodule: running app/__init__ first is the import
    # system's doing, not main's (issue 23: a package's __init__ may run again alone)
    assert graph["main"] == {"app.routes", "app.routes.items"}
    assert graph["app.routes"] == {"app.routes.items", "app.routes.users"}
    assert graph["app.routes.items"] == {"app.models"}
    assert graph["app.routes.users"] == {"app.routes.items"}
    assert graph["app"] == set()


def test_a_name_the_package_defines_is_a_dependency_on_the_package(project: Path) -> None:
    write(project / "main.py", "import pkg.a\nimport pkg.b\n")
    write(project / "pkg/__init__.py", "helper = 1\n")
    write(project / "pkg/a.py", "from . import helper\n")  # reads a name __init__ defines
    write(project / "pkg/b.py", "from pkg import c\n")  # a submodule: not the package
    write(project / "pkg/c.py", "")
    graph = record(project, "main")
    assert graph["pkg.a"] == {"pkg"}
    assert graph["pkg.b"] == {"pkg.c"}


def test_a_package_running_again_finds_its_held_submodules(project: Path) -> None:
    write(project / "pkg/__init__.py", "import sys\nSEEN = hasattr(sys.modules[__name__], 'sub')\n")
    write(project / "pkg/sub.py", "VALUE = 7\n")
    importlib.import_module("pkg.sub")
    held = sys.modules.pop("pkg")  # as in a worker forked from a layer holding pkg.sub only
    recorder = ImportGraphRecorder(lambda path: path.startswith(str(project)))
    recorder.held = frozenset({"pkg.sub"})
    recorder.install()
    try:
        again = importlib.import_module("pkg")
    finally:
        recorder.uninstall()
    # as in a fresh process: not an attribute while the body runs, one once `import pkg.sub` is done
    assert again is not held
    assert again.SEEN is False
    assert again.sub is sys.modules["pkg.sub"]


def test_a_module_patched_at_import_depends_on_its_patcher(project: Path) -> None:
    write(project / "main.py", "import patcher\nimport reader\nimport pkg.late\n")
    write(project / "target.py", "VALUE = 1\n")
    write(project / "patcher.py", "import target\ntarget.VALUE = 2\nimport pkg\n")
    write(project / "reader.py", "from target import VALUE\n")  # got the patched value
    write(project / "pkg/__init__.py", "")
    write(project / "pkg/late.py", "")  # (the import system setting pkg.late is no patch)
    graph = record(project, "main")
    assert graph["target"] == {"patcher"}
    assert graph["pkg"] == set()


def test_dotted_import_binds_every_package_on_the_way(project: Path) -> None:
    write(project / "main.py", "import pkg.sub.leaf\n")
    write(project / "pkg/__init__.py", "")
    write(project / "pkg/sub/__init__.py", "")
    write(project / "pkg/sub/leaf.py", "")
    assert record(project, "main")["main"] == {"pkg", "pkg.sub", "pkg.sub.leaf"}


def test_a_module_under_two_names_is_two_modules_of_one_file(project: Path) -> None:
    write(project / "main.py", "import app.util\nimport util\n")
    write(project / "app/__init__.py", "import sys, os\nsys.path.insert(0, os.path.dirname(__file__))\n")
    write(project / "app/util.py", "")
    recorder = ImportGraphRecorder(lambda path: path.startswith(str(project)))
    recorder.install()
    try:
        importlib.import_module("main")
    finally:
        recorder.uninstall()
        sys.path.remove(str(project / "app"))
    assert recorder.files["util"] == recorder.files["app.util"] == str(project / "app/util.py")
    assert recorder.imports["main"] == {"app", "app.util", "util"}


def test_imports_made_by_a_framework_count_for_the_body_that_called_it(project: Path) -> None:
    write(project / "main.py", "import helpers\nhelpers.load('plugin')\n")
    write(
        project / "helpers.py",
        "import importlib\ndef load(name):\n    return importlib.import_module(name)\n",
    )
    write(project / "plugin.py", "")
    graph = record(project, "main")
    assert graph["main"] == {"helpers", "plugin"}  # main's body ran the import, not helpers' body
    assert graph["helpers"] == set()


def test_installed_modules_are_not_nodes(project: Path) -> None:
    write(project / "main.py", "import json, email.utils\nimport local\n")
    write(project / "local.py", "")
    assert record(project, "main") == {"main": {"local"}, "local": set()}


def test_lazy_imports_are_reported_later_without_importers(project: Path) -> None:
    write(project / "main.py", "def handler():\n    import lazy\n    return lazy\n")
    write(project / "lazy.py", "import later_dep\n")
    write(project / "later_dep.py", "")
    recorder = ImportGraphRecorder(lambda path: path.startswith(str(project)))
    recorder.install()
    main = importlib.import_module("main")
    recorder.uninstall()
    assert [entry[0] for entry in recorder.new_entries()] == ["main"]
    main.handler()  # while serving
    lazy = {name: imported for name, _, imported in recorder.new_entries()}
    assert lazy == {"lazy": (), "later_dep": ()}
    assert recorder.new_entries() == []


def test_the_hooks_are_put_back(project: Path) -> None:
    original_import, original_exec = builtins.__import__, importlib.machinery.SourceFileLoader.exec_module
    recorder = ImportGraphRecorder(lambda path: False)
    recorder.install()
    assert builtins.__import__ is not original_import
    recorder.uninstall()
    assert builtins.__import__ is original_import
    assert importlib.machinery.SourceFileLoader.exec_module is original_exec


def test_a_long_list_of_imports_is_split_over_entries(project: Path) -> None:
    count = MAX_IMPORTS_PER_ENTRY + 20
    write(project / "main.py", "".join(f"import m{i}\n" for i in range(count)))
    for i in range(count):
        write(project / f"m{i}.py", "")
    recorder = ImportGraphRecorder(lambda path: path.startswith(str(project)))
    recorder.install()
    try:
        importlib.import_module("main")
    finally:
        recorder.uninstall()
    of_main = [imported for name, _, imported in recorder.new_entries() if name == "main"]
    assert [len(part) for part in of_main] == [MAX_IMPORTS_PER_ENTRY, 20]


def test_a_hook_the_app_put_over_ours_stays(project: Path) -> None:
    write(
        project / "main.py",
        "import builtins\n_inner = builtins.__import__\n"
        "def app_import(*args, **kwargs):\n    return _inner(*args, **kwargs)\n"
        "builtins.__import__ = app_import\n",
    )
    original = builtins.__import__
    try:
        graph = record(project, "main")
        assert builtins.__import__.__name__ == "app_import"
        assert graph == {"main": set()}
    finally:
        builtins.__import__ = original
