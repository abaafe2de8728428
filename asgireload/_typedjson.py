"""Dataclasses to JSON objects and back, checked against their fields' types: one decoder for
every message of every channel (`_protocol.py`), instead of one hand-written per message.

What a JSON object may hold for a field follows from the field's annotation: `str`, `int` (a bool
is not one), `float` (an int is one), `bool`, `X | None`, `Literal[...]`, `tuple[X, ...]` and
fixed tuples (JSON lists), `dict[str, X]`, `Any`, and other dataclasses (JSON objects).
`Annotated[X, Check(...)]` adds a condition on the value (a path is text the OS can encode) and
`Annotated[str, Cut(n)]` keeps the first n characters. A field with a default may be left out,
unless it is marked `sent_always`. Anything else is a ProtocolError that names the message and
the field, down to the element: "a 'files' message whose 'files[0][1]' is 'b', not an integer
or null". Keys no field has are ignored. Stdlib only, like the wire.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
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


def from_json(cls: type[T], data: Mapping[str, Any], name: str, prefix: str = "") -> T:
    """An instance of the dataclass `cls` from a JSON object; `name` says whose fields they are
    in errors ("a 'hello' message"), `prefix` where this object is in it ("failure.")."""
    values = {}
    for field, annotation in _fields(typing.cast(Any, cls)):
        if field.name not in data:
            required = field.metadata.get(_ALWAYS) or (
                field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            )
            if required:
                raise ProtocolError(f"{name} without {prefix + field.name!r}")
            continue
        values[field.name] = _value(annotation, data[field.name], name, prefix + field.name)
    return cls(**values)


@functools.cache
def _fields(cls: Any) -> tuple[tuple[dataclasses.Field[Any], Any], ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple((field, hints[field.name]) for field in dataclasses.fields(cls) if field.init)


def _value(annotation: Any, value: Any, name: str, path: str) -> Any:
    """`value` as `annotation` says, or ProtocolError naming `path`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        result = _value(args[0], value, name, path)
        for extra in annotation.__metadata__:
            if isinstance(extra, Check) and not extra.holds(result):
                raise _wrong(name, path, value, extra.what)
            if isinstance(extra, Cut):
                result = result[: extra.length]
        return result
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [arm for arm in args if arm is not type(None)]
        for arm in arms:
            try:
                return _value(arm, value, name, path)
            except ProtocolError:
                if len(arms) == 1 and arm not in _SCALARS:
                    raise  # what is wrong inside it says more
        raise _wrong(name, path, value, " or ".join(_describe(arm) for arm in args))
    if origin is tuple:
        return _sequence(args, value, name, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(name, path, value, _describe(annotation))
        return {
            _value(args[0], key, name, f"{path}[{key!r}]"): _value(args[1], item, name, f"{path}[{key!r}]")
            for key, item in value.items()
        }
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise _wrong(name, path, value, "an object")
        return from_json(annotation, value, name, f"{path}.")
    return _scalar(annotation, value, name, path)


def _sequence(args: tuple[Any, ...], value: Any, name: str, path: str) -> tuple[Any, ...]:
    """A JSON list as `tuple[X, ...]` (any length) or `tuple[X, Y, Z]` (that length)."""
    any_length = len(args) == 2 and args[1] is Ellipsis
    if not isinstance(value, list) or not (any_length or len(value) == len(args)):
        what = "a list" if any_length else f"a list of {len(args)}"
        raise _wrong(name, path, value, what)
    kinds = [args[0]] * len(value) if any_length else list(args)
    return tuple(
        _value(kind, item, name, f"{path}[{i}]")
        for i, (kind, item) in enumerate(zip(kinds, value, strict=True))
    )


def _scalar(annotation: Any, value: Any, name: str, path: str) -> Any:
    if annotation is Any:
        return value
    if typing.get_origin(annotation) is typing.Literal:
        if not any(
            type(value) is type(allowed) and value == allowed for allowed in typing.get_args(annotation)
        ):
            raise _wrong(name, path, value, _describe(annotation))
        return value
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if annotation in (str, int, bool) and type(value) is annotation:
        return value
    if annotation in _SCALARS:
        raise _wrong(name, path, value, _describe(annotation))
    raise TypeError(f"{path}: {annotation!r} is not a type the wire carries")


def _describe(annotation: Any) -> str:
    names = {str: "text", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
    if annotation in names:
        return names[annotation]
    if typing.get_origin(annotation) is typing.Literal:
        return " or ".join(repr(allowed) for allowed in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Annotated:
        return _describe(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is dict:
        return "an object"
    if typing.get_origin(annotation) is tuple:
        return "a list"
    return "an object"


def _wrong(name: str, path: str, value: Any, expected: str) -> ProtocolError:
    return ProtocolError(f"{name} whose {path!r} is {str(value)[:80]!r}, not {expected}")
