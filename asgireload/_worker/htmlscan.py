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
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable

# Charsets in which the ASCII bytes of a tag do not stand for ASCII text (every two bytes are one
# character, or escapes switch to a 7-bit double-byte mode): adding ASCII bytes would break them.
UNSAFE_CHARSETS = re.compile(
    rb"utf-?(16|32)|ucs-?[24]|utf-?7|iso-?2022|hz-gb|^\s*(cs)?unicode", re.IGNORECASE
)
_WHITESPACE = frozenset(b"\t\n\f\r ")
_NAME_END = re.compile(rb"[\t\n\f\r />]")
_UNQUOTED_END = re.compile(rb"[\t\n\f\r >]")
_DASH_OR_LESS_THAN = re.compile(rb"[-<]")
# Tags whose attributes matter here: read by the tag states, where attributes are kept.
_READ_ATTRIBUTES = frozenset({b"meta", b"font", b"annotation-xml"})
_CHARSET_PARAM = re.compile(rb"charset\s*=\s*[\"']?([^\s\"';]+)", re.IGNORECASE)
_MAX_NAME = 32  # longer names match nothing this scanner looks for
_MAX_VALUE = 256  # of attribute values: only charsets and encodings are read
_BODY = b"body"

# The tree builder's rules that change the context of what follows a tag.
_RAWTEXT = frozenset({b"style", b"xmp", b"iframe", b"noembed", b"noframes", b"noscript"})
_RCDATA = frozenset({b"title", b"textarea"})
_FOREIGN_ROOTS = frozenset({b"svg", b"math"})
_BREAKOUT = frozenset(
    b"b big blockquote body br center code dd div dl dt em embed h1 h2 h3 h4 h5 h6 head hr i img "
    b"li listing menu meta nobr ol p pre ruby s small span strong strike sub sup table tt u ul var".split()
)
_INTEGRATION_POINTS = {
    b"svg": frozenset({b"foreignobject", b"desc", b"title"}),
    b"math": frozenset({b"mi", b"mo", b"mn", b"ms", b"mtext"}),
}
_HTML_ENCODINGS = frozenset({b"text/html", b"application/xhtml+xml"})
# Elements that never stay open (no end tag).
_VOID = frozenset(
    b"area base basefont bgsound br col embed frame hr img input keygen link meta param source "
    b"track wbr".split()
)
# Start tags that change the context or the state, in HTML; any other only matters in SVG or MathML.
_CONTEXT_TAGS = frozenset(
    {b"script", b"plaintext", b"template", b"frameset", *_RAWTEXT, *_RCDATA, *_FOREIGN_ROOTS}
)

# A whole tag in the common form (attributes separated by whitespace or `/`, values quoted or not),
# matched where the tokenizer's tag states would take it, to the same end. Anything else (a tag
# cut by the chunk's end, `a="x"b`, `a=>`) is left to those states, byte by byte.
_ATTRIBUTES = (
    rb"(?:[\t\n\f\r /]+[^\t\n\f\r />=][^\t\n\f\r />=]*"
    rb"(?:[\t\n\f\r ]*=[\t\n\f\r ]*(?:\"[^\"]*\"|'[^']*'|[^\t\n\f\r >\"'][^\t\n\f\r >]*))?)*"
)
_WHOLE_TAG = re.compile(rb"<(/?)([a-zA-Z][^\t\n\f\r />]*)" + _ATTRIBUTES + rb"([\t\n\f\r /]*)>")
# A whole comment (`<!-->` and `<!--->` end at once) and the end tags of text elements.
_WHOLE_COMMENT = re.compile(rb"<!--(?:-?>|.*?--!?>)", re.DOTALL)
_TEXT_ENDS = {
    name: re.compile(rb"</(?i:" + name + rb")[\t\n\f\r />]") for name in (b"script", *_RAWTEXT, *_RCDATA)
}
# Outside any context element: text, lone `<`s, and whole tags that change nothing, at C speed.
_SPECIAL_NAMES = b"|".join(sorted(_CONTEXT_TAGS | _READ_ATTRIBUTES | {b"/body"}))
_NOTHING_CHANGES = re.compile(
    rb"(?:[^<]++|<(?=[^a-zA-Z/!?])|<(?!(?i:"
    + _SPECIAL_NAMES
    + rb")[\t\n\f\r />])/?[a-zA-Z][^\t\n\f\r />]*"
    + _ATTRIBUTES
    + rb"[\t\n\f\r /]*>)*+"
)


class State(enum.IntEnum):
    """The tokenizer states this scanner tells apart (the standard's names, abridged; in the
    escaped script states, "escaped" stands for "script data escaped")."""

    DATA = enum.auto()
    TAG_OPEN = enum.auto()
    END_TAG_OPEN = enum.auto()
    TAG_NAME = enum.auto()
    BEFORE_ATTRIBUTE_NAME = enum.auto()
    ATTRIBUTE_NAME = enum.auto()
    AFTER_ATTRIBUTE_NAME = enum.auto()
    BEFORE_ATTRIBUTE_VALUE = enum.auto()
    ATTRIBUTE_VALUE_DOUBLE = enum.auto()
    ATTRIBUTE_VALUE_SINGLE = enum.auto()
    ATTRIBUTE_VALUE_UNQUOTED = enum.auto()
    AFTER_ATTRIBUTE_VALUE = enum.auto()
    SELF_CLOSING = enum.auto()
    MARKUP_OPEN = enum.auto()
    COMMENT_START = enum.auto()
    COMMENT_START_DASH = enum.auto()
    COMMENT = enum.auto()
    COMMENT_END_DASH = enum.auto()
    COMMENT_END = enum.auto()
    COMMENT_END_BANG = enum.auto()
    BOGUS_COMMENT = enum.auto()
    CDATA = enum.auto()
    CDATA_BRACKET = enum.auto()
    CDATA_END = enum.auto()
    TEXT = enum.auto()
    TEXT_LESS_THAN = enum.auto()
    SCRIPT = enum.auto()
    SCRIPT_LESS_THAN = enum.auto()
    SCRIPT_ESCAPE_START = enum.auto()
    SCRIPT_ESCAPE_START_DASH = enum.auto()
    ESCAPED = enum.auto()
    ESCAPED_DASH = enum.auto()
    ESCAPED_DASH_DASH = enum.auto()
    ESCAPED_LESS_THAN = enum.auto()
    DOUBLE_ESCAPE_START = enum.auto()
    DOUBLE_ESCAPED = enum.auto()
    DOUBLE_ESCAPED_DASH = enum.auto()
    DOUBLE_ESCAPED_DASH_DASH = enum.auto()
    DOUBLE_ESCAPED_LESS_THAN = enum.auto()
    DOUBLE_ESCAPE_END = enum.auto()
    END_TAG_NAME = enum.auto()  # in a text element: `</` and maybe its own name
    PLAINTEXT = enum.auto()


_COMMENTS = frozenset(
    {
        State.MARKUP_OPEN,
        State.COMMENT_START,
        State.COMMENT_START_DASH,
        State.COMMENT,
        State.COMMENT_END_DASH,
        State.COMMENT_END,
        State.COMMENT_END_BANG,
        State.BOGUS_COMMENT,
    }
)
_CDATA = frozenset({State.CDATA, State.CDATA_BRACKET, State.CDATA_END})
_TEXTS = frozenset(
    state
    for state in State
    if state.name.startswith(("TEXT", "SCRIPT", "ESCAPED", "DOUBLE")) or state is State.END_TAG_NAME
)


class ContextStack:
    """The open elements that change what a tag means: `<template>`, and `<svg>`/`<math>` with
    what is inside them (integration points such as `foreignObject`, HTML elements within those),
    each as (name, namespace, whether it is an integration point). Empty: a tag is a new element
    of the page itself."""

    def __init__(self) -> None:
        self.open: list[tuple[bytes, bytes, bool]] = []

    @property
    def foreign(self) -> bool:
        """Whether start tags are SVG or MathML here (no raw text, no HTML elements)."""
        return bool(self.open) and self.open[-1][1] != b"html" and not self.open[-1][2]

    @property
    def cdata(self) -> bool:
        """Whether `<![CDATA[` begins a CDATA section here: the current element is SVG or MathML."""
        return bool(self.open) and self.open[-1][1] != b"html"

    def start(self, name: bytes, attributes: dict[bytes, bytes], self_closing: bool) -> bool:
        """A start tag; returns whether it was parsed as HTML (so that it may begin raw text)."""
        if self.foreign:
            if name in _BREAKOUT or (name == b"font" and {b"color", b"face", b"size"} & attributes.keys()):
                while self.foreign:
                    self.open.pop()
            else:
                namespace = self.open[-1][1]
                if not self_closing:
                    self.open.append((name, namespace, self._integration_point(namespace, name, attributes)))
                return False
        if name in _FOREIGN_ROOTS and not self_closing:
            self.open.append((name, name, False))
        elif name == b"template" or (name not in _VOID and any(ns != b"html" for _, ns, _ in self.open)):
            self.open.append((name, b"html", False))  # inside SVG or MathML, for what CDATA means
        return True

    def end(self, name: bytes) -> None:
        """An end tag: the tree builder's walk down the open elements, for those followed here."""
        if self.foreign and name in (b"br", b"p"):
            while self.foreign:
                self.open.pop()
            return
        if name == b"template":  # always closes the nearest template, whatever is inside it
            self._close_nearest(name, lambda frame: False)
            return
        index = len(self.open) - 1
        while index >= 0 and self.open[index][1] != b"html":  # SVG or MathML: any of that name
            if self.open[index][0] == name:
                del self.open[index:]
                return
            index -= 1
        # HTML: the nearest HTML element of that name, unless a template or integration point is
        # in the way (they are "special": the end tag is ignored)
        self._close_nearest(name, lambda frame: frame[0] == b"template" or frame[2], below=index)

    def _close_nearest(
        self, name: bytes, stops: Callable[[tuple[bytes, bytes, bool]], bool], below: int | None = None
    ) -> None:
        start = len(self.open) - 1 if below is None else below
        for index in range(start, -1, -1):
            frame = self.open[index]
            if frame[0] == name and frame[1] == b"html":
                del self.open[index:]
                return
            if stops(frame):
                return

    @staticmethod
    def _integration_point(namespace: bytes, name: bytes, attributes: dict[bytes, bytes]) -> bool:
        if name in _INTEGRATION_POINTS.get(namespace, ()):
            return True
        return (
            namespace == b"math"
            and name == b"annotation-xml"
            and attributes.get(b"encoding", b"").lower() in _HTML_ENCODINGS
        )


class HtmlScanner:
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
    def state(self) -> State:
        return self._state

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
        if self._state in _COMMENTS:
            return "it ends inside a comment"
        if self._state in _CDATA:
            return "it ends inside a CDATA section"
        if self._state in _TEXTS:
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
        end, name = bool(whole.group(1)), whole.group(2).lower()[: _MAX_NAME + 1]
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
        if _is_alpha(c):
            self._begin_tag(end=False)
            return i
        self._state = State.BOGUS_COMMENT if c == 0x3F else State.DATA  # `<?` is a bogus comment
        return i

    def _end_tag_open(self, data: bytes, i: int) -> int:
        c = data[i]
        if _is_alpha(c):
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
        if len(self._name) <= _MAX_NAME:
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

    def _before_attribute_name(self, data: bytes, i: int) -> int:
        c = data[i]
        if c in _WHITESPACE:
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
        if c in _WHITESPACE or c in (0x2F, 0x3E):
            self._state = State.AFTER_ATTRIBUTE_NAME
            return i
        if c == 0x3D:
            self._state = State.BEFORE_ATTRIBUTE_VALUE
            return i + 1
        if self._attribute is not None and len(self._attribute) <= _MAX_NAME:
            self._attribute += data[i : i + 1].lower()
        return i + 1

    def _after_attribute_name(self, data: bytes, i: int) -> int:
        c = data[i]
        if c in _WHITESPACE:
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
        if c in _WHITESPACE:
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
        if len(self._value) <= _MAX_VALUE:
            self._value += part[:_MAX_VALUE]

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
        if c in _WHITESPACE or c in (0x2F, 0x3E):
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
        elif name in _RAWTEXT or name in _RCDATA:
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

    # ------------------------------------------------------------------ comments and CDATA

    def _markup_open(self, data: bytes, i: int) -> int:
        word = self._word + data[i : i + 1]
        if b"--".startswith(word):
            self._word = word
            if word == b"--":
                self._state = State.COMMENT_START
        elif b"doctype".startswith(word.lower()) or b"[CDATA[".startswith(word):
            self._word = word
            if word == b"[CDATA[" and self.context.cdata:
                self._state = State.CDATA
            elif word.lower() == b"doctype" or word == b"[CDATA[":
                self._state = State.BOGUS_COMMENT  # a doctype ends at the first `>` too
        else:
            self._state = State.BOGUS_COMMENT
            return i  # none of the three: the comment holds this byte (no `>` was taken so far)
        return i + 1

    def _comment_start(self, data: bytes, i: int) -> int:
        return self._comment_step(data[i], i, State.COMMENT_START_DASH, State.COMMENT)

    def _comment_start_dash(self, data: bytes, i: int) -> int:
        return self._comment_step(data[i], i, State.COMMENT_END, State.COMMENT)

    def _comment_step(self, c: int, i: int, after_dash: State, otherwise: State) -> int:
        if c == 0x2D:
            self._state = after_dash
            return i + 1
        if c == 0x3E:  # `<!-->` and `<!--->` end at once
            self._state = State.DATA
            return i + 1
        self._state = otherwise
        return i

    def _comment(self, data: bytes, i: int) -> int:
        at = data.find(b"-", i)
        if at < 0:
            return len(data)
        self._state = State.COMMENT_END_DASH
        return at + 1

    def _comment_end_dash(self, data: bytes, i: int) -> int:
        self._state = State.COMMENT_END if data[i] == 0x2D else State.COMMENT
        return i + 1 if data[i] == 0x2D else i

    def _comment_end(self, data: bytes, i: int) -> int:
        c = data[i]
        if c == 0x3E:
            self._state = State.DATA
        elif c == 0x21:
            self._state = State.COMMENT_END_BANG
        elif c != 0x2D:
            self._state = State.COMMENT
            return i
        return i + 1

    def _comment_end_bang(self, data: bytes, i: int) -> int:
        return self._comment_step(data[i], i, State.COMMENT_END_DASH, State.COMMENT)

    def _bogus_comment(self, data: bytes, i: int) -> int:
        at = data.find(b">", i)
        if at < 0:
            return len(data)
        self._state = State.DATA
        return at + 1

    def _cdata(self, data: bytes, i: int) -> int:
        at = data.find(b"]", i)
        if at < 0:
            return len(data)
        self._state = State.CDATA_BRACKET
        return at + 1

    def _cdata_bracket(self, data: bytes, i: int) -> int:
        self._state = State.CDATA_END if data[i] == 0x5D else State.CDATA
        return i + 1 if data[i] == 0x5D else i

    def _cdata_end(self, data: bytes, i: int) -> int:
        c = data[i]
        if c == 0x5D:
            return i + 1
        self._state = State.DATA if c == 0x3E else State.CDATA
        return i + 1 if c == 0x3E else i

    # ------------------------------------------------------------------ raw text, RCDATA, script

    def _text(self, data: bytes, i: int) -> int:
        end = _TEXT_ENDS[self._text_name].search(data, i)
        if end is not None:  # no escapes here: the first is the end, its tag read as in data
            self._state = State.DATA
            return end.start()
        return self._last_less_than(data, i, State.TEXT_LESS_THAN)

    def _last_less_than(self, data: bytes, i: int, state: State) -> int:
        """No whole end tag in the rest of `data`: only a `<` near its end may begin one."""
        at = data.rfind(b"<", max(i, len(data) - len(self._text_name) - 2))
        if at < 0:
            return len(data)
        self._state = state
        return at + 1

    def _text_less_than(self, data: bytes, i: int) -> int:
        return self._maybe_end_tag(data, i, State.TEXT)

    def _maybe_end_tag(self, data: bytes, i: int, back: State) -> int:
        """After a `<` in text: `/` may begin the element's end tag; else the text goes on."""
        if data[i] == 0x2F:
            self._state, self._word, self._text_state = State.END_TAG_NAME, b"", back
            return i + 1
        self._state = back
        return i

    def _end_tag_name(self, data: bytes, i: int) -> int:
        c = data[i]
        if _is_alpha(c) and len(self._word) < len(self._text_name):
            self._word += data[i : i + 1].lower()
            return i + 1
        if self._word == self._text_name and (c in _WHITESPACE or c in (0x2F, 0x3E)):
            self._begin_tag(end=True, name=self._word)
            return self._after_name(c, i)
        self._state = self._text_state  # not its end tag: text, this byte included
        return i

    def _script(self, data: bytes, i: int) -> int:
        end = _TEXT_ENDS[b"script"].search(data, i)
        escape = data.find(b"<!--", i, end.start() if end is not None else len(data))
        if escape >= 0:  # the escaped states decide which `</script>` ends it
            self._state = State.SCRIPT_LESS_THAN
            return escape + 1
        if end is not None:
            self._state = State.DATA
            return end.start()
        return self._last_less_than(data, i, State.SCRIPT_LESS_THAN)

    def _script_less_than(self, data: bytes, i: int) -> int:
        if data[i] == 0x21:  # `<!`
            self._state = State.SCRIPT_ESCAPE_START
            return i + 1
        return self._maybe_end_tag(data, i, State.SCRIPT)

    def _script_escape_start(self, data: bytes, i: int) -> int:
        return self._dash_or(data, i, State.SCRIPT_ESCAPE_START_DASH, State.SCRIPT)

    def _script_escape_start_dash(self, data: bytes, i: int) -> int:
        return self._dash_or(data, i, State.ESCAPED_DASH_DASH, State.SCRIPT)

    def _dash_or(self, data: bytes, i: int, dash: State, otherwise: State) -> int:
        if data[i] == 0x2D:
            self._state = dash
            return i + 1
        self._state = otherwise
        return i

    def _escaped(self, data: bytes, i: int) -> int:
        return self._escaped_text(data, i, State.ESCAPED_DASH, State.ESCAPED_LESS_THAN)

    def _escaped_text(self, data: bytes, i: int, dash: State, less_than: State) -> int:
        match = _DASH_OR_LESS_THAN.search(data, i)
        if match is None:
            return len(data)
        self._state = dash if data[match.start()] == 0x2D else less_than
        return match.start() + 1

    def _escaped_dash(self, data: bytes, i: int) -> int:
        return self._escaped_after_dash(data, i, State.ESCAPED, State.ESCAPED_DASH_DASH)

    def _escaped_dash_dash(self, data: bytes, i: int) -> int:
        return self._escaped_after_dash(data, i, State.ESCAPED, State.ESCAPED_DASH_DASH)

    def _escaped_after_dash(self, data: bytes, i: int, text: State, dash_dash: State) -> int:
        c = data[i]
        if c == 0x2D:
            self._state = dash_dash
        elif c == 0x3C:
            self._state = State.ESCAPED_LESS_THAN if text is State.ESCAPED else State.DOUBLE_ESCAPED_LESS_THAN
        elif c == 0x3E and self._state in (State.ESCAPED_DASH_DASH, State.DOUBLE_ESCAPED_DASH_DASH):
            self._state = State.SCRIPT  # `-->` ends the escape
        else:
            self._state = text
        return i + 1

    def _escaped_less_than(self, data: bytes, i: int) -> int:
        if _is_alpha(data[i]):
            self._state, self._word = State.DOUBLE_ESCAPE_START, b""
            return i
        return self._maybe_end_tag(data, i, State.ESCAPED)

    def _double_escape_start(self, data: bytes, i: int) -> int:
        return self._script_word(data, i, State.DOUBLE_ESCAPED, State.ESCAPED)

    def _script_word(self, data: bytes, i: int, if_script: State, otherwise: State) -> int:
        """Letters after `<` or `</` in an escaped script: the word `script` switches the escape."""
        c = data[i]
        if _is_alpha(c):
            if len(self._word) <= len(b"script"):
                self._word += data[i : i + 1].lower()
            return i + 1
        if c in _WHITESPACE or c in (0x2F, 0x3E):
            self._state = if_script if self._word == b"script" else otherwise
            return i + 1
        self._state = otherwise
        return i

    def _double_escaped(self, data: bytes, i: int) -> int:
        return self._escaped_text(data, i, State.DOUBLE_ESCAPED_DASH, State.DOUBLE_ESCAPED_LESS_THAN)

    def _double_escaped_dash(self, data: bytes, i: int) -> int:
        return self._escaped_after_dash(data, i, State.DOUBLE_ESCAPED, State.DOUBLE_ESCAPED_DASH_DASH)

    def _double_escaped_dash_dash(self, data: bytes, i: int) -> int:
        return self._escaped_after_dash(data, i, State.DOUBLE_ESCAPED, State.DOUBLE_ESCAPED_DASH_DASH)

    def _double_escaped_less_than(self, data: bytes, i: int) -> int:
        if data[i] == 0x2F:
            self._state, self._word = State.DOUBLE_ESCAPE_END, b""
            return i + 1
        self._state = State.DOUBLE_ESCAPED
        return i

    def _double_escape_end(self, data: bytes, i: int) -> int:
        return self._script_word(data, i, State.ESCAPED, State.DOUBLE_ESCAPED)

    def _plaintext(self, data: bytes, i: int) -> int:
        return len(data)


def _is_alpha(c: int) -> bool:
    return 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A
