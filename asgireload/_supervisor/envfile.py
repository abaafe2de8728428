"""A small ``.env`` parser, so loading an env file needs no python-dotenv dependency.

It accepts the common subset that shells and python-dotenv agree on, and rejects anything else with
the line number rather than guessing, because a silently mis-parsed secret is hard to debug.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["EnvFileError", "read_env_file"]

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPORT = re.compile(r"export\s+(?=\S)")
_INLINE_COMMENT = re.compile(r"\s#")
_DOUBLE_QUOTE_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


class EnvFileError(Exception):
    """An env file is missing, unreadable or malformed; the message names the file and line."""


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse an env file into a dict; later duplicate keys win, as they would in a shell."""
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except FileNotFoundError:
        raise EnvFileError(f"env file {name} does not exist") from None
    except IsADirectoryError:
        raise EnvFileError(f"env file {name} is a directory, not a file.") from None
    except OSError as exc:
        raise EnvFileError(f"env file {name} could not be read ({exc.strerror or exc}).") from exc
    try:
        # utf-8-sig: editors on Windows like to start files with a byte order mark.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EnvFileError(
            f"env file {name} is not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})."
        ) from None

    env: dict[str, str] = {}
    # split("\n") rather than splitlines(): the latter also breaks on characters such as \x0c
    # that may legitimately appear inside a value.
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.removesuffix("\r")
        if "\0" in line:
            raise EnvFileError(
                f"{name}, line {number}: a NUL byte is not allowed (an environment variable cannot hold "
                "one); is the file binary, or saved as UTF-16? Save it as UTF-8 text."
            )
        try:
            entry = _parse_line(line)
        except ValueError as exc:
            raise EnvFileError(f"{name}, line {number}: {exc} (expected KEY=VALUE)") from None
        if entry is not None:
            key, value = entry
            env[key] = value
    return env


def _parse_line(line: str) -> tuple[str, str] | None:
    """Parse one line; None for blank and comment lines, ValueError with a reason for bad ones.

    Reasons name the key but never quote values: the file usually holds secrets and errors end up in logs.
    """
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    export = _EXPORT.match(stripped)
    if export:
        stripped = stripped[export.end() :]

    key, equals, after = stripped.partition("=")
    key = key.strip()
    if not equals:
        raise ValueError("the line has no '='")
    if not key:
        raise ValueError("the variable name before '=' is empty")
    if not _KEY.fullmatch(key):
        raise ValueError(f"{key!r} is not a valid variable name (use letters, digits and underscores)")

    rest = after.lstrip()
    if rest.startswith("'"):
        end = rest.find("'", 1)
        if end < 0:
            raise ValueError(f"the single-quoted value of {key} is not terminated")
        value, tail = rest[1:end], rest[end + 1 :]
    elif rest.startswith('"'):
        value, tail = _parse_double_quoted(key, rest)
    else:
        # Only a '#' after whitespace starts a comment, so URLs with fragments like a#b survive.
        comment = _INLINE_COMMENT.search(after)
        return key, (after[: comment.start()] if comment else after).strip()

    tail = tail.strip()
    if tail and not tail.startswith("#"):
        raise ValueError(f"there is unexpected text after the closing quote of {key}")
    return key, value


def _parse_double_quoted(key: str, rest: str) -> tuple[str, str]:
    """Decode a double-quoted value; returns it and whatever follows the closing quote."""
    chars: list[str] = []
    index = 1
    while index < len(rest):
        char = rest[index]
        if char == '"':
            return "".join(chars), rest[index + 1 :]
        if char == "\\" and index + 1 < len(rest):
            following = rest[index + 1]
            # Unknown escapes such as "\d" keep their backslash, as they do in shells.
            chars.append(_DOUBLE_QUOTE_ESCAPES.get(following, char + following))
            index += 2
            continue
        chars.append(char)
        index += 1
    raise ValueError(f"the double-quoted value of {key} is not terminated")
