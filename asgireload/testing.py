"""The pytest plugin (entry point `asgireload`): a real reloading server in your tests.

    async def test_edit(asgireload_server):
        async with asgireload_server("main:app", files={"main.py": SOURCE}) as server:
            event = await server.edit("main.py", NEW_SOURCE)   # saved like an editor saves
            assert event.outcome == "ready"

The fixture is a plain (sync) factory, so it works the same under pytest-asyncio (strict or
auto mode) and under anyio's plugin with the asyncio backend; the `async with` owns start-up
and tear-down. Under anyio's trio backend it fails at once with one clear error: asgireload
runs on asyncio. Importing this module costs nothing more than pytest itself: asgireload
loads when a test uses it.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .reloader import Reloader


class ServerFactory:
    """Builds `Reloader`s rooted in the test's tmp_path."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, app: Any, *, files: dict[str, str] | None = None, **options: Any) -> Reloader:
        """Write `files` into tmp_path and return a Reloader for `app`, to use in `async with`.

        Under trio (anyio's trio backend) it raises AsgireloadError at once, writing nothing:
        asgireload needs asyncio.
        """
        from .serving import require_asyncio, under_trio

        if under_trio():  # a sync caller (a fixture) may enter it under asyncio later; trio never
            require_asyncio("the asgireload_server fixture was called")
        for name, source in (files or {}).items():
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source).lstrip())
        options.setdefault("app_dir", self.root)
        return _RootedReloader(self.root, app, **options)


def _rooted(root: Path, path: str | os.PathLike[str]) -> Path:
    return Path(path) if os.path.isabs(path) else root / path


def _make_rooted_class() -> type[Reloader]:
    from .reloader import Reloader

    class RootedReloader(Reloader):
        """A Reloader whose relative paths (in edit, is_watching) are relative to tmp_path."""

        def __init__(self, root: Path, app: Any, **options: Any) -> None:
            super().__init__(app, **options)
            self.root = root

        async def edit(self, path: str | os.PathLike[str], text: str, **kwargs: Any) -> Any:
            """Reloader.edit with `path` relative to tmp_path and `text` dedented. Cancelling it
            cancels the wait only: the file stays saved and its reload goes on."""
            return await super().edit(_rooted(self.root, path), textwrap.dedent(text).lstrip(), **kwargs)

        def is_watching(self, path: str | os.PathLike[str]) -> bool:
            return super().is_watching(_rooted(self.root, path))

    return RootedReloader


def _RootedReloader(root: Path, app: Any, **options: Any) -> Reloader:
    return _make_rooted_class()(root, app, **options)  # type: ignore[call-arg]


@pytest.fixture
def asgireload_server(tmp_path: Path) -> ServerFactory:
    """A factory of real reloading servers, with app files written into tmp_path."""
    return ServerFactory(tmp_path)
