"""The tokenizer states of a tag's attributes (names, values in their three forms, and the
self-closing `/`), as a base of `HtmlScanner` (htmlscan.py), beside `TextStates`. Each state is a
method that reads from index `i` of a chunk and returns where it stopped. Attributes are kept
for the few tags whose attributes matter (a `<meta>` charset, an `annotation-xml` encoding).
"""

from __future__ import annotations

import re

from .htmlstates import WHITESPACE, State

MAX_NAME = 32  # longer names match nothing the scanner looks for
MAX_VALUE = 256  # of attribute values: only charsets and encodings are read
_UNQUOTED_END = re.compile(rb"[\t\n\f\r >]")


class AttributeStates:
    """The states inside a tag after its name; `HtmlScanner` has the tag's start and its end (`_emit`)."""

    _state: State
    _attributes: dict[bytes, bytes]
    _attribute: bytes | None  # the attribute being read, and its value so far
    _value: bytes
    _closes_itself: bool

    def _emit(self) -> None:
        raise NotImplementedError

    def _after_name(self, c: int, i: int) -> int:
        raise NotImplementedError

    def _before_attribute_name(self, data: bytes, i: int) -> int:
        c = data[i]
        if c in WHITESPACE:
            return i + 1
        if c in (0x2F, 0x3E):
            self._state = State.AFTER_ATTRIBUTE_NAME
            return i
        self._new_attribute(b"=" if c == 0x3D else b"")  # a leading `=` is part of the name
        return i + 1 if c == 0x3D else i

    def _new_attribute(self, name: bytes) -> None:
        self._finish_attribute()
        self._attribute, self._value = name, b""
        self._state = State.ATTRIBUTE_NAME

    def _finish_attribute(self) -> None:
        if self._attribute is not None:
            self._attributes.setdefault(self._attribute, self._value)  # the first of a name counts
            self._attribute = None

    def _attribute_name(self, data: bytes, i: int) -> int:
        c = data[i]
        if c in WHITESPACE or c in (0x2F, 0x3E):
            self._state = State.AFTER_ATTRIBUTE_NAME
            return i
        if c == 0x3D:
            self._state = State.BEFORE_ATTRIBUTE_VALUE
            return i + 1
        if self._attribute is not None and len(self._attribute) <= MAX_NAME:
            self._attribute += data[i : i + 1].lower()
        return i + 1

    def _after_attribute_name(self, data: bytes, i: int) -> int:
        c = data[i]
        if c in WHITESPACE:
            return i + 1
        if c == 0x2F:
            self._state = State.SELF_CLOSING
        elif c == 0x3D:
            self._state = State.BEFORE_ATTRIBUTE_VALUE
        elif c == 0x3E:
            self._emit()
        else:
            self._new_attribute(b"")
            return i
        return i + 1

    def _before_attribute_value(self, data: bytes, i: int) -> int:
        c = data[i]
        if c in WHITESPACE:
            return i + 1
        if c == 0x22:
            self._state = State.ATTRIBUTE_VALUE_DOUBLE
        elif c == 0x27:
            self._state = State.ATTRIBUTE_VALUE_SINGLE
        elif c == 0x3E:
            self._emit()
        else:
            self._state = State.ATTRIBUTE_VALUE_UNQUOTED
            return i
        return i + 1

    def _attribute_value_double(self, data: bytes, i: int) -> int:
        return self._quoted_value(data, i, b'"')

    def _attribute_value_single(self, data: bytes, i: int) -> int:
        return self._quoted_value(data, i, b"'")

    def _quoted_value(self, data: bytes, i: int, quote: bytes) -> int:
        at = data.find(quote, i)
        self._add_value(data[i : at if at >= 0 else len(data)])
        if at < 0:
            return len(data)
        self._state = State.AFTER_ATTRIBUTE_VALUE
        return at + 1

    def _add_value(self, part: bytes) -> None:
        if len(self._value) <= MAX_VALUE:
            self._value += part[:MAX_VALUE]

    def _attribute_value_unquoted(self, data: bytes, i: int) -> int:
        match = _UNQUOTED_END.search(data, i)
        self._add_value(data[i : match.start() if match else len(data)])
        if match is None:
            return len(data)
        if data[match.start()] == 0x3E:
            self._emit()
        else:
            self._state = State.BEFORE_ATTRIBUTE_NAME
        return match.start() + 1

    def _after_attribute_value(self, data: bytes, i: int) -> int:
        c = data[i]
        if c in WHITESPACE or c in (0x2F, 0x3E):
            return self._after_name(c, i)
        self._state = State.BEFORE_ATTRIBUTE_NAME
        return i

    def _self_closing(self, data: bytes, i: int) -> int:
        if data[i] == 0x3E:
            self._closes_itself = True
            self._emit()
            return i + 1
        self._state = State.BEFORE_ATTRIBUTE_NAME
        return i
