"""Tests for the dependency-free .env parser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asgireload._supervisor.envfile import EnvFileError, read_env_file


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
    ],
)
def test_double_quoted_values_decode_escapes(tmp_path: Path, line: str, value: str) -> None:
    assert parse(tmp_path, line + "\n") == {"KEY": value}


def test_export_prefix_is_optional_and_export_is_a_valid_key(tmp_path: Path) -> None:
    env = parse(tmp_path, "export   A=1\nexport=2\nexporter=3\n")

    assert env == {"A": "1", "export": "2", "exporter": "3"}


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
        ("A=1\nJUST_A_WORD\n", 2, "has no '='"),
        ("A=1\n\n# c\nexport B\n", 4, "has no '='"),
        ("=value\n", 1, "variable name before '=' is empty"),
        ("1ABC=x\n", 1, "'1ABC' is not a valid variable name"),
        ("MY-KEY=x\n", 1, "'MY-KEY' is not a valid variable name"),
        ("MY KEY=x\n", 1, "'MY KEY' is not a valid variable name"),
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
    path = write(tmp_path, "sk_live_SECRET\nTOKEN='abc' sk_live_OTHER\n")

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
