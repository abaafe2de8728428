"""Finding the app when no APP is given, the way a reader would: by reading the source.

Nothing here imports or runs the project's code (the supervisor must never run it): each
candidate file is parsed with `ast` and its module-level names are looked at. Looked at, in
this order: main.py, app.py, api.py, asgi.py in the current folder, then in app/ (then
app/__init__.py), then in each src/<package>/, each imported as the module it is within its
packages (app/main.py in a package app/ is app.main); a Django project's manage.py names its
settings module, whose package's asgi.py holds `application`. In a file, `app` (then
`application`) wins, assigned, imported or defined with def; else the one name bound to a
FastAPI, Starlette, Litestar or Quart instance (or Django's
get_asgi_application()). A Flask, Bottle or Django WSGI app, or `def app(environ, start_response)`,
is served with --interface wsgi. Whether it really is an app is known when the worker imports it.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError

FILES = ("main.py", "app.py", "api.py", "asgi.py")
NAMES = ("app", "application")
FACTORIES = frozenset({"FastAPI", "Starlette", "Litestar", "Quart", "get_asgi_application"})
WSGI_FACTORIES = frozenset({"Flask", "get_wsgi_application", "Bottle"})


class _SeveralApps(Exception):
    """A file binds several framework apps and none is `app` or `application`: which one is meant
    is the user's to say. Holds each as "name (Framework)"."""

    def __init__(self, apps: list[str]) -> None:
        super().__init__(", ".join(apps))
        self.apps = apps


@dataclasses.dataclass(frozen=True)
class Found:
    """What was chosen: the import string, the folder to import it from, and why."""

    app: str
    app_dir: str
    file: str
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    others: tuple[str, ...] = ()  # other candidates, "module:name (file)"
    interface: str | None = None  # "wsgi" for a Flask or Django WSGI app, else None (uvicorn decides)
    note: str = ""  # why the name is a guess: the file does not parse
    config_dir: str | None = None  # the folder of the pyproject.toml the pin hint is written for

    def message(self, cwd: str) -> str:
        """The one line that says what was chosen and how to pin it."""
        file = os.path.relpath(self.file, cwd)
        kind = "WSGI app" if self.interface == "wsgi" else "app"
        text = f"Found the {kind} {self.app} in {file}"
        if self.environment:
            text += " with " + ", ".join(f"{k}={v}" for k, v in self.environment.items())
        if self.interface == "wsgi":
            text += " (served with --interface wsgi)"
        if self.note:
            text += f" ({self.note})"
        if self.others:
            text += f" (also saw {', '.join(self.others)})"
        base = self.config_dir or cwd  # the file reads app_dir against its own folder
        pin = f'app = "{self.app}"'
        if os.path.abspath(self.app_dir) != os.path.abspath(base):
            pin += f', app_dir = "{os.path.relpath(self.app_dir, base)}"'
        if self.interface == "wsgi":
            pin += ', interface = "wsgi"'
        return f"{text}; to pin it: asgireload {self._command(cwd)}, or {pin} under [tool.asgireload]."

    def _command(self, cwd: str) -> str:
        command = self.app
        if os.path.abspath(self.app_dir) != os.path.abspath(cwd):
            command += f" --app-dir {os.path.relpath(self.app_dir, cwd)}"
        if self.interface == "wsgi":
            command += " --interface wsgi"
        return command


def discover(folder: str | os.PathLike[str]) -> Found:
    """The app of the project in `folder`; ConfigError (listing what was looked at) if none."""
    root = Path(folder).resolve()
    django = _django_app(root)
    if django is not None:
        return django
    found: list[Found] = []
    several: list[str] = []  # "module:name (Framework)" of files that hold more than one
    candidates = _candidates(root)
    for path in candidates:
        module, app_dir = module_of(path)
        try:
            candidate = _read(path)
        except _SeveralApps as exc:
            if not found:  # before any file with one app: the reader cannot choose either
                raise _several_error(os.path.relpath(path, root), module, exc.apps) from None
            names = (app.partition(" ")[0] for app in exc.apps)  # "web (Flask)" -> "web"
            several += [f"{module}:{name} ({os.path.relpath(path, root)})" for name in names]
            continue
        if candidate is not None:
            name, interface, note = candidate
            found.append(Found(f"{module}:{name}", str(app_dir), str(path), interface=interface, note=note))
    if not found:
        looked = ", ".join(os.path.relpath(p, root) for p in candidates)
        searched = (
            f"looked at {looked}, for a module-level app or application or one framework app"
            if candidates
            else f"looked for {', '.join(FILES)} in it, in app/ and in src/*/, and for a Django manage.py"
        )
        raise ConfigError(
            f"no APP given and no app found in {root} ({searched}); pass one, e.g. asgireload main:app, "
            'or set app = "main:app" under [tool.asgireload] in pyproject.toml.'
        )
    others = tuple(f"{f.app} ({os.path.relpath(f.file, root)})" for f in found[1:]) + tuple(several)
    return dataclasses.replace(found[0], others=others)


def _several_error(file: str, module: str, apps: list[str]) -> ConfigError:
    first = apps[0].partition(" ")[0]
    return ConfigError(
        f"{file} has several apps ({', '.join(f'{module}:{app}' for app in apps)}) and none is named app "
        f"or application; pass the one to serve, e.g. asgireload {module}:{first}."
    )


def module_of(file: Path) -> tuple[str, Path]:
    """The module `file` is (with the packages around it, as far as they have an __init__.py) and
    the folder to import it from."""
    parts = [] if file.name == "__init__.py" else [file.stem]
    folder = file.parent
    if file.name == "__init__.py":
        parts.insert(0, folder.name)
        folder = folder.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts), folder


def from_file(path: str | os.PathLike[str]) -> Found:
    """`asgireload path/to/main.py`: the module named after the file (and the packages around it,
    as far as they have an __init__.py), imported from the folder above them."""
    text = os.fspath(path)
    attribute = None
    if ".py:" in text:  # path/to/main.py:app, fastapi dev's form: the file, and the name in it
        text, _, attribute = text.rpartition(":")
        if not all(part.isidentifier() for part in attribute.split(".")):
            raise ConfigError(f"{path}: {attribute!r} is not a Python name; pass path/to/main.py:app.")
    file = Path(text).resolve()
    if file.suffix != ".py" or not file.is_file():
        raise ConfigError(f"{path} is not a Python file; pass a .py file or module:attribute, e.g. main:app.")
    module, folder = module_of(file)
    if not all(part.isidentifier() for part in module.split(".")):
        raise ConfigError(f"{path} cannot be imported as a module (a name is not an identifier); rename it.")
    try:
        candidate = _read(file)
    except _SeveralApps as exc:
        if attribute is None:
            raise _several_error(str(path), module, exc.apps) from None
        candidate = None
    if attribute is not None:
        interface = candidate[1] if candidate is not None and candidate[0] == attribute else None
        return Found(f"{module}:{attribute}", str(folder), str(file), interface=interface)
    if candidate is None:
        raise ConfigError(
            f"found no app in {path} (no module-level app or application, nor a FastAPI, Starlette, "
            f"Litestar, Quart, Flask or Django instance); pass {module}:NAME to name it."
        )
    name, interface, note = candidate
    return Found(f"{module}:{name}", str(folder), str(file), interface=interface, note=note)


def resolve(options: dict[str, Any], *, search: bool = False) -> Found | None:
    """An app given as a file (path/to/main.py, or path/to/main.py:app), or, with `search`, no
    app or a folder (found by reading the source): written into `options` as the import string,
    its folder (app_dir) and, unless one was chosen, its interface. None for an import string,
    which is left as it is. Raises ConfigError when nothing fits."""
    app = options.get("app")
    if search and app is None:  # in --app-dir if given (the project's folder), else here
        found = discover(options.get("app_dir", os.getcwd()))
    elif search and isinstance(app, str) and os.path.isdir(app):  # `asgireload services/web`
        found = discover(app)
    elif isinstance(app, str) and looks_like_a_file(app):
        found = from_file(app)
    else:
        return None
    options["app"] = found.app
    options["app_dir"] = found.app_dir
    if found.interface is not None and options.get("interface", "auto") == "auto":
        options["interface"] = found.interface  # a Flask app, served through uvicorn's WSGI
    return found


def looks_like_a_file(app: str) -> bool:
    return app.endswith(".py") or ".py:" in app or os.sep in app


def _candidates(root: Path) -> list[Path]:
    """The files that may hold the app, in order of preference: main.py, app.py, api.py, asgi.py
    here, then in app/ (then app/__init__.py), then in each src/<package>/."""

    def existing(folder: Path) -> list[Path]:
        return [folder / name for name in FILES if (folder / name).is_file()]

    files = existing(root)
    if (root / "app").is_dir():
        files += existing(root / "app")
        if (root / "app" / "__init__.py").is_file():
            files.append(root / "app" / "__init__.py")
    src = root / "src"
    if src.is_dir():
        for package in sorted(src.iterdir()):
            if package.is_dir() and package.name.isidentifier():
                files += existing(package)
    return files


def _read(path: Path) -> tuple[str, str | None, str] | None:
    """(the name holding the app, "wsgi" for a WSGI app, a note) read from the source, never run;
    None when it holds none. A file that does not parse is kept, as `app`: the worker's import
    shows the error with its traceback, where a skipped file would only say "no app found"."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        return "app", None, f"it does not parse: line {exc.lineno}, {exc.msg}; the worker shows the error"
    except (ValueError, OSError):
        return None
    bound: dict[str, tuple[str, str] | None] = {}  # name -> ("asgi"/"wsgi", the framework's call)
    for node in tree.body:
        for name, kind in _kinds(node):
            bound[name] = bound.get(name) or kind
    for name in NAMES:
        if name in bound:
            named = bound[name]
            return name, "wsgi" if named is not None and named[0] == "wsgi" else None, ""
    framework = {name: kind for name, kind in bound.items() if kind is not None}
    if len(framework) > 1:
        raise _SeveralApps([f"{name} ({call})" for name, (_, call) in framework.items()])
    for name, (interface, _) in framework.items():
        return name, "wsgi" if interface == "wsgi" else None, ""
    return None


def _app_name(path: Path) -> str | None:
    try:
        candidate = _read(path)
    except _SeveralApps:
        return None
    return candidate[0] if candidate is not None else None


def _kinds(node: ast.stmt) -> list[tuple[str, tuple[str, str] | None]]:
    """The names `node` binds, each with the kind of app it is bound to and the call (or None)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in NAMES:
        arguments = [a.arg for a in node.args.args]
        wsgi = not isinstance(node, ast.AsyncFunctionDef) and arguments[-2:] == ["environ", "start_response"]
        return [(node.name, ("wsgi", "def") if wsgi else None)]
    return [(name, _app_kind(value)) for name, value in _bindings(node)]


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


def _app_kind(value: ast.expr | None) -> tuple[str, str] | None:
    """("asgi", "FastAPI") for a call that builds an ASGI framework's app, ("wsgi", ...) for a WSGI
    one, else None."""
    if not isinstance(value, ast.Call):
        return None
    func = value.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name in FACTORIES:
        return "asgi", name
    if name in WSGI_FACTORIES:
        return "wsgi", name
    return None


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
            name = _app_name(asgi) or "application"  # an asgi.py that does not parse is still the one
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
