"""The supervisor's import graph: which project modules must run again for a set of changed files."""

from __future__ import annotations

import time

from asgireload._protocol import ImportEntry
from asgireload._supervisor.importgraph import ImportGraph


def graph_of(
    edges: dict[str, list[str]], app: str = "main", files: dict[str, str] | None = None
) -> ImportGraph:
    """A graph from {module: modules its body imported}; each module's file is /p/<dotted>.py."""
    files = files or {}
    graph = ImportGraph(app)
    graph.add((m, files.get(m, f"/p/{m.replace('.', '/')}.py"), tuple(i)) for m, i in edges.items())
    return graph


def f(module: str) -> str:
    return f"/p/{module.replace('.', '/')}.py"


def test_a_chain() -> None:
    graph = graph_of({"main": ["routes"], "routes": ["services"], "services": ["models"], "models": []})
    assert graph.must_run_again([f("models")]) == {"models", "services", "routes", "main"}
    assert graph.must_run_again([f("routes")]) == {"routes", "main"}
    assert graph.must_run_again([f("main")]) == {"main"}


def test_the_app_module_runs_again_always() -> None:
    graph = graph_of({"main": ["a"], "a": [], "lazy": []})
    assert graph.must_run_again([]) == {"main"}
    assert graph.must_run_again([f("lazy")]) == {"lazy", "main"}  # imported while serving: no importers


def test_a_diamond() -> None:
    graph = graph_of(
        {"main": ["left", "right"], "left": ["base"], "right": ["base"], "base": [], "other": []}
    )
    assert graph.must_run_again([f("base")]) == {"base", "left", "right", "main"}
    assert graph.must_run_again([f("left")]) == {"left", "main"}


def test_a_model_imported_by_two_services() -> None:
    edges: dict[str, list[str]] = {"main": [f"routes.r{i}" for i in range(5)]}
    edges |= {f"routes.r{i}": [f"services.s{i}"] for i in range(5)}
    edges |= {"services.s0": ["models.m"], "services.s1": ["models.m"], "services.s2": [], "models.m": []}
    graph = graph_of(edges)
    assert graph.must_run_again([f("models.m")]) == {
        "models.m", "services.s0", "services.s1", "routes.r0", "routes.r1", "main"
    }  # fmt: skip


def test_cycles() -> None:
    graph = graph_of({"main": ["x"], "x": ["y"], "y": ["z"], "z": ["x"], "w": ["w"]})
    assert graph.must_run_again([f("z")]) == {"x", "y", "z", "main"}
    assert graph.must_run_again([f("w")]) == {"w", "main"}


def test_a_package_whose_init_imports_every_submodule() -> None:
    subs = [f"app.routes.r{i}" for i in range(30)]
    edges = {
        "main": ["app", "app.routes"],
        "app": [],
        "app.routes": subs,
        **{s: ["app.models"] for s in subs},
    }
    edges["app.models"] = []
    graph = graph_of(edges, files={"app": "/p/app/__init__.py", "app.routes": "/p/app/routes/__init__.py"})
    assert graph.must_run_again([f("app.routes.r7")]) == {"app.routes.r7", "app.routes", "main"}
    assert graph.must_run_again(["/p/app/routes/__init__.py"]) == {"app.routes", "main"}
    assert graph.must_run_again([f("app.models")]) == {"app.models", *subs, "app.routes", "main"}


def test_a_module_under_two_names() -> None:
    shared = "/p/app/util.py"
    graph = graph_of(
        {"main": ["app.util", "views"], "views": ["util"], "app.util": [], "util": []},
        files={"app.util": shared, "util": shared},
    )
    assert graph.modules_of(shared) == {"app.util", "util"}
    assert graph.must_run_again([shared]) == {"app.util", "util", "views", "main"}


def test_a_deleted_or_renamed_module_is_found_by_its_old_file() -> None:
    graph = graph_of({"main": ["old_name"], "old_name": []})
    # a rename changes two paths: the old file (gone) and the new one (not a module of the graph yet)
    assert graph.must_run_again([f("old_name"), f("new_name")]) == {"old_name", "main"}


def test_a_file_that_is_not_a_module_of_the_graph() -> None:
    graph = graph_of({"main": ["a"], "a": []})
    assert graph.must_run_again(["/p/templates/page.html", "/elsewhere/x.py"]) == {"main"}


def test_entries_of_one_module_in_several_parts() -> None:
    graph = ImportGraph("main")
    entries: list[ImportEntry] = [("main", f("main"), ("a",)), ("a", f("a"), ()), ("main", f("main"), ("b",))]
    graph.add(entries)
    graph.add([("b", f("b"), ())])
    assert graph.importers_of("b") == {"main"}
    assert len(graph) == 3
    assert "b" in graph


def test_in_import_order() -> None:
    graph = graph_of({"main": ["b", "a"], "b": [], "a": []})
    assert graph.in_import_order({"a", "main", "zz"}) == ["main", "a", "zz"]


def test_three_hundred_changed_files_in_a_big_graph_is_fast() -> None:
    edges: dict[str, list[str]] = {"main": [f"routers.r{i}" for i in range(1000)]}
    for i in range(1000):
        edges[f"routers.r{i}"] = [f"services.s{i}", f"services.s{(i + 1) % 1000}"]
        edges[f"services.s{i}"] = [f"models.m{i}", f"models.m{(i * 7) % 1000}", f"services.s{(i + 3) % 1000}"]
        edges[f"models.m{i}"] = [f"models.m{(i + 1) % 1000}"] if i % 10 else []
    graph = graph_of(edges)
    changed = [f(f"models.m{i}") for i in range(0, 1000, 10)] + [f(f"routers.r{i}") for i in range(200)]
    started = time.perf_counter()
    needed = graph.must_run_again(changed)
    took = time.perf_counter() - started
    assert needed == set(edges)  # the model cycle reaches every service, and so every router
    assert took < 0.5
    assert graph.must_run_again([f("routers.r5")]) == {"routers.r5", "main"}
