"""The part of the HTML tree builder that decides what a tag means where it stands: inside a
`<template>` (inert content) or inside SVG and MathML (foreign content: no raw text, CDATA
sections, integration points where HTML comes back), with no I/O. Used by htmlscan.py.
"""

from __future__ import annotations

from collections.abc import Callable

# The tree builder's rules that change the context of what follows a tag.
RAWTEXT = frozenset({b"style", b"xmp", b"iframe", b"noembed", b"noframes", b"noscript"})
RCDATA = frozenset({b"title", b"textarea"})
FOREIGN_ROOTS = frozenset({b"svg", b"math"})
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
        if name in FOREIGN_ROOTS and not self_closing:
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
