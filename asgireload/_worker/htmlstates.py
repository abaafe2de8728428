"""The tokenizer states of comments, CDATA sections, raw text, RCDATA and script data (with its
escapes), as a base of `HtmlScanner` (htmlscan.py): each state is a method that reads from index
`i` of a chunk and returns where it stopped, having switched state or not. The standard's names.
"""

from __future__ import annotations

import enum
import re

from .htmlcontext import RAWTEXT, RCDATA, ContextStack

WHITESPACE = frozenset(b"\t\n\f\r ")
_DASH_OR_LESS_THAN = re.compile(rb"[-<]")
# The end tags of text elements.
_TEXT_ENDS = {
    name: re.compile(rb"</(?i:" + name + rb")[\t\n\f\r />]") for name in (b"script", *RAWTEXT, *RCDATA)
}


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


COMMENT_STATES = frozenset(
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
CDATA_STATES = frozenset({State.CDATA, State.CDATA_BRACKET, State.CDATA_END})
TEXT_STATES = frozenset(
    state
    for state in State
    if state.name.startswith(("TEXT", "SCRIPT", "ESCAPED", "DOUBLE")) or state is State.END_TAG_NAME
)


class TextStates:
    """The states of a scanner between tags; `HtmlScanner` adds the data and tag states."""

    context: ContextStack
    _state: State
    _word: bytes  # the letters after `<!`, `</` or `<` in a text element
    _text_name: bytes  # the element whose raw text or RCDATA is being read
    _text_state: State  # where a `</` in text that is not its end tag goes back to

    def _begin_tag(self, *, end: bool, name: bytes = b"") -> None:
        raise NotImplementedError

    def _after_name(self, c: int, i: int) -> int:
        raise NotImplementedError

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
        if is_alpha(c) and len(self._word) < len(self._text_name):
            self._word += data[i : i + 1].lower()
            return i + 1
        if self._word == self._text_name and (c in WHITESPACE or c in (0x2F, 0x3E)):
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
        if is_alpha(data[i]):
            self._state, self._word = State.DOUBLE_ESCAPE_START, b""
            return i
        return self._maybe_end_tag(data, i, State.ESCAPED)

    def _double_escape_start(self, data: bytes, i: int) -> int:
        return self._script_word(data, i, State.DOUBLE_ESCAPED, State.ESCAPED)

    def _script_word(self, data: bytes, i: int, if_script: State, otherwise: State) -> int:
        """Letters after `<` or `</` in an escaped script: the word `script` switches the escape."""
        c = data[i]
        if is_alpha(c):
            if len(self._word) <= len(b"script"):
                self._word += data[i : i + 1].lower()
            return i + 1
        if c in WHITESPACE or c in (0x2F, 0x3E):
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


def is_alpha(c: int) -> bool:
    return 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A
