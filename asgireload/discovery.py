"""Finding the app when no APP is given, the way a reader would: by reading the source.

Nothing here imports or runs the project's code (the supervisor must never run it): each
candidate file is parsed with `ast` and its module-level names are looked at. Looked at, in
this order: main.py, app.py, api.py, asgi.py in the current folder, then in app/, then in each
src/<package>/; a Django project's manage.py names its settings module, whose package's asgi.py
holds `application`. In a file, `app` (then `application`) wins, assigned, imported or defined
with def; else the one name bound to a FastAPI, Starlette, Litestar or Quart instance (or Django's
get_asgi_application()). Whether it really is an app is known when the worker imports it.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path

from .errors import ConfigError

FILES = ("main.py", "app.py", "api.py", "asgi.py")
NAMES = ("app", "application")
FACTORIES = frozenset({"FastAPI", "Starlette", "Litestar", "Quart", "get_asgi_application"})


@dataclasses.dataclass(frozen=True)
class Found:
    """What was chosen: the import string, the folder to import it from, and why."""

    app: str
    app_dir: str
    file: str
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    others: tuple[str, ...] = ()  # other candidates, "module:name (file)"

    def message(self, cwd: str) -> str:
        """The one line that says what was chosen and how to pin it."""
        file = os.path.relpath(self.file, cwd)
        text = f"Found the app {self.app} in {file}"
        if self.environment:
            text += " with " + ", ".join(f"{k}={v}" for k, v in self.environment.items())
        if self.others:
            text += f" (also saw {', '.join(self.others)})"
        pin = f'app = "{self.app}"'
        if os.path.abspath(self.app_dir) != os.path.abspath(cwd):
            pin += f', app_dir = "{os.path.relpath(self.app_dir, cwd)}"'
        return f"{text}; to pin it: asgireload {self._command(cwd)}, or {pin} under [tool.asgireload]."

    def _command(self, cwd: str) -> str:
        if os.path.abspath(self.app_dir) == os.path.abspath(cwd):
            return self.app
        return f"{self.app} --app-dir {os.path.relpath(self.app_dir, cwd)}"


def discover(folder: str | os.PathLike[str]) -> Found:
    """The app of the project in `folder`; ConfigError (listing what was looked at) if none."""
    root = Path(folder).resolve()
    django = _django_app(root)
    if django is not None:
        return django
    looked: list[Path] = []
    found: list[tuple[str, str, Path]] = []  # (import string, app_dir, file)
    for folder, package, files in _layouts(root):
        for path in files:
            looked.append(path)
            name = _app_name(path)
            if name is not None:
                module = f"{package}.{path.stem}" if package else path.stem
                found.append((f"{module}:{name}", str(folder), path))
    if not found:
        shown = ", ".join(os.path.relpath(p, root) for p in looked)
        raise ConfigError(
            f"no APP given and no app found in {root} (looked at {shown}, for a module-level app or "
            'application); pass one, e.g. asgireload main:app, or set app = "main:app" under '
            "[tool.asgireload] in pyproject.toml."
        )
    app, app_dir, chosen = found[0]
    others = tuple(f"{a} ({os.path.relpath(p, root)})" for a, _, p in found[1:])
    return Found(app, app_dir, str(chosen), others=others)


def from_file(path: str | os.PathLike[str]) -> Found:
    """`asgireload path/to/main.py`: the module named after the file (and the packages around it,
    as far as they have an __init__.py), imported from the folder above them."""
    file = Path(path).resolve()
    if file.suffix != ".py" or not file.is_file():
        raise ConfigError(f"{path} is not a Python file; pass a .py file or module:attribute, e.g. main:app.")
    parts = [file.stem]
    folder = file.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    if not all(part.isidentifier() for part in parts):
        raise ConfigError(f"{path} cannot be imported as a module (a name is not an identifier); rename it.")
    name = _app_name(file)
    if name is None:
        raise ConfigError(
            f"found no app in {path} (no module-level app or application, nor a FastAPI, Starlette, "
            f"Litestar or Quart instance); pass {'.'.join(parts)}:NAME to name it."
        )
    return Found(f"{'.'.join(parts)}:{name}", str(folder), str(file))


def looks_like_a_file(app: str) -> bool:
    return app.endswith(".py") or os.sep in app


def _layouts(root: Path) -> list[tuple[Path, str, list[Path]]]:
    """(the folder to import from, the package, the candidate files in it), in order of preference."""

    def existing(folder: Path) -> list[Path]:
        return [folder / name for name in FILES if (folder / name).is_file()]

    layouts = [(root, "", existing(root))]
    if (root / "app").is_dir():
        layouts.append((root, "app", existing(root / "app")))
    src = root / "src"
    if src.is_dir():
        for package in sorted(src.iterdir()):
            if package.is_dir() and package.name.isidentifier():
                layouts.append((src, package.name, existing(package)))
    return layouts


def _app_name(path: Path) -> str | None:
    """The module-level name in `path` that holds the app, read from the source (never run)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return None  # the worker's import will report it, with the traceback
    bound: dict[str, bool] = {}  # name -> bound to a framework's app
    for node in tree.body:
        for name, value in _bindings(node):
            bound[name] = bound.get(name, False) or _is_framework_app(value)
    for name in NAMES:
        if name in bound:
            return name
    framework = [name for name, is_app in bound.items() if is_app]
    return framework[0] if len(framework) == 1 else None


def _bindings(node: ast.stmt) -> list[tuple[str, ast.expr | None]]:
    if isinstance(node, ast.Assign):
        return [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return [(node.target.id, node.value)]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in NAMES:
        return [(node.name, None)]
    if isinstance(node, ast.ImportFrom):  # main.py that does `from .web import app`
        bound = [alias.asname or alias.name for alias in node.names]
        return [(name, None) for name in bound if name in NAMES]
    if isinstance(node, ast.If | ast.Try):  # `if settings.DEBUG: app = ...` and try/except imports
        found = []
        for child in [*node.body, *getattr(node, "orelse", [])]:
            found.extend(_bindings(child))
        return found
    return []


def _is_framework_app(value: ast.expr | None) -> bool:
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in FACTORIES


def _django_app(root: Path) -> Found | None:
    """A Django project: manage.py sets DJANGO_SETTINGS_MODULE; its package's asgi.py has the app."""
    manage = root / "manage.py"
    if not manage.is_file():
        return None
    settings = _settings_module(manage)
    if settings is None or "." not in settings:
        return None
    package = settings.rpartition(".")[0]
    for app_dir in (root, root / "src"):
        asgi = app_dir.joinpath(*package.split("."), "asgi.py")
        if asgi.is_file():
            name = _app_name(asgi) or "application"
            return Found(
                f"{package}.asgi:{name}",
                str(app_dir),
                str(asgi),
                environment={"DJANGO_SETTINGS_MODULE": settings},
            )
    return None


def _settings_module(manage: Path) -> str | None:
    """The value manage.py gives DJANGO_SETTINGS_MODULE (os.environ.setdefault(...) or [...] = ...)."""
    try:
        tree = ast.parse(manage.read_bytes(), filename=str(manage))
    except (SyntaxError, ValueError, OSError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and len(node.args) == 2:
            key, value = node.args
            if _constant(key) == "DJANGO_SETTINGS_MODULE" and isinstance(_constant(value), str):
                return str(_constant(value))
        if isinstance(node, ast.Assign) and _sets_settings_variable(node.targets[0]):
            found = _constant(node.value)
            if isinstance(found, str):
                return found
    return None


def _sets_settings_variable(target: ast.expr) -> bool:
    """`os.environ["DJANGO_SETTINGS_MODULE"] = ...`"""
    return isinstance(target, ast.Subscript) and _constant(target.slice) == "DJANGO_SETTINGS_MODULE"


def _constant(node: ast.expr) -> object:
    return node.value if isinstance(node, ast.Constant) else None
