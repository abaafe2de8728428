"""The project layers' decisions, with no process: what a layer holds, and when it fits."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from asgireload._supervisor.importgraph import DjangoSetup, ImportGraph
from asgireload._supervisor.layerbook import FROM_BASE, LIKELY_KEPT, LayerBook, LayerStage, Stat
from asgireload._supervisor.projectlayers import likely_edited

from .test_importgraph import f, graph_of

EDGES: dict[str, list[str]] = {
    "main": ["routes", "routes.items", "routes.users", "heavy"],
    "routes": ["routes.items", "routes.users"],
    "routes.items": ["services.items"],
    "routes.users": ["services.users"],
    "services.items": ["models"],
    "services.users": ["models"],
    "models": [],
    "heavy": [],
}
STAT: Stat = (1, 10, 100)


def held_files(book: LayerBook, layer: int, modules: list[str]) -> None:
    """The layer says it holds `modules`, having seen STAT for each file (as the scanner does)."""
    book.ready(layer, modules, {f(m): STAT for m in modules}, lambda path: STAT)


def test_a_layer_holds_everything_but_the_app_module_and_what_likely_edits_make_run_again() -> None:
    graph = graph_of(EDGES)
    assert LayerBook().plan(graph) == [m for m in EDGES if m != "main"]
    book = LayerBook([f("routes.items")])
    assert book.plan(graph) == ["routes.users", "services.items", "services.users", "models", "heavy"]
    book.likely.add(f("models"))  # everything that imports it runs again
    assert book.plan(graph) == ["heavy"]


def test_a_package_that_runs_again_leaves_its_other_submodules_held() -> None:
    # routes/__init__ imports every route; editing one route runs the package again, not its siblings
    plan = LayerBook([f("routes.items")]).plan(graph_of(EDGES))
    assert "routes" not in plan
    assert "routes.users" in plan  # (the layer imports it under a stub of `routes`)


def test_refused_modules_and_their_importers_are_never_held() -> None:
    book = LayerBook()
    record = book.wanted(graph_of(EDGES), base=1)
    assert record is not None
    book.refuse(record.id, "services.users", "it started a thread at import", unsafe=True)
    assert record.id not in book.layers
    said = (20, "The project layer does not hold services.users: it started a thread at import.")
    assert book.take_log()[-1] == said
    plan = book.plan(graph_of(EDGES))
    assert "services.users" not in plan
    assert "routes.users" not in plan
    assert "models" in plan
    book.refuse(-9, "services.users", "again", unsafe=True)
    assert book.take_log() == []  # said once


def test_a_layer_that_holds_nothing_the_plan_leaves_out_will_do() -> None:
    book = LayerBook([f("routes.items")])
    assert book.wanted(graph_of(EDGES), base=1) is not None
    grown = graph_of({**EDGES, "lazy": []})  # a module imported while serving, reported since
    assert book.wanted(grown, base=1) is None
    book.likely.add(f("models"))
    assert book.wanted(grown, base=1) is not None  # this one leaves out more


def test_one_layer_per_plan_and_none_that_holds_nothing() -> None:
    book = LayerBook()
    assert book.wanted(None, base=1) is None
    assert book.wanted(graph_of({"main": []}), base=1) is None  # only the app's module
    first = book.wanted(graph_of(EDGES), base=1)
    assert first is not None
    assert book.wanted(graph_of(EDGES), base=1) is None  # one like it is preparing
    book.changed([f("routes.items")])
    second = book.wanted(graph_of(EDGES), base=1)
    assert second is not None
    assert second.id < first.id  # (negative: never a base template's id)


def test_a_layer_fits_until_a_file_it_holds_changes() -> None:
    book = LayerBook()
    record = book.wanted(graph_of(EDGES), base=1)
    assert record is not None
    assert book.fitting(1, lambda path: STAT) is None  # preparing
    held_files(book, record.id, list(record.order))
    assert book.fitting(1, lambda path: STAT) is record
    assert book.fitting(2, lambda path: STAT) is None  # another base template's
    book.changed([f("main")])  # not held: it still fits
    assert book.fitting(1, lambda path: STAT) is record
    book.changed([f("models")])
    assert record.stage is LayerStage.RETIRED
    assert book.take_retiring() == [record.id]
    assert book.fitting(1, lambda path: STAT) is None


def test_the_scanners_view_decides_at_every_fork_and_when_it_is_ready() -> None:
    book = LayerBook()
    record = book.wanted(graph_of(EDGES), base=1)
    assert record is not None
    other: Stat = (2, 10, 100)
    # changed after the layer read it, before it said so: never forks
    book.ready(record.id, ["models"], {f("models"): STAT}, lambda path: other)
    assert record.stage is LayerStage.RETIRED
    again = book.wanted(graph_of(EDGES), base=1)
    assert again is not None
    held_files(book, again.id, ["models"])
    assert book.fitting(1, lambda path: None) is None  # deleted (or no longer watched)
    assert again.stage is LayerStage.RETIRED


def test_a_file_that_is_no_module_makes_every_layer_unfit() -> None:
    book = LayerBook()
    record = book.wanted(graph_of(EDGES), base=1)
    assert record is not None
    held_files(book, record.id, ["models"])
    book.changed(["/p/templates/page.html"])  # a held module may have read it at import
    assert record.stage is LayerStage.RETIRED


def test_the_standby_is_replaced_when_its_layer_does_not_fit_or_once_a_layer_is_ready() -> None:
    book = LayerBook()
    same = lambda path: STAT  # noqa: E731  (the scanner sees every file as the layer did)
    book.forked_from[7] = FROM_BASE
    assert book.standby_unfit(7, same) is None  # no layer yet
    assert book.standby_unfit(99, same) is None  # spawned: nothing to say
    record = book.wanted(graph_of(EDGES), base=1)
    assert record is not None
    held_files(book, record.id, ["models"])
    assert book.standby_unfit(7, same) == "a project layer is ready"
    assert book.standby_unfit(7, same) is None  # once (a fork from it that failed does not loop)
    book.forked_from[8] = record.id
    assert book.held_by(8) == 1
    assert book.standby_unfit(8, same) is None
    book.changed([f("models")])
    assert book.standby_unfit(8, same) == (
        "the project layer it was forked from does not fit: it holds /p/models.py, which changed"
    )


def test_a_standby_whose_layer_read_a_file_that_changed_since_is_replaced() -> None:
    book = LayerBook()
    record = book.wanted(graph_of(EDGES), base=1)
    assert record is not None
    data = "/p/data.json"  # read at import by a held module: no scanner reports it
    book.ready(record.id, ["models"], {f("models"): STAT, data: STAT}, lambda path: STAT)
    book.forked_from[8] = record.id
    assert book.standby_unfit(8, lambda path: STAT) is None
    changed = lambda path: None if path == data else STAT  # noqa: E731
    assert book.standby_unfit(8, changed) == (
        "the project layer it was forked from does not fit: it holds /p/data.json, which changed"
    )
    assert record.stage is LayerStage.RETIRED


def test_a_newer_ready_layer_retires_the_older() -> None:
    book = LayerBook()
    old = book.wanted(graph_of(EDGES), base=1)
    book.likely.add(f("heavy"))
    new = book.wanted(graph_of(EDGES), base=1)
    assert old is not None
    assert new is not None
    held_files(book, old.id, ["models"])
    held_files(book, new.id, ["models"])
    assert old.stage is LayerStage.RETIRED
    assert book.fitting(1, lambda path: STAT) is new


def test_files_modified_in_the_work_tree_are_likely_edited(tmp_path: Path) -> None:
    if shutil.which("git") is None and os.environ.get("CI") != "true":  # CI installs git
        pytest.skip("no git here")
    assert likely_edited(str(tmp_path)) == []  # not a work tree: nothing, and no error
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    for name in ("app/main.py", "app/models.py", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "start"], check=True)
    (tmp_path / "app/models.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("x\n")
    (tmp_path / "app/new.py").write_text("")  # untracked: no module of the last generation
    assert likely_edited(str(tmp_path / "app")) == [str(tmp_path / "app/models.py")]
    subprocess.run([*git, "mv", "app/main.py", "app/server.py"], check=True)  # a rename: two paths
    assert sorted(likely_edited(str(tmp_path / "app"))) == [
        str(tmp_path / "app/models.py"),
        str(tmp_path / "app/server.py"),
    ]


def test_layers_that_die_importing_are_given_up_after_a_few() -> None:
    book = LayerBook()
    for _ in range(3):
        record = book.wanted(graph_of(EDGES), base=1)
        assert record is not None
        book.gone(record.id)  # died before saying what it holds (a crash at import)
    assert book.wanted(graph_of(EDGES), base=1) is None
    assert book.take_log()[-1] == (10, "3 project layers died importing: no more layers.")


def test_only_the_latest_changed_files_are_likely_edited() -> None:
    book = LayerBook()
    checkout = [f"/p/m{i}.py" for i in range(LIKELY_KEPT + 10)]
    book.changed(checkout)  # a checkout of many files: they are not all edited next
    assert book.likely == set(checkout[-LIKELY_KEPT:])
    book.changed([checkout[-LIKELY_KEPT]])  # edited again: the newest now
    book.changed(["/p/new.py"])
    assert checkout[-LIKELY_KEPT] in book.likely
    assert checkout[-LIKELY_KEPT + 1] not in book.likely
    assert "/p/new.py" in book.likely


DJANGO_EDGES: dict[str, list[str]] = {
    "site": [],
    "site.asgi": ["site.settings", "blog", "blog.models", "blog.admin", "helpers"],
    "site.settings": [],
    "blog": [],
    "blog.models": [],
    "blog.admin": ["blog.models"],
    "helpers": [],
    "blog.views": [],  # imported while serving (by the URLconf)
}


def django_graph() -> ImportGraph:
    graph = graph_of(DJANGO_EDGES, app="site.asgi")
    graph.django = DjangoSetup(
        "site.settings",
        {"DJANGO_SETTINGS_MODULE": "site.settings"},
        frozenset({"blog", "blog.models", "blog.admin"}),
    )
    return graph


def test_a_django_layer_sets_django_up_and_holds_the_models_but_those_of_the_last_change() -> None:
    graph = django_graph()
    book = LayerBook([f("blog.views")])
    record = book.wanted(graph, base=1)
    assert record is not None
    assert record.django == graph.django
    assert {"site.settings", "blog.models", "blog.admin"} <= set(record.order)
    assert "blog.views" not in record.order
    book.changed([f("blog.models")])  # edited: left out while it is the last change
    plan = book.plan(graph)
    assert book.django(graph, plan) is None
    assert not {"site.settings", "blog", "blog.models", "blog.admin"} & set(plan)  # (need the set-up)
    assert "helpers" in plan
    book.changed([f("blog.views")])  # the next edit is elsewhere: the models are held again
    plan = book.plan(graph)
    assert "blog.models" in plan
    assert book.django(graph, plan) == graph.django


def test_a_django_set_up_that_went_wrong_once_is_not_tried_again() -> None:
    graph = django_graph()
    book = LayerBook()
    record = book.wanted(graph, base=1)
    assert record is not None
    assert record.django is not None
    book.refuse_django(record.id, "django.setup() imported blog.signals, which it does not hold")
    again = book.wanted(graph, base=1)
    assert again is not None
    assert again.django is None
    assert "blog.models" not in again.order  # (it cannot be imported without the set-up)


def test_a_django_layer_set_up_otherwise_than_the_app_now_does_is_retired() -> None:
    graph = django_graph()
    book = LayerBook()
    record = book.wanted(graph, base=1)
    assert record is not None
    held_files(book, record.id, list(record.order))
    assert record.django is not None
    book.django_seen(record.django)
    assert record.stage is LayerStage.READY
    book.django_seen(DjangoSetup("site.other", {"DJANGO_SETTINGS_MODULE": "site.other"}, frozenset()))
    assert record.stage is LayerStage.RETIRED
    assert book.take_retiring() == [record.id]
