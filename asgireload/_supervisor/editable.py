"""Packages installed in editable mode whose source lives in the developer's checkout.

A monorepo often serves an app from one folder while `pip install -e` puts a sibling library
on the path. Its modules are not installed code (they are compiled from source) but neither
are they under the app's folder, so they would not be watched. These functions find such
sources by reading what the installers leave in site-packages, without importing or running
anything:

- PEP 610 `direct_url.json` in a `*.dist-info` folder, with `"dir_info": {"editable": true}`;
- `.pth` files: each line that names a folder (lines starting with `import` are code);
- setuptools' `__editable___*_finder.py`: its `MAPPING` literal (package name -> folder);
- the older `*.egg-link` files of `setup.py develop`.
"""

from __future__ import annotations

import ast
import json
import os
import site
import sysconfig
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["checkout_of", "editable_roots", "editable_sources"]


def _site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    found = [paths.get("purelib", ""), paths.get("platlib", ""), *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        found.append(site.getusersitepackages())
    return found


def editable_sources(site_dirs: Sequence[str] | None = None) -> list[str]:
    """The folders that hold the source of packages installed in editable mode, in the order found.

    `site_dirs` defaults to this interpreter's site-packages folders (and the user's, when on).
    Only folders that exist and lie outside site-packages are returned.
    """
    found: dict[str, None] = {}
    seen_dirs: set[str] = set()
    for site_dir in site_dirs if site_dirs is not None else _site_dirs():
        if not site_dir or os.path.realpath(site_dir) in seen_dirs or not os.path.isdir(site_dir):
            continue
        seen_dirs.add(os.path.realpath(site_dir))
        for source in _sources_in(site_dir):
            folder = os.path.normpath(os.path.join(site_dir, source))
            parts = folder.split(os.sep)
            if os.path.isdir(folder) and "site-packages" not in parts and "dist-packages" not in parts:
                found[folder] = None
    return list(found)


def _sources_in(site_dir: str) -> Iterator[str]:
    try:
        names = sorted(os.listdir(site_dir))
    except OSError:
        return
    for name in names:
        path = os.path.join(site_dir, name)
        if name.endswith(".dist-info"):
            yield from _from_direct_url(os.path.join(path, "direct_url.json"))
        elif name.endswith(".pth"):
            yield from _from_pth(path)
        elif name.startswith("__editable___") and name.endswith("_finder.py"):
            yield from _from_finder(path)
        elif name.endswith(".egg-link"):
            yield from _first_lines(path, 1)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except (OSError, ValueError):
        return None


def _from_direct_url(path: str) -> Iterator[str]:
    text = _read(path)
    if text is None:
        return
    try:
        record = json.loads(text)
    except ValueError:
        return
    if not isinstance(record, dict):
        return
    dir_info = record.get("dir_info")
    url = record.get("url")
    if not (isinstance(dir_info, dict) and dir_info.get("editable") is True and isinstance(url, str)):
        return
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        yield urllib.parse.unquote(parts.path)  # what url2pathname does on POSIX, without its imports


def _from_pth(path: str) -> Iterator[str]:
    for line in _first_lines(path, None):
        if not line.startswith(("import ", "import\t")):
            yield line


def _first_lines(path: str, count: int | None) -> Iterator[str]:
    text = _read(path)
    if text is None:
        return
    lines = [line.strip() for line in text.splitlines()]
    for line in lines[:count]:
        if line and not line.startswith("#"):
            yield line


def _from_finder(path: str) -> Iterator[str]:
    """The folders holding the packages a setuptools editable finder maps (read, never run)."""
    text = _read(path)
    if text is None:
        return
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if not any(isinstance(t, ast.Name) and t.id == "MAPPING" for t in targets):
            continue
        try:
            mapping = ast.literal_eval(value)
        except ValueError:
            return
        if isinstance(mapping, dict):
            for package_path in mapping.values():
                if isinstance(package_path, str):
                    yield os.path.dirname(os.path.normpath(package_path))
        return


def checkout_of(app_dir: str) -> str:
    """The folder a developer works in: the top of the git work tree holding `app_dir`, else the
    folder of the nearest pyproject.toml at or above it, else `app_dir` itself."""
    start = os.path.abspath(app_dir)
    project = None
    directory = start
    while True:
        if os.path.lexists(os.path.join(directory, ".git")):
            return directory
        if project is None and os.path.isfile(os.path.join(directory, "pyproject.toml")):
            project = directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return project or start
        directory = parent


def _inside(path: str, folder: str) -> bool:
    return os.path.join(path, "").startswith(os.path.join(folder, ""))


def editable_roots(app_dir: str, site_dirs: Sequence[str] | None = None) -> list[str]:
    """Editable sources in the developer's checkout that the app's folder does not cover: the
    extra roots to watch so that editing a sibling library reloads the app."""
    app = os.path.realpath(app_dir)
    checkout = os.path.realpath(checkout_of(app_dir))
    roots: list[str] = []
    for source in editable_sources(site_dirs):
        real = os.path.realpath(source)
        # inside the checkout, and neither within the app's folder nor around it (an editable
        # install of the project itself: the app's folder is its part that is watched already)
        if _inside(real, checkout) and not _inside(real, app) and not _inside(app, real):
            roots.append(source)
    reals = {root: os.path.realpath(root) for root in roots}
    return [
        root
        for root in roots
        if not any(other != root and _inside(reals[root], reals[other]) for other in roots)
    ]
