"""--env-file: python-dotenv's grammar and uvicorn's no-override expansion, and clear errors.

Each value is checked against python-dotenv's own `load_dotenv` (what uvicorn calls) on the same
file and environment, so that a difference from uvicorn fails here first.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import dotenv
import pytest

from asgireload._supervisor.envfile import EnvFileError, env_file_values, read_env_file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".env"
    path.write_bytes(text.encode("utf-8"))
    return path


def parse(tmp_path: Path, text: str) -> dict[str, str]:
    return read_env_file(write(tmp_path, text))


def test_a_typical_file(tmp_path: Path) -> None:
    text = """\
# Database settings
DATABASE_URL=postgres://user:pw@localhost/db

export DEBUG=1
  SPACED   =   value with spaces   \t
EMPTY=
_UNDER_score9=x
"""
    assert parse(tmp_path, text) == {
        "DATABASE_URL": "postgres://user:pw@localhost/db",
        "DEBUG": "1",
        "SPACED": "value with spaces",
        "EMPTY": "",
        "_UNDER_score9": "x",
    }


def test_accepts_str_and_pathlike(tmp_path: Path) -> None:
    path = write(tmp_path, "A=1\n")

    assert read_env_file(str(path)) == read_env_file(path) == {"A": "1"}


def test_empty_file(tmp_path: Path) -> None:
    assert parse(tmp_path, "") == {}
    assert parse(tmp_path, "\n\n   \n# only a comment\n") == {}


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("KEY=value # a comment", "value"),
        ("KEY=value\t# a tab comment", "value"),
        ("KEY= # nothing but a comment", ""),
        ("KEY=a#b", "a#b"),
        ("KEY=#not-a-comment", "#not-a-comment"),
        ("KEY=https://example.com/page#frag", "https://example.com/page#frag"),
        ("KEY=a=b=c", "a=b=c"),
        ("KEY=it's", "it's"),
        ('KEY=say "hi"', 'say "hi"'),
        ("KEY=tab\\there", "tab\\there"),
    ],
)
def test_unquoted_values(tmp_path: Path, line: str, value: str) -> None:
    assert parse(tmp_path, line + "\n") == {"KEY": value}


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("KEY='literal $HOME \\n # not a comment'", "literal $HOME \\n # not a comment"),
        ("KEY='it\\'s'", "it's"),  # python-dotenv decodes \\' and \\\\ in single quotes
        ("KEY='multi\nline'", "multi\nline"),
        ("KEY=''", ""),
        ("KEY='  padded  '", "  padded  "),
        ("KEY = 'spaced'  # comment", "spaced"),
        ("KEY='say \"hi\"'", 'say "hi"'),
    ],
)
def test_single_quoted_values_are_literal(tmp_path: Path, line: str, value: str) -> None:
    assert parse(tmp_path, line + "\n") == {"KEY": value}


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ('KEY="a\\nb"', "a\nb"),
        ('KEY="a\\tb"', "a\tb"),
        ('KEY="say \\"hi\\""', 'say "hi"'),
        ('KEY="back\\\\slash"', "back\\slash"),
        ('KEY="\\\\n"', "\\n"),
        ('KEY="unknown \\d escape"', "unknown \\d escape"),
        ('KEY=""', ""),
        ('KEY="  padded # not a comment  "', "  padded # not a comment  "),
        ('KEY="x" # comment', "x"),
        ('KEY="it\'s"', "it's"),
        ('KEY="multi\nline # not a comment"', "multi\nline # not a comment"),
        ('KEY="bell\\a form\\f"', "bell\a form\f"),
    ],
)
def test_double_quoted_values_decode_escapes(tmp_path: Path, line: str, value: str) -> None:
    assert parse(tmp_path, line + "\n") == {"KEY": value}


def test_export_prefix_is_optional_and_export_is_a_valid_key(tmp_path: Path) -> None:
    env = parse(tmp_path, "export   A=1\nexport=2\nexporter=3\n")

    assert env == {"A": "1", "export": "2", "exporter": "3"}


def test_names_python_dotenv_takes_are_taken_and_a_bare_name_sets_nothing(tmp_path: Path) -> None:
    env = parse(tmp_path, "MY-KEY=1\n1ABC=2\nJUST_A_WORD\nexport B\na.b=3\n")

    assert env == {"MY-KEY": "1", "1ABC": "2", "a.b": "3"}


def test_later_duplicates_win(tmp_path: Path) -> None:
    assert parse(tmp_path, "A=1\nB=2\nA=3\n") == {"A": "3", "B": "2"}


def test_crlf_line_endings_and_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"\xef\xbb\xbfA=1\r\nB='two'\r\nC=\"three\"\r\n")

    assert read_env_file(path) == {"A": "1", "B": "two", "C": "three"}


def test_non_ascii_values(tmp_path: Path) -> None:
    env = parse(tmp_path, 'GREETING=héllo wörld ✓\nQ="日本語"\n')

    assert env == {"GREETING": "héllo wörld ✓", "Q": "日本語"}


def test_form_feed_inside_a_value_does_not_split_the_line(tmp_path: Path) -> None:
    assert parse(tmp_path, "A='x\x0cy'\n") == {"A": "x\x0cy"}


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.env"

    with pytest.raises(EnvFileError, match=f"^env file {re.escape(str(path))} does not exist"):
        read_env_file(path)


def test_directory_is_rejected_with_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(EnvFileError, match=rf"^env file {re.escape(str(tmp_path))} is a directory"):
        read_env_file(tmp_path)


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"A=1\nB=caf\xe9\n")

    with pytest.raises(EnvFileError, match=rf"^env file {re.escape(str(path))} is not valid UTF-8.*\.$"):
        read_env_file(path)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("A=1\nJUST A SENTENCE\n", 2, "neither a bare name nor has an '='"),
        ("A=1\n\n\n# c\nexport B C\n", 5, "neither a bare name nor has an '='"),
        ("=value\n", 1, "variable name before '=' is empty"),
        ("MY KEY=x\n", 1, "a variable name cannot contain spaces"),
        ("A=1\r\n\r\nMY KEY=x\r\n", 3, "a variable name cannot contain spaces"),
        ("A=1\nB='open\n", 2, "single-quoted value of B is not terminated"),
        ('A="open\nB=2\n', 1, "double-quoted value of A is not terminated"),
        ('A="ends with escaped quote\\"\n', 1, "double-quoted value of A is not terminated"),
        ("A='x' trailing\n", 1, "unexpected text after the closing quote of A"),
        ('A="x"y\n', 1, "unexpected text after the closing quote of A"),
    ],
)
def test_malformed_lines_name_the_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(EnvFileError) as excinfo:
        read_env_file(path)

    message = str(excinfo.value)
    assert message.startswith(f"{path}, line {line}: ")
    assert reason in message
    assert message.endswith("(expected KEY=VALUE)")


def test_errors_do_not_echo_secret_values(tmp_path: Path) -> None:
    path = write(tmp_path, "sk_live SECRET\nTOKEN='abc' sk_live_OTHER\n")

    with pytest.raises(EnvFileError) as excinfo:
        read_env_file(path)
    assert "SECRET" not in str(excinfo.value)

    path.write_text("TOKEN='abc' sk_live_OTHER\n")
    with pytest.raises(EnvFileError) as excinfo:
        read_env_file(path)
    assert "OTHER" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"A=1\nB=2\nC=x\x00y\n", 3),  # inside a value
        (b"# comment \x00\nA=1\n", 1),  # in a comment, which would otherwise be skipped
        (b"A='quoted \x00 value'\n", 1),
        ("A=1\n".encode("utf-16-le"), 1),  # UTF-16 without a BOM decodes as UTF-8 with NULs
    ],
)
def test_a_nul_byte_is_rejected_with_its_line(tmp_path: Path, data: bytes, line: int) -> None:
    path = tmp_path / ".env"
    path.write_bytes(data)

    with pytest.raises(EnvFileError) as excinfo:
        read_env_file(path)

    message = str(excinfo.value)
    assert message.startswith(f"{path}, line {line}: a NUL byte")
    assert "UTF-8" in message


# ------------------------------------------------------------------------ as uvicorn: load_dotenv


def what_uvicorn_sets(path: Path, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What python-dotenv's load_dotenv (uvicorn's call: no override) adds to `environ`."""
    patched = dict(environ)
    with monkeypatch.context() as patch:
        patch.setattr(os, "environ", patched)
        dotenv.load_dotenv(dotenv_path=path)
    return {key: value for key, value in patched.items() if key not in environ}


SHELL = {"HOME": "/home/me", "SET_IN_SHELL": "from-shell", "EMPTY_IN_SHELL": ""}
AS_UVICORN = [
    pytest.param("SET_IN_SHELL=from-file\nNEW=1\n", id="no-override"),
    pytest.param("EMPTY_IN_SHELL=from-file\n", id="no-override-of-an-empty-value"),
    pytest.param("A=${HOME}/x\nB=${NOPE}\nC=${NOPE:-fallback}\nD=${HOME:-unused}\n", id="expansion"),
    pytest.param("SET_IN_SHELL=file\nA=${SET_IN_SHELL}\n", id="expansion-prefers-the-shell"),
    pytest.param("A=1\nB=${A}2\nC='${B}3'\nD=\"${C}4\"\n", id="expansion-of-earlier-lines-any-quotes"),
    pytest.param("A=$HOME\nB=\\${HOME}\nC=${EMPTY_IN_SHELL:-d}\n", id="expansion-only-with-braces"),
    pytest.param('A="one\ntwo\n  three"\nB=after\n', id="multi-line-double-quoted"),
    pytest.param("A='one\ntwo'\nB=after\n", id="multi-line-single-quoted"),
    pytest.param("export A=1\n  export   B = 2 \n", id="export"),
    pytest.param("# c\nA=1 # c\nB=x#y\nC= # only\nD='#' # c\n\n   # indented\n", id="comments"),
    pytest.param(r'A="a\nb\tc\"d\\e\'f\x"' + "\n" + r"B='a\nb\'c\\d'" + "\n", id="escapes"),
    pytest.param("A=1\nA=2\n", id="duplicates"),
    pytest.param("\ufeffA=1\r\nB=2\rC=3\n", id="bom-and-line-ends"),
    pytest.param("A\nB=\nC=''\nexport D\n", id="bare-and-empty"),
    pytest.param("'QUOTED KEY'=1\nMY-KEY=2\n", id="unusual-keys"),
]


@pytest.mark.parametrize("text", AS_UVICORN)
def test_the_variables_are_what_uvicorn_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    path = tmp_path / ".env"
    path.write_text(text, encoding="utf-8", newline="")
    assert env_file_values(path, SHELL) == what_uvicorn_sets(path, SHELL, monkeypatch)


def test_a_variable_set_in_the_shell_keeps_its_value(tmp_path: Path) -> None:
    path = write(tmp_path, "SET_IN_SHELL=from-file\nA=${SET_IN_SHELL}\n")

    assert env_file_values(path, SHELL) == {"A": "from-shell"}
    assert read_env_file(path) == {"SET_IN_SHELL": "from-file", "A": "from-file"}


def test_python_dotenv_disabled_loads_nothing_as_in_uvicorn(tmp_path: Path) -> None:
    path = write(tmp_path, "A=1\n")

    assert env_file_values(path, {"PYTHON_DOTENV_DISABLED": "true"}) == {}
    assert env_file_values(path, {"PYTHON_DOTENV_DISABLED": "0"}) == {"A": "1"}
