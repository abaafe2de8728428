"""Dataclasses to JSON objects and back, checked against their fields' types: one decoder for
every message of every channel (`_protocol.py`), instead of one hand-written per message.

What a JSON object may hold for a field follows from the field's annotation: `str`, `int` (a bool
is not one), `float` (an int is one), `bool`, `X | None`, `Literal[...]`, `tuple[X, ...]` and
fixed tuples (JSON lists), `dict[str, X]`, `Any`, and other dataclasses (JSON objects). In
`Annotated[X, ...]`, a `Check` adds a condition on the value (a path is text the OS can encode),
a `Cut` keeps the first n characters of text, and a `Named` names an entry for errors. A field
with a default may be left out, unless it is marked `sent_always`. Anything else is a
ProtocolError that names the message and the field, down to the element: "a 'files' message
with a malformed file entry [...]: 'files[0][1]' is 'b', not an integer or null". Keys no field
has are ignored. A checker is built once per type, so a long report costs a call per value.
Stdlib only, like the wire.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from ._wire import ProtocolError

T = TypeVar("T")
_SCALARS = (str, int, float, bool)
_ALWAYS = "sent_always"  # field metadata: required on the wire although it has a default


@dataclasses.dataclass(frozen=True)
class Check:
    """Annotated metadata: `holds(value)` must be true; `what` names such a value ("a path")."""

    holds: Callable[[Any], bool]
    what: str


@dataclasses.dataclass(frozen=True)
class Named:
    """Annotated metadata: what such a value is called ("file entry"); an error inside one shows
    it whole: "a 'files' message with a malformed file entry [...]: 'files[0][1]' is ..."."""

    what: str


@dataclasses.dataclass(frozen=True)
class Cut:
    """Annotated metadata: text longer than `length` characters is cut to that length."""

    length: int


def sent_always(default: Any) -> Any:
    """A field with a default in Python that every message on the wire must still carry."""
    return dataclasses.field(default=default, metadata={_ALWAYS: True})


def to_json(instance: Any) -> dict[str, Any]:
    """The fields of a dataclass as a JSON object (nested dataclasses too; tuples become lists)."""
    return {field.name: _plain(getattr(instance, field.name)) for field in dataclasses.fields(instance)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return to_json(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


def from_json(cls: type[T], data: dict[str, Any], name: str) -> T:
    """An instance of the dataclass `cls` from a JSON object; `name` says whose fields they are
    in errors ("a 'hello' message")."""
    try:
        result: T = _checker(typing.cast(Any, cls))(data)
    except _Wrong as wrong:
        where = _path(wrong.path)
        if wrong.missing:
            raise ProtocolError(f"{name} without {where!r}") from None
        shown = str(wrong.value)[:80]
        context = f"{name} with {wrong.entry}: " if wrong.entry else f"{name} whose "
        raise ProtocolError(f"{context}{where!r} is {shown!r}, not {wrong.expected}") from None
    return result


class _Wrong(Exception):
    """A value that is not what its field says (or a field left out), on its way up to the field
    that holds it: each level adds where it was (innermost first)."""

    def __init__(self, value: Any, expected: str = "", missing: bool = False) -> None:
        self.value, self.expected, self.missing = value, expected, missing
        self.path: list[str] = []
        self.entry: str | None = None  # "a malformed file entry [...]", when inside a Named one


def _path(parts: list[str]) -> str:
    """["[1]", "[0]", "files"] -> "files[0][1]"; ["summary", "failure"] -> "failure.summary"."""
    text = ""
    for part in reversed(parts):
        text += part if part.startswith("[") or not text else f".{part}"
    return text


Checker = Callable[[Any], Any]


@functools.cache
def _checker(annotation: Any) -> Checker:
    """A function that returns a JSON value as `annotation` says, or raises _Wrong: built once
    per type, so that a long report costs a call per value, not a look at its type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _annotated(_checker(args[0]), annotation.__metadata__)
    if origin in (typing.Union, types.UnionType):
        return _union(args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _any_length(_checker(args[0]))
    if origin is tuple:
        return _fixed_length(tuple(_checker(arg) for arg in args))
    if origin is dict:
        return _mapping(_checker(args[0]), _checker(args[1]))
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _object(annotation)
    if origin is typing.Literal:
        return _literal(args)
    return _scalar(annotation)


def _object(cls: type) -> Checker:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [
        (
            field.name,
            _checker(hints[field.name]),
            bool(field.metadata.get(_ALWAYS))
            or (field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING),
        )
        for field in dataclasses.fields(cls)
        if field.init
    ]

    def check(value: Any) -> Any:
        if type(value) is not dict:
            raise _Wrong(value, "an object")
        values = {}
        for name, checker, required in fields:
            if name in value:
                try:
                    values[name] = checker(value[name])
                except _Wrong as wrong:
                    wrong.path.append(name)
                    raise
            elif required:
                missing = _Wrong(None, missing=True)
                missing.path.append(name)
                raise missing
        return cls(**values)

    return check


def _annotated(base: Checker, extras: tuple[Any, ...]) -> Checker:
    named = next((extra.what for extra in extras if isinstance(extra, Named)), None)
    if named is not None:
        return _named(_annotated(base, tuple(e for e in extras if not isinstance(e, Named))), named)
    checks = [extra for extra in extras if isinstance(extra, Check)]
    cuts = [extra.length for extra in extras if isinstance(extra, Cut)]

    if len(checks) == 1 and not cuts:
        rule = checks[0]

        def checked(value: Any) -> Any:  # the common case, kept quick: a path
            result = base(value)
            if not rule.holds(result):
                raise _Wrong(value, rule.what)
            return result

        return checked

    def check(value: Any) -> Any:
        result = base(value)
        for rule in checks:
            if not rule.holds(result):
                raise _Wrong(value, rule.what)
        for length in cuts:
            result = result[:length]
        return result

    return check


def _named(inner: Checker, what: str) -> Checker:
    def check(value: Any) -> Any:
        try:
            return inner(value)
        except _Wrong as wrong:
            if wrong.entry is None:  # the innermost entry is the one to show
                wrong.entry = f"a malformed {what} {str(value)[:80]}"
            raise

    return check


def _union(args: tuple[Any, ...]) -> Checker:
    arms = [_checker(arm) for arm in args if arm is not type(None)]
    optional = len(arms) < len(args)
    expected = " or ".join(_describe(arm) for arm in args)
    inner_says_more = len(arms) == 1 and args[0] not in _SCALARS  # what is wrong inside it

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        for arm in arms:
            try:
                return arm(value)
            except _Wrong:
                if inner_says_more:
                    raise
        raise _Wrong(value, expected)

    return check


def _any_length(item: Checker) -> Checker:
    def check(value: Any) -> tuple[Any, ...]:
        if type(value) is not list:
            raise _Wrong(value, "a list")
        try:
            return tuple(map(item, value))
        except _Wrong as wrong:
            wrong.path.append(f"[{_failing(item, value)}]")
            raise

    return check


def _fixed_length(items: tuple[Checker, ...]) -> Checker:
    def check(value: Any) -> tuple[Any, ...]:
        if type(value) is not list or len(value) != len(items):
            raise _Wrong(value, f"a list of {len(items)}")
        try:
            return tuple(map(operator.call, items, value))
        except _Wrong as wrong:
            index = next(
                i for i, (item, v) in enumerate(zip(items, value, strict=True)) if not _passes(item, v)
            )
            wrong.path.append(f"[{index}]")
            raise

    return check


def _failing(item: Checker, values: list[Any]) -> int:
    """The index of the first value `item` refuses (to say where, once one was refused)."""
    return next(i for i, value in enumerate(values) if not _passes(item, value))


def _passes(item: Checker, value: Any) -> bool:
    try:
        item(value)
    except _Wrong:
        return False
    return True


def _mapping(key: Checker, item: Checker) -> Checker:
    def check(value: Any) -> dict[Any, Any]:
        if type(value) is not dict:
            raise _Wrong(value, "an object")
        result = {}
        for name, element in value.items():
            try:
                result[key(name)] = item(element)
            except _Wrong as wrong:
                wrong.path.append(f"[{name!r}]")
                raise
        return result

    return check


def _literal(allowed: tuple[Any, ...]) -> Checker:
    expected = " or ".join(repr(choice) for choice in allowed)

    def check(value: Any) -> Any:
        if not any(type(value) is type(choice) and value == choice for choice in allowed):
            raise _Wrong(value, expected)
        return value

    return check


def _scalar(annotation: Any) -> Checker:
    if annotation is Any:
        return lambda value: value
    if annotation not in _SCALARS:
        raise TypeError(f"{annotation!r} is not a type the wire carries")
    expected = _describe(annotation)
    if annotation is float:

        def number(value: Any) -> float:
            if type(value) is float or type(value) is int:
                return float(value)
            raise _Wrong(value, expected)

        return number

    def check(value: Any) -> Any:
        if type(value) is not annotation:
            raise _Wrong(value, expected)
        return value

    return check


def _describe(annotation: Any) -> str:
    names = {str: "text", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
    if annotation in names:
        return names[annotation]
    if typing.get_origin(annotation) is typing.Annotated:
        return _describe(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is typing.Literal:
        return " or ".join(repr(allowed) for allowed in typing.get_args(annotation))
    return "a list" if typing.get_origin(annotation) is tuple else "an object"
