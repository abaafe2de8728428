"""The settings under the command line: `[tool.asgireload]` in pyproject.toml, UVICORN_*, ASGIRELOAD_*.

Keys are the options' names (`port`, `reload_dirs`, `env_file`, ...); the long flag's name in
snake case is accepted too (`reload_dir` for `--reload-dir`, `header` for `--header`). Paths in
the file are relative to the file's folder. Every mistake is one ConfigError naming the file (or
the variable), the key, what was expected and, for a misspelt key, the closest valid one.
Nothing here reads a file or the environment unless asked: serve() and Reloader only with
`pyproject=` (and never UVICORN_*, as uvicorn.run() reads none), the command line always, the
file unless `--no-config`.

From lowest to highest: the file, UVICORN_<OPTION> (uvicorn's command reads every option from
those, so docker-compose files and .envrc set them), ASGIRELOAD_<OPTION> (meant for this tool
alone, so it wins over uvicorn's), then the flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._uvicorn import UVICORN_COMMAND_OPTIONS
from .config import _IMPORT_STRING, _PATH_OPTIONS, Config, cli_flag, option_fields
from .discovery import looks_like_a_file
from .errors import AsgireloadError, ConfigError

TABLE = "tool.asgireload"
ENV_PREFIX = "ASGIRELOAD_"
UVICORN_PREFIX = "UVICORN_"
_TRUE = ("1", "true", "t", "yes", "y", "on")  # click's words, which uvicorn's variables take
_FALSE = ("0", "false", "f", "no", "n", "off")


def _fields() -> dict[str, dataclasses.Field[Any]]:
    """Every key a file or a variable may set, aliases included, to the option it sets."""
    keys: dict[str, dataclasses.Field[Any]] = {}
    for field in option_fields():
        if not field.metadata["cli"] and field.name != "reload":
            continue
        keys[field.name] = field
        keys[cli_flag(field)[2:].replace("-", "_")] = field  # reload_dir for --reload-dir
    return keys


def find_pyproject(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest pyproject.toml in `start` (the current folder) or a folder above it."""
    folder = Path(start if start is not None else os.getcwd()).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / "pyproject.toml"
        if path.is_file():
            return path
    return None


def read_pyproject(path: str | os.PathLike[str], keys: dict[str, str] | None = None) -> dict[str, Any]:
    """The options of `[tool.asgireload]` in the file (empty without that table), checked and with
    paths made absolute against the file's folder; `keys` gets each option's key as written."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {path}: it is not UTF-8 text.") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML, {_where_in(str(exc), text)}.") from None
    table = data.get("tool", {}).get("asgireload")
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{TABLE}] must be a table, got {table!r}.")
    where = f"{path}: [{TABLE}]"
    options: dict[str, Any] = {}
    fields = _fields()
    for key, value in table.items():
        if key == "app":
            app = _checked_app(value, f"{where} app")
            options["app"] = str(path.parent / app) if looks_like_a_file(app) else app
            if keys is not None:
                keys["app"] = "app"
            continue
        field = _field_for(key, fields, where)
        if field.name in options:
            raise ConfigError(f"{where} sets {field.name} twice (as {key} and another spelling); keep one.")
        options[field.name] = _from_toml(field, value, f"{where} {key}")
        if keys is not None:
            keys[field.name] = key
    for name in (*_PATH_OPTIONS, "reload_dirs"):
        if name in options and options[name] is not None:
            options[name] = _relative_to(path.parent, options[name])
    options.pop("reload", None)  # accepted like --reload, and changes nothing
    return options


def _where_in(message: str, text: str) -> str:
    """tomllib's message with its position as a line number first (the end of the file is one too)."""
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)", message)
    if found:
        return f"line {found[1]}, column {found[2]}: {message[: found.start()]}"
    found = re.search(r"\s*\(at end of document\)", message)
    if found:
        return f"line {max(1, len(text.splitlines()))} (the end of the file): {message[: found.start()]}"
    return message


def read_environment(
    environ: Mapping[str, str] | None = None, keys: dict[str, str] | None = None
) -> dict[str, Any]:
    """The options set by ASGIRELOAD_<OPTION> variables (ASGIRELOAD_PORT=8001), checked.

    Lists are split as uvicorn's UVICORN_* are: folders on the path separator, globs on white
    space; headers on new lines (a header's value may hold spaces). Other ASGIRELOAD_ variables
    (asgireload's own) are not options.
    """
    environ = os.environ if environ is None else environ
    fields = _fields()
    options: dict[str, Any] = {}
    for variable, text in environ.items():
        if not variable.startswith(ENV_PREFIX) or not text.strip():  # VAR= (empty) is unset
            continue
        key = variable[len(ENV_PREFIX) :].lower()
        if key == "force_polling" and text.strip().lower() not in (*_TRUE, *_FALSE):
            continue  # read leniently, as before it was an option: anything else is "not forced"
        if key == "app":
            options["app"] = _checked_app(text, f"{variable}={text!r}")
            if keys is not None:
                keys["app"] = variable
        elif (field := fields.get(key)) is not None:
            options[field.name] = _from_text(field, text, variable)
            if keys is not None:
                keys[field.name] = variable
    options.pop("reload", None)
    return options


def read_uvicorn_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The options set by UVICORN_<OPTION> variables, read as uvicorn's click command reads them
    (`auto_envvar_prefix="UVICORN"`): only uvicorn's options, an empty variable is unset, lists
    split on white space (folders on the path separator), and the words click takes for true."""
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in option_fields()}
    options: dict[str, Any] = {}
    for name in UVICORN_COMMAND_OPTIONS:
        variable = UVICORN_PREFIX + name.upper()
        text = environ.get(variable, "")
        if not text:
            continue
        if name == "app":
            options["app"] = _checked_app(text.strip(), f"{variable}={text!r}")
        else:
            options[name] = _from_text(fields[name], text, variable, headers_on_lines=False)
    options.pop("reload", None)  # accepted like --reload, and changes nothing
    return options


def _field_for(key: str, fields: dict[str, dataclasses.Field[Any]], where: str) -> dataclasses.Field[Any]:
    field = fields.get(key)
    if field is not None:
        return field
    if key.replace("-", "_") in fields:
        raise ConfigError(f"{where} has no key {key!r}: write it in snake case, {key.replace('-', '_')!r}.")
    names = ["app", *dict.fromkeys(f.name for f in fields.values())]  # the options' own names first
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    close = close or difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    hint = (
        f"; did you mean {close[0]!r}?" if close else "; the keys are the options' names (asgireload --help)."
    )
    raise ConfigError(f"{where} has no option {key!r}{hint}")


def _checked_app(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f'{where} must be a string such as "main:app", got {value!r}.')
    if not (looks_like_a_file(value) or os.path.isdir(value) or _IMPORT_STRING.match(value)):
        raise ConfigError(f"{where}: the app must look like module:attribute (for example main:app).")
    return value


def _kind(field: dataclasses.Field[Any]) -> str:
    annotation = str(field.type)
    for kind in ("bool", "tuple", "int", "float"):
        if annotation.startswith(kind):
            return kind
    return "str"


_EXPECTED = {
    "bool": "true or false",
    "tuple": "a list of strings",
    "int": "a whole number",
    "float": "a number",
    "str": "a string",
}


def _from_toml(field: dataclasses.Field[Any], value: Any, where: str) -> Any:
    kind = _kind(field)
    if kind == "tuple" and isinstance(value, str):
        value = [value]  # reload_dirs = "src" means one folder
    if (
        field.name == "forwarded_allow_ips"
        and isinstance(value, list)
        and all(isinstance(v, str) for v in value)
    ):
        value = ",".join(value)  # a list of addresses, as uvicorn.Config takes it
    ok = {
        "bool": isinstance(value, bool),
        "tuple": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[kind]
    if not ok:
        raise ConfigError(f"{where} must be {_expected(field, kind)}, got {value!r}.")
    value = tuple(value) if kind == "tuple" else value
    if field.name in (*_PATH_OPTIONS, "reload_dirs") and any(
        isinstance(item, str) and not item.strip() for item in (value if kind == "tuple" else (value,))
    ):
        raise ConfigError(f"{where} must not be an empty path (it would mean the file's own folder).")
    _check_alone(field, value, where)
    return value


def _from_text(
    field: dataclasses.Field[Any], text: str, variable: str, *, headers_on_lines: bool = True
) -> Any:
    kind = _kind(field)
    where = f"{variable}={text!r}"
    value: Any
    try:
        if kind == "bool":
            if text.strip().lower() not in (*_TRUE, *_FALSE):
                raise ValueError
            value = text.strip().lower() in _TRUE
        elif kind == "int":
            value = int(text)
        elif kind == "float":
            value = float(text)
        elif kind == "tuple":
            if field.name == "reload_dirs":
                value = tuple(p for p in text.split(os.pathsep) if p)
            elif field.name == "headers" and headers_on_lines:
                value = tuple(line for line in text.splitlines() if line.strip())
            else:
                value = tuple(text.split())
        else:
            value = text
    except ValueError:
        raise ConfigError(f"{where}: expected {_expected(field, kind)}.") from None
    _check_alone(field, value, where)
    return value


def _expected(field: dataclasses.Field[Any], kind: str) -> str:
    choices = field.metadata.get("choices")
    if choices:
        return "one of " + ", ".join(repr(c) for c in choices)
    return _EXPECTED[kind]


def _check_alone(field: dataclasses.Field[Any], value: Any, where: str) -> None:
    """The value's own range and choices, by Config's rules, told against the file or variable."""
    if field.name == "reload":
        return
    try:
        Config(app="main:app", **{field.name: value})
    except ConfigError as exc:
        problem = str(exc)
        needs_another = "needs --" in problem or "either --" in problem
        if not needs_another:  # a combination is judged once everything is merged
            _, _, detail = problem.partition(") ")
            raise ConfigError(f"{where} {detail or problem}") from None


def _relative_to(folder: Path, value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(str(folder / v) for v in value)
    return str(folder / value)


def layered(
    flags: Mapping[str, Any],
    *,
    pyproject: str | os.PathLike[str] | bool = True,
    environ: Mapping[str, str] | None = None,
    uvicorn_variables: bool = False,
) -> tuple[dict[str, Any], Path | None]:
    """The options from the file (the nearest, or the one given), the variables over it (UVICORN_*
    only when asked, under ASGIRELOAD_*), the flags over all; and the file they came from, if
    any. The file's `app`, when it is the one used, is imported from the file's folder unless an
    `app_dir` says otherwise."""
    path: Path | None = None
    if pyproject is True:
        path = find_pyproject()
    elif pyproject is not False:
        path = Path(pyproject)
    _SOURCES.clear()
    keys: dict[str, str] = {}
    from_file = read_pyproject(path, keys) if path is not None else {}
    from_uvicorn = read_uvicorn_environment(environ) if uvicorn_variables else {}
    variables: dict[str, str] = {}
    from_asgireload = read_environment(environ, variables)
    later = {**from_uvicorn, **from_asgireload, **flags}
    options = {**from_file, **later}
    _drain_from_highest_layer(options, (from_file, from_uvicorn, from_asgireload, flags))
    for name in options.keys() - flags.keys():
        if name in from_asgireload:
            _SOURCES[name] = f"set by {variables[name]}"
        elif name in from_uvicorn:
            _SOURCES[name] = f"set by {UVICORN_PREFIX}{name.upper()}"
        elif path is not None and name in keys:
            _SOURCES[name] = f"set in {path.resolve()} [{TABLE}] {keys[name]}"
    if path is not None and "app" in from_file and "app" not in later and "app_dir" not in options:
        options["app_dir"] = str(path.parent)  # the file's app is imported from the file's folder
    return options, (path if from_file else None)


_SOURCES: dict[str, str] = {}  # option -> where the last layered() call took it from, unless a flag


def name_the_file(error: ConfigError) -> ConfigError:
    """A combination error (judged once the layers are merged) that names an option the file or a
    variable set, with the file and key (or the variable) added, so that the user knows where to look."""
    found = re.match(r"option (\w+) \(", str(error))
    where = _SOURCES.get(found[1]) if found else None
    if where is None:
        return error
    return ConfigError(f"{str(error).rstrip('.')} ({where}).")


def name_the_source(error: AsgireloadError) -> str:
    """An error's message, with where its option's value was set when not on the command line:
    "--reload-dir /p/x does not exist (set in /p/pyproject.toml [tool.asgireload] reload_dirs)"."""
    if isinstance(error, ConfigError):
        return str(name_the_file(error))
    return with_source(str(error), getattr(error, "option", None))


def with_source(message: str, option: str | None) -> str:
    """The message, with where the option's value was set added when it was not a flag."""
    where = _SOURCES.get(option) if option is not None else None
    return message if where is None else f"{message.rstrip('.')} ({where})."


def _drain_from_highest_layer(options: dict[str, Any], layers: tuple[Mapping[str, Any], ...]) -> None:
    """--drain-timeout and uvicorn's --timeout-graceful-shutdown set one thing: the highest layer
    (flags over ASGIRELOAD_* over UVICORN_* over the file) that sets either decides."""
    names = ("drain_timeout", "timeout_graceful_shutdown")
    for layer in reversed(layers):
        given = [name for name in names if layer.get(name) is not None]
        if given:
            if given == ["drain_timeout"]:
                options.pop("timeout_graceful_shutdown", None)
            return
