"""`--env-file`, read exactly as uvicorn reads it: python-dotenv's grammar, no override.

uvicorn loads the file with python-dotenv's `load_dotenv(path)`: a variable already set in the
environment keeps its value, `${VAR}` and `${VAR:-default}` expand (against the environment
first, then the file's earlier lines), values may be quoted over several lines. The parsing is
python-dotenv's own (`dotenv.parser`), so that a file means here what it means to uvicorn and to
whatever python-dotenv the project has installed, quirks included. What this module adds: a line
python-dotenv cannot parse (which uvicorn skips with a warning) is an error naming the file and the
line, and so are files that are not UTF-8 text or hold a NUL byte. No message ever quotes a value:
the file usually holds secrets, and errors end up in logs.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["EnvFileError", "env_file_values", "read_env_file"]

_DISABLED = "PYTHON_DOTENV_DISABLED"  # python-dotenv's switch, which load_dotenv (and uvicorn) obey
_TRUTHY = frozenset({"1", "true", "t", "yes", "y"})
_LINE_END = re.compile(r"\r\n|\n|\r")
_EXPORT = re.compile(r"^export\s+")


class EnvFileError(Exception):
    """An env file is missing, unreadable or malformed; the message names the file and line."""


def env_file_values(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables the file adds to `environ` (os.environ), as uvicorn's load_dotenv would:
    expanded, and without those `environ` already sets."""
    environ = os.environ if environ is None else environ
    if environ.get(_DISABLED, "").casefold() in _TRUTHY:
        return {}
    resolved = _expand(_bindings(path), environ)
    return {key: value for key, value in resolved.items() if key not in environ}


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Every variable the file sets, expanded against the file alone (for checks and tests)."""
    return _expand(_bindings(path), {})


def _expand(bindings: list[tuple[str, str | None]], environ: Mapping[str, str]) -> dict[str, str]:
    """python-dotenv's interpolation without override: the environment wins over the file's own
    earlier values; a key without '=' sets nothing."""
    from dotenv.variables import parse_variables

    values: dict[str, str | None] = {}
    for key, raw in bindings:
        if raw is None:
            values[key] = None
            continue
        scope: dict[str, str | None] = {**values, **environ}
        values[key] = "".join(atom.resolve(scope) for atom in parse_variables(raw))
    return {key: value for key, value in values.items() if value is not None}


def _bindings(path: str | os.PathLike[str]) -> list[tuple[str, str | None]]:
    """(key, raw value) for each assignment, in order; EnvFileError for the first bad line."""
    from dotenv.parser import parse_stream

    name = os.fspath(path)
    text = _read_text(name)
    if "\0" in text:
        line = _line_of(text, text.index("\0"))
        raise EnvFileError(
            f"{name}, line {line}: a NUL byte is not allowed (an environment variable cannot hold "
            "one); is the file binary, or saved as UTF-16? Save it as UTF-8 text."
        )
    bindings: list[tuple[str, str | None]] = []
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            statement = binding.original.string
            blank = len(statement) - len(statement.lstrip())  # blank lines before it are part of it
            line = binding.original.line + _line_of(statement, blank) - 1
            reason = _why_unparsable(statement)
            raise EnvFileError(f"{name}, line {line}: {reason} (expected KEY=VALUE)")
        if binding.key is not None:
            bindings.append((binding.key, binding.value))
    return bindings


def _line_of(text: str, offset: int) -> int:
    """The line number of `offset`, counting line ends as python-dotenv does (CR, LF or CRLF)."""
    return len(_LINE_END.findall(text, 0, offset)) + 1


def _read_text(name: str) -> str:
    try:
        data = Path(name).read_bytes()
    except FileNotFoundError:
        raise EnvFileError(f"env file {name} does not exist") from None
    except IsADirectoryError:
        raise EnvFileError(f"env file {name} is a directory, not a file.") from None
    except OSError as exc:
        raise EnvFileError(f"env file {name} could not be read ({exc.strerror or exc}).") from exc
    try:
        # utf-8-sig: python-dotenv drops a byte order mark too (editors on Windows write one).
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EnvFileError(
            f"env file {name} is not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})."
        ) from None


def _why_unparsable(statement: str) -> str:
    """A reason for a statement python-dotenv rejected, naming at most its key, never its value."""
    key, equals, value = _EXPORT.sub("", statement.strip(), count=1).partition("=")
    key = key.strip()
    if not equals:
        return "the line is neither a bare name nor has an '='"
    if not key:
        return "the variable name before '=' is empty"
    if any(char.isspace() for char in key):
        return "a variable name cannot contain spaces"
    value = value.lstrip()
    for quote, kind in (("'", "single"), ('"', "double")):
        if value.startswith(quote):
            if not _closed(value, quote):
                return f"the {kind}-quoted value of {key} is not terminated"
            return f"there is unexpected text after the closing quote of {key}"
    return f"the value of {key} cannot be parsed"


def _closed(value: str, quote: str) -> bool:
    """Whether a quoted value has its closing quote (a backslash escapes the character after it)."""
    index = 1
    while index < len(value):
        if value[index] == "\\":
            index += 2
            continue
        if value[index] == quote:
            return True
        index += 1
    return False
