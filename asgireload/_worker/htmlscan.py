"""Where a new element may begin in an HTML body that streams past: a small, resumable part of
the HTML standard's tokenizer (WHATWG HTML, "Tokenization"), with no I/O.

Live reload adds a `<script>` before the page's `</body>`. The bytes `</body>` are an end tag only
where the tokenizer is in its data state: not inside a comment, a `<script>` (its escaped states
included), a `<style>` or another raw-text element, a `<textarea>` or `<title>`, a tag and its
attribute values, a CDATA section, or after `<plaintext>`. And a tag in the data state is a new,
running element only outside `<template>` (whose content is inert) and outside `<svg>` and `<math>`
(where `<script>` is no HTML script); `ContextStack` follows those, with the integration points
(`foreignObject`, `mi`, ...) and the breakout tags of the tree builder, which end foreign content.

`HtmlScanner.feed` takes the body chunk by chunk; a tag split across two chunks is followed the
same as a whole one. Bytes are enough: only ASCII decides, and a page whose encoding does not keep
ASCII as it is (a UTF-16 byte-order mark, a `<meta>` naming such a charset) is refused (`unsafe`).

Each tokenizer state is a method: those of data and tags are here, those of attributes in
htmlattributes.py, those of comments and text elements in htmlstates.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .htmlattributes import MAX_NAME, AttributeStates
from .htmlcontext import FOREIGN_ROOTS, RAWTEXT, RCDATA, ContextStack
from .htmlstates import CDATA_STATES, COMMENT_STATES, TEXT_STATES, State, TextStates, is_alpha

# Charsets in which the ASCII bytes of a tag do not stand for ASCII text (every two bytes are one
# character, or escapes switch to a 7-bit double-byte mode): adding ASCII bytes would break them.
UNSAFE_CHARSETS = re.compile(
    rb"utf-?(16|32)|ucs-?[24]|utf-?7|iso-?2022|hz-gb|^\s*(cs)?unicode", re.IGNORECASE
)
_NAME_END = re.compile(rb"[\t\n\f\r />]")
# Tags whose attributes matter here: read by the tag states, where attributes are kept.
_READ_ATTRIBUTES = frozenset({b"meta", b"font", b"annotation-xml"})
_CHARSET_PARAM = re.compile(rb"charset\s*=\s*[\"']?([^\s\"';]+)", re.IGNORECASE)
_BODY = b"body"

# Start tags that change the context or the state, in HTML; any other only matters in SVG or MathML.
_CONTEXT_TAGS = frozenset(
    {b"script", b"plaintext", b"template", b"frameset", *RAWTEXT, *RCDATA, *FOREIGN_ROOTS}
)

# A whole tag in the common form (attributes separated by whitespace or `/`, values quoted or not),
# matched where the tokenizer's tag states would take it, to the same end. Anything else (a tag
# cut by the chunk's end, `a="x"b`, `a=>`) is left to those states, byte by byte.
_ATTRIBUTES = (
    rb"(?:[\t\n\f\r /]+[^\t\n\f\r />=][^\t\n\f\r />=]*"
    rb"(?:[\t\n\f\r ]*=[\t\n\f\r ]*(?:\"[^\"]*\"|'[^']*'|[^\t\n\f\r >\"'][^\t\n\f\r >]*))?)*"
)
_WHOLE_TAG = re.compile(rb"<(/?)([a-zA-Z][^\t\n\f\r />]*)" + _ATTRIBUTES + rb"([\t\n\f\r /]*)>")
# A whole comment (`<!-->` and `<!--->` end at once).
_WHOLE_COMMENT = re.compile(rb"<!--(?:-?>|.*?--!?>)", re.DOTALL)
# Outside any context element: text, lone `<`s, and whole tags that change nothing, at C speed.
_SPECIAL_NAMES = b"|".join(sorted(_CONTEXT_TAGS | _READ_ATTRIBUTES | {b"/body"}))
_NOTHING_CHANGES = re.compile(
    rb"(?:[^<]++|<(?=[^a-zA-Z/!?])|<(?!(?i:"
    + _SPECIAL_NAMES
    + rb")[\t\n\f\r />])/?[a-zA-Z][^\t\n\f\r />]*"
    + _ATTRIBUTES
    + rb"[\t\n\f\r /]*>)*+"
)


class HtmlScanner(TextStates, AttributeStates):
    """Follows a body through the tokenizer; finds the first real `</body>` end tag that begins at
    or after `usable_from`, and says whether the end of the body is a place for a new element.

    Positions count bytes from the start of the body. `found`: where that `</body>` begins (its
    `<`). `candidate`: where a `<` begins that may still turn out to be that tag (hold those bytes
    back). `unsafe`: why no byte may be added at all. Once `found` or `unsafe` is set, `feed` does
    nothing more.
    """

    def __init__(self) -> None:
        self.position = 0
        self.usable_from = 0
        self.found: int | None = None
        self.unsafe: str | None = None
        self.context = ContextStack()
        self._state = State.DATA
        self._base = 0  # the position of the chunk being scanned
        self._first_bytes = b""
        self._tag_start = 0
        self._end_tag = False
        self._closes_itself = False
        self._name = b""
        self._attributes: dict[bytes, bytes] = {}
        self._attribute: bytes | None = None  # the attribute being read, and its value so far
        self._value = b""
        self._word = b""  # the letters after `<!`, `</` or `<` in a text element
        self._text_name = b""  # the element whose raw text or RCDATA is being read
        self._text_state = State.TEXT  # where a `</` in text that is not its end tag goes back to
        self._steps: dict[State, Callable[[bytes, int], int]] = {
            state: getattr(self, "_" + state.name.lower()) for state in State
        }

    @property
    def candidate(self) -> int | None:
        """Where a `<` begins that may still turn out to be the `</body>` to find."""
        opened = self._state in (State.TAG_OPEN, State.END_TAG_OPEN) or (
            self._state is State.TAG_NAME and self._end_tag and _BODY.startswith(self._name)
        )
        usable = self._tag_start >= self.usable_from and not self.context.open
        return self._tag_start if opened and usable else None

    def feed(self, data: bytes) -> int | None:
        """Scan the next bytes of the body; returns `found`."""
        if self.found is None and self.unsafe is None:
            if self.position < 4:
                self._check_start(data)
            self._base = self.position
            index = 0
            while index < len(data) and self.found is None and self.unsafe is None:
                index = self._steps[self._state](data, index)
        self.position += len(data)
        return self.found

    def why_not_at_end(self) -> str | None:
        """Why bytes added after everything fed so far would not be a new element (None: they would)."""
        if self.unsafe is not None:
            return self.unsafe
        if self._state in (State.DATA, State.TAG_OPEN):  # a lone `<` is text, before a `<` too
            if self.context.open:
                return f"it ends inside <{self.context.open[0][0].decode('ascii', 'replace')}>"
            return None
        if self._state is State.PLAINTEXT:
            return "everything after its <plaintext> is text"
        if self._state in COMMENT_STATES:
            return "it ends inside a comment"
        if self._state in CDATA_STATES:
            return "it ends inside a CDATA section"
        if self._state in TEXT_STATES:
            return f"it ends inside <{self._text_name.decode('ascii', 'replace')}>"
        return "it ends inside a tag"

    # ------------------------------------------------------------------ the start of the body

    def _check_start(self, data: bytes) -> None:
        """A byte-order mark or NUL bytes: UTF-16 (or UTF-32), where one ASCII byte is no character."""
        self._first_bytes = (self._first_bytes + data)[:4]
        if self._first_bytes[:2] in (b"\xff\xfe", b"\xfe\xff"):
            self.unsafe = "it starts with a UTF-16 byte-order mark"
        elif b"\x00" in self._first_bytes:
            self.unsafe = "it starts with NUL bytes (UTF-16 or UTF-32)"

    # ------------------------------------------------------------------ data and tags

    def _data(self, data: bytes, i: int) -> int:
        while True:
            if not self.context.open:
                i = _NOTHING_CHANGES.match(data, i).end()  # type: ignore[union-attr]  # it matches ""
            at = data.find(b"<", i)
            if at < 0:
                return len(data)
            self._tag_start = self._base + at
            whole = _WHOLE_COMMENT.match(data, at) if data.startswith(b"<!--", at) else None
            if whole is None:
                whole = _WHOLE_TAG.match(data, at)
                if whole is None or whole.group(2).lower() in _READ_ATTRIBUTES:
                    self._state = State.TAG_OPEN  # byte by byte
                    return at + 1
                self._whole_tag(whole)
            i = whole.end()
            if self._state is not State.DATA or self.found is not None:
                return i

    def _whole_tag(self, whole: re.Match[bytes]) -> None:
        end, name = bool(whole.group(1)), whole.group(2).lower()[: MAX_NAME + 1]
        if end or name in _CONTEXT_TAGS or self.context.open:
            self._begin_tag(end=end, name=name)
            self._name_complete()
            if self.found is None:
                self._closes_itself = whole.group(3).endswith(b"/")
                self._emit()

    def _tag_open(self, data: bytes, i: int) -> int:
        c = data[i]
        if c == 0x21:  # !
            self._state, self._word = State.MARKUP_OPEN, b""
            return i + 1
        if c == 0x2F:  # /
            self._state = State.END_TAG_OPEN
            return i + 1
        if is_alpha(c):
            self._begin_tag(end=False)
            return i
        self._state = State.BOGUS_COMMENT if c == 0x3F else State.DATA  # `<?` is a bogus comment
        return i

    def _end_tag_open(self, data: bytes, i: int) -> int:
        c = data[i]
        if is_alpha(c):
            self._begin_tag(end=True)
            return i
        if c == 0x3E:  # `</>` is nothing
            self._state = State.DATA
            return i + 1
        self._state = State.BOGUS_COMMENT
        return i

    def _begin_tag(self, *, end: bool, name: bytes = b"") -> None:
        self._state = State.TAG_NAME
        self._end_tag, self._closes_itself = end, False
        self._name, self._attributes = name, {}

    def _tag_name(self, data: bytes, i: int) -> int:
        match = _NAME_END.search(data, i)
        stop = match.start() if match else len(data)
        if len(self._name) <= MAX_NAME:
            self._name += data[i:stop].lower()
        if match is None:
            return stop
        self._name_complete()
        return self._after_name(data[stop], stop)

    def _name_complete(self) -> None:
        if self._end_tag and self._name == _BODY and self.candidate is not None:
            self.found = self._tag_start

    def _after_name(self, c: int, i: int) -> int:
        """The byte that ended a tag's name (whitespace, `/` or `>`) at `i`."""
        if c == 0x3E:
            self._emit()
        else:
            self._state = State.SELF_CLOSING if c == 0x2F else State.BEFORE_ATTRIBUTE_NAME
        return i + 1

    def _emit(self) -> None:
        """A whole tag: the tree builder's part, then the state its content is read in."""
        self._finish_attribute()
        self._state = State.DATA
        name = self._name
        if self._end_tag:
            self.context.end(name)
            return
        if not self.context.start(name, self._attributes, self._closes_itself):
            return  # SVG or MathML: no raw text there
        if name == b"script":
            self._begin_text(name, State.SCRIPT)
        elif name in RAWTEXT or name in RCDATA:
            self._begin_text(name, State.TEXT)
        elif name == b"plaintext":
            self._state = State.PLAINTEXT
        elif name == b"frameset" and not self.context.open:
            self.unsafe = "it is a <frameset> page, which has no body for a script"
        elif name == b"meta":
            self._check_meta()

    def _begin_text(self, name: bytes, state: State) -> None:
        self._text_name, self._state = name, state

    def _check_meta(self) -> None:
        charset = self._attributes.get(b"charset")
        if charset is None and self._attributes.get(b"http-equiv", b"").lower() == b"content-type":
            match = _CHARSET_PARAM.search(self._attributes.get(b"content", b""))
            charset = match.group(1) if match else None
        if charset is not None and UNSAFE_CHARSETS.search(charset):
            self.unsafe = f"its <meta> names charset {charset.decode('ascii', 'replace').strip()}"
