"""Which files are the project's (watched), which are installed (preloadable), and editable sources."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

import asgireload
from asgireload._supervisor.editable import checkout_of, editable_roots, editable_sources
from asgireload._watchfilter import InstallLocations, WatchFilter

from .conftest import write


def fake_interpreter(prefix: Path) -> tuple[InstallLocations, Path, Path]:
    """Install locations of an interpreter pretending to live in `prefix`: (locations, stdlib, site)."""
    variables = dict.fromkeys(("base", "platbase", "installed_base", "installed_platbase"), str(prefix))
    paths = sysconfig.get_paths(vars=variables)
    stdlib, site_dir = Path(paths["stdlib"]), Path(paths["purelib"])
    write(stdlib / "os.py", "")
    write(stdlib / "lib-dynload" / "_json.py", "")
    write(site_dir / "fastapi" / "__init__.py", "")
    return InstallLocations.of_interpreter(prefix=str(prefix)), stdlib, site_dir


# ---------------------------------------------------------------- what is watched


def test_a_project_inside_the_interpreter_prefix_is_watched(tmp_path: Path) -> None:
    prefix = tmp_path / "usr"
    locations, stdlib, site_dir = fake_interpreter(prefix)
    main = write(prefix / "src" / "app" / "main.py", "")

    for root in (prefix / "src" / "app", prefix):
        project = WatchFilter([str(root)], locations=locations)
        assert project.is_project_file(str(main)), root
        assert not project.is_project_file(str(stdlib / "os.py"))
        assert not project.is_project_file(str(stdlib / "lib-dynload" / "_json.py"))
        assert not project.is_project_file(str(site_dir / "fastapi" / "__init__.py"))


def test_the_real_interpreter_prefix_is_not_excluded() -> None:
    """With the running interpreter's own locations: a project under its prefix is watched."""
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        app = os.path.join(prefix, "src", "app")
        project = WatchFilter([app])
        assert project.is_project_file(os.path.join(app, "main.py")), prefix
        assert project.is_project_file(os.path.join(app, "pkg", "models.py")), prefix
    everything = WatchFilter([os.sep])
    for installed in (os.__file__, json.__file__, httpx.__file__, pytest.__file__, asgireload.__file__):
        assert not everything.is_project_file(os.path.abspath(installed)), installed


def test_package_folders_virtualenvs_and_asgireload_are_never_the_project(tmp_path: Path) -> None:
    write(tmp_path / ".venv" / "pyvenv.cfg", "home = /usr/bin\n")
    project = WatchFilter([str(tmp_path)])

    assert project.is_project_file(str(tmp_path / "main.py"))
    assert project.is_project_file(str(tmp_path / "site_packages_notes" / "x.py"))
    assert not project.is_project_file(str(tmp_path / "vendor" / "site-packages" / "lib.py"))
    assert not project.is_project_file(str(tmp_path / "deb" / "dist-packages" / "lib" / "x.py"))
    assert not project.is_project_file(str(tmp_path / ".venv" / "lib" / "python3.11" / "x.py"))
    assert not project.is_project_file(str(tmp_path / "pkg" / "__pycache__" / "x.py"))
    assert not WatchFilter([os.path.dirname(asgireload.__file__)]).is_project_file(asgireload.__file__)


# ---------------------------------------------------------------- what a standby may preload


def test_only_the_standard_library_and_site_folders_are_preloadable(tmp_path: Path) -> None:
    app = tmp_path / "app"
    project = WatchFilter([str(app)])

    assert project.is_preloadable(None)  # built in, frozen
    for installed in (os.__file__, json.__file__, httpx.__file__, os.path.dirname(httpx.__file__)):
        assert project.is_preloadable(os.path.abspath(installed)), installed
    for own in (
        app / "main.py",  # the project
        tmp_path / "sibling" / "helpers.py",  # a sibling folder, or a PYTHONPATH entry
        tmp_path / "libs" / "mylib" / "src" / "mylib" / "__init__.py",  # an editable install's source
        tmp_path / "vendor" / "site-packages" / "six.py",  # not this interpreter's site folder
    ):
        assert not project.is_preloadable(str(own)), own


def test_preloadable_with_the_interpreter_in_a_tmp_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    locations, stdlib, site_dir = fake_interpreter(prefix)
    fastapi = str(site_dir / "fastapi" / "__init__.py")

    # a virtualenv inside the project is still installed code
    inside = WatchFilter([str(prefix)], locations=locations)
    assert inside.is_preloadable(fastapi)
    assert inside.is_preloadable(str(stdlib / "os.py"))
    assert not inside.is_preloadable(str(prefix / "src" / "app" / "main.py"))
    # a watched root pointed into site-packages: the developer is editing that package
    hacked = WatchFilter([str(site_dir / "fastapi")], locations=locations)
    assert not hacked.is_preloadable(fastapi)
    assert hacked.is_preloadable(str(stdlib / "os.py"))
    # a module found through a symlink to the site folder
    link = tmp_path / "link"
    link.symlink_to(site_dir)
    assert inside.is_preloadable(str(link / "fastapi" / "__init__.py"))


def test_installed_code_is_trusted_to_match_its_bytecode(tmp_path: Path) -> None:
    project = WatchFilter([str(tmp_path / "app")])

    for installed in (os.__file__, httpx.__file__, asgireload.__file__):
        assert project.is_installed_code(os.path.abspath(installed)), installed
    assert project.is_installed_code(str(tmp_path / "vendor" / "site-packages" / "six.py"))
    assert not project.is_installed_code(str(tmp_path / "app" / "main.py"))
    assert not project.is_installed_code(str(tmp_path / "sibling" / "helpers.py"))


# ---------------------------------------------------------------- editable installs


def dist_info(site_dir: Path, name: str, record: object) -> None:
    write(site_dir / f"{name}-1.0.dist-info" / "METADATA", f"Name: {name}\nVersion: 1.0\n")
    write(site_dir / f"{name}-1.0.dist-info" / "direct_url.json", json.dumps(record))


@pytest.fixture
def monorepo(tmp_path: Path) -> tuple[Path, Path]:
    """A git checkout with an app and four editable libraries, and a site-packages pointing at them."""
    checkout = tmp_path / "repo"
    (checkout / ".git").mkdir(parents=True)
    write(checkout / "services" / "api" / "main.py", "")
    for lib in ("alpha/alpha", "beta/src/beta", "gamma/src/gamma", "my lib/delta", "old/old"):
        write(checkout / "libs" / lib / "__init__.py", "")
    write(checkout / "services" / "api" / "vendored" / "v" / "__init__.py", "")
    write(tmp_path / "elsewhere" / "far" / "__init__.py", "")

    site_dir = tmp_path / "site-packages"
    dist_info(
        site_dir, "alpha", {"url": (checkout / "libs" / "alpha").as_uri(), "dir_info": {"editable": True}}
    )
    dist_info(
        site_dir, "delta", {"url": (checkout / "libs" / "my lib").as_uri(), "dir_info": {"editable": True}}
    )
    dist_info(site_dir, "plain", {"url": (tmp_path / "plain").as_uri(), "dir_info": {}})
    dist_info(site_dir, "archive", {"url": "https://example.com/x.tar.gz", "archive_info": {}})
    write(site_dir / "broken-1.0.dist-info" / "direct_url.json", "{not json")
    write(
        site_dir / "__editable__.beta-1.0.pth",
        f"# a comment\n{checkout / 'libs' / 'beta' / 'src'}\nimport os; os.environ['X'] = '1'\n"
        f"{tmp_path / 'does-not-exist'}\n../elsewhere\n{checkout / 'services' / 'api' / 'vendored'}\n",
    )
    write(site_dir / "distutils-precedence.pth", "import _distutils_hack\n")
    write(site_dir / "__editable__.gamma-1.0.pth", "import __editable___gamma_1_0_finder; x.install()\n")
    write(
        site_dir / "__editable___gamma_1_0_finder.py",
        "raise SystemExit('a finder must be read, never run')\n"
        f"MAPPING: dict[str, str] = {{'gamma': {str(checkout / 'libs' / 'gamma' / 'src' / 'gamma')!r}}}\n"
        "NAMESPACES: dict[str, list[str]] = {}\n",
    )
    write(site_dir / "old.egg-link", f"{checkout / 'libs' / 'old'}\n.\n")
    return checkout, site_dir


def test_editable_sources_read_from_site_packages(monorepo: tuple[Path, Path], tmp_path: Path) -> None:
    checkout, site_dir = monorepo
    libs = checkout / "libs"

    sources = editable_sources([str(site_dir)])

    assert sorted(sources) == sorted(
        str(p)
        for p in (
            libs / "alpha",  # direct_url.json
            libs / "my lib",  # a percent-encoded file:// URL
            libs / "beta" / "src",  # a .pth line
            tmp_path / "elsewhere",  # a relative .pth line
            checkout / "services" / "api" / "vendored",
            libs / "gamma" / "src",  # the folder holding a finder's package
            libs / "old",  # an .egg-link
        )
    )


def test_checkout_of(tmp_path: Path) -> None:
    app = tmp_path / "repo" / "services" / "api"
    app.mkdir(parents=True)
    assert checkout_of(str(app)) in (str(app), *map(str, tmp_path.parents))  # no marker of ours

    write(tmp_path / "repo" / "services" / "pyproject.toml", "")
    assert checkout_of(str(app)) == str(tmp_path / "repo" / "services")
    write(app / "pyproject.toml", "")
    assert checkout_of(str(app)) == str(app)  # the nearest one
    write(tmp_path / "repo" / ".git", "gitdir: /elsewhere/.git/worktrees/repo\n")  # a worktree
    assert checkout_of(str(app)) == str(tmp_path / "repo")  # git wins over pyproject.toml


def test_editable_roots_are_the_sources_in_the_checkout_outside_the_app(monorepo: tuple[Path, Path]) -> None:
    checkout, site_dir = monorepo
    app = checkout / "services" / "api"
    libs = checkout / "libs"

    roots = editable_roots(str(app), [str(site_dir)])

    # not the vendored folder under the app, not /elsewhere outside the checkout
    assert sorted(roots) == sorted(
        str(p)
        for p in (
            libs / "alpha",
            libs / "my lib",
            libs / "beta" / "src",
            libs / "gamma" / "src",
            libs / "old",
        )
    )
    project = WatchFilter([str(app), *roots])
    assert project.is_project_file(str(libs / "gamma" / "src" / "gamma" / "__init__.py"))
    assert not project.is_preloadable(str(libs / "gamma" / "src" / "gamma" / "__init__.py"))


def test_editable_roots_drop_a_source_inside_another(tmp_path: Path) -> None:
    checkout = tmp_path / "repo"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "app").mkdir()
    write(checkout / "lib" / "src" / "lib" / "__init__.py", "")
    site_dir = tmp_path / "site-packages"
    dist_info(site_dir, "lib", {"url": (checkout / "lib").as_uri(), "dir_info": {"editable": True}})
    write(site_dir / "__editable__.lib.pth", f"{checkout / 'lib' / 'src'}\n")

    assert editable_roots(str(checkout / "app"), [str(site_dir)]) == [str(checkout / "lib")]
    assert editable_roots(str(checkout / "lib"), [str(site_dir)]) == []  # the app's folder covers it


def test_no_site_folder_no_sources(tmp_path: Path) -> None:
    assert editable_sources([str(tmp_path / "missing"), ""]) == []


def test_this_interpreter_editable_install_is_found() -> None:
    """The real site-packages: asgireload itself, when installed with `pip install -e`."""
    record = importlib.metadata.distribution("asgireload").read_text("direct_url.json")
    if not record or not json.loads(record).get("dir_info", {}).get("editable"):
        pytest.skip("asgireload is not installed in editable mode here")
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(asgireload.__file__)))
    assert checkout in editable_sources()
    # the project's own editable install holds the app's folder: it adds no root of its own
    assert checkout not in editable_roots(os.path.join(checkout, "examples"))
