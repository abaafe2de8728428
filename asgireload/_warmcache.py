"""The warm cache: which installed modules a project's app imported last time.

At start-up the fork server's template preloads them while the first generation imports the
app, so the first reload finds a warm standby at once instead of one that imports everything
again; the template the `asgireload` command starts first reads it itself, with the app and
folder its command line names, and imports them before the first worker is forked (see
_worker/template.py). Shared by both sides, hence here. One small JSON file per project (the
interpreter, the app and its folder), kept outside the project under
$XDG_CACHE_HOME/asgireload (or ~/.cache/asgireload).

It is only a hint: a file that is corrupt, from another Python or written before the installed
packages changed (their folders' modification times) is ignored, and a module in it that no
longer imports costs the template that import attempt, nothing more; the list is rewritten
whenever the app's preload list changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import site
import sys
import tempfile

from ._protocol import Settings

logger = logging.getLogger("asgireload")

FORMAT = 1
MAX_BYTES = 4 << 20  # a larger file is not ours


def folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "asgireload")


def path_for(settings: Settings) -> str:
    return path_for_app(settings.app_dir, settings.app)


def path_for_app(app_dir: str, app: str) -> str:
    parts = (sys.executable, os.path.abspath(app_dir), app)
    key = b"\0".join(os.fsencode(part) for part in parts)  # a folder's name need not be UTF-8
    return os.path.join(folder(), hashlib.sha256(key).hexdigest()[:24] + ".json")


def fingerprint() -> str:
    """Changes when a package is installed, upgraded or removed: the site folders' mtimes."""
    folders = [*site.getsitepackages(), site.getusersitepackages()]
    stamps = []
    for path in folders:
        with contextlib.suppress(OSError):
            stamps.append(f"{path}:{os.stat(path).st_mtime_ns}")
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()


def _identity() -> dict[str, object]:
    return {
        "format": FORMAT,
        "python": sys.version,
        "executable": sys.executable,
        "fingerprint": fingerprint(),
    }


def load(settings: Settings) -> tuple[str, ...]:
    """The modules remembered for this project, or () if there is no usable cache."""
    return load_path(path_for(settings))


def load_path(path: str) -> tuple[str, ...]:
    try:
        with open(path, "rb") as file:
            data = json.loads(file.read(MAX_BYTES + 1))
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as exc:
        logger.debug("Ignoring the warm cache %s: %s.", path, exc)
        return ()
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in _identity().items()):
        logger.debug(
            "Ignoring the warm cache %s: written by another Python or before a package changed.", path
        )
        return ()
    modules = data.get("modules")
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        logger.debug("Ignoring the warm cache %s: no list of modules.", path)
        return ()
    return tuple(modules)


def save(settings: Settings) -> None:
    """Remember `settings.preload` for this project (best effort, atomically)."""
    path = path_for(settings)
    data = {
        **_identity(),
        "app": settings.app,
        "app_dir": settings.app_dir,
        "modules": list(settings.preload),
    }
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), suffix=".tmp", delete=False) as file:
            json.dump(data, file)
        os.replace(file.name, path)
    except OSError as exc:
        logger.debug("Could not write the warm cache %s: %s.", path, exc)
        with contextlib.suppress(OSError, NameError):
            os.unlink(file.name)


def with_cached_preload(settings: Settings) -> Settings:
    """`settings` for the first template: the remembered modules, besides those already listed."""
    cached = load(settings)
    return dataclasses.replace(settings, preload=tuple(dict.fromkeys((*settings.preload, *cached))))


class Memory:
    """Saves a project's preload list when it changes (once per change, not per worker)."""

    def __init__(self) -> None:
        self._saved: tuple[str, ...] | None = None

    def remember(self, settings: Settings) -> None:
        if settings.preload and settings.preload != self._saved:
            save(settings)
            self._saved = settings.preload
