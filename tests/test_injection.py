"""Where the live-reload tag goes in a page, as a browser reads it (pure units, no server).

Each page below marks with `|` the one place where the tag must go (none: the page must pass
untouched). Every page is fed whole, split in two at every byte, and byte by byte: a tag, a
comment or an attribute cut across chunks is followed the same.
"""

from __future__ import annotations

import pytest

from asgireload._worker import injection
from asgireload._worker.htmlscan import HtmlScanner

TAG = b"<script src=/x></script>"


def _splits(page: bytes) -> list[list[bytes]]:
    """The page whole (then an empty last chunk), cut in two at every byte, and byte by byte."""
    splits = [[page], [page, b""]]
    splits += [[page[:at], page[at:]] for at in range(1, len(page))]
    if len(page) > 1:
        splits.append([bytes([c]) for c in page])
    return splits


def inject(chunks: list[bytes], *, hold_all: bool = False) -> tuple[bytes, injection.BodyInjector]:
    injector = injection.BodyInjector(TAG, hold_all=hold_all)
    sent = b"".join(injector.feed(c, last=i == len(chunks) - 1) for i, c in enumerate(chunks))
    return sent, injector


def check(marked: bytes, *, why_not: str | None = None) -> None:
    """The tag goes at `|` in `marked` (or nowhere, for `why_not`), however the page is cut."""
    page, expected = marked.replace(b"|", b""), marked.replace(b"|", TAG)
    assert (b"|" in marked) is (why_not is None)
    for hold_all in (False, True):
        for chunks in _splits(page):
            sent, injector = inject(chunks, hold_all=hold_all)
            assert sent == expected, chunks
            assert injector.inserted is (why_not is None)
            assert injector.why_not == why_not, chunks


# ---------------------------------------------------------------- `</body>` that is no end tag


@pytest.mark.parametrize(
    "marked",
    [
        # in a script: strings, comments, its own escaped and double-escaped states
        b'<body><script>var s = "</body>";</script>ok|</body>',
        b"<head><script>// </body>\n</script></head><body>|</body>",
        b'<body><script><!-- "</body>" --></script>|</body>',
        b'<body><script><!-- <script> </script> "</body>" --></script>|</body>',
        b'<body><script><!--<script>"</script></body>"</script>--></script>|</body>',
        b'<body><script>a = "</scripty></body>";</script>|</body>',
        b'<body><script>x</script foo="</body>">|</body>',
        b'<body><SCRIPT type=module>"</body>"</SCRIPT >|</BODY>',
        b'<body><script/>"</body>"</script>|</body>',  # `/>` does not close a script
        # raw text and RCDATA elements
        b'<body><style>a::after { content: "</body>" }</style>|</body>',
        b"<head><title></body></title></head><body>|</body>",
        b"<body><textarea></body></textarea>|</body>",
        b"<body><TEXTAREA></body></TextArea >|</body>",
        b"<body><textarea></textareax></body></textarea>|</body>",
        b"<body><noscript></body></noscript>|</body>",
        b"<body><iframe></body></iframe>|</body>",
        b"<body><xmp></body></xmp><noembed></body></noembed><noframes></body></noframes>|</body>",
        # comments, bogus comments, doctypes, CDATA in HTML
        b"<body><!-- </body> -->|</body>",
        b"<body><!---- </body> -->|</body>",
        b"<body><!-- -- > </body> --!>|</body>",
        b"<body><!-- <!-- </body> -->|</body>",
        b"<body><!-->|</body>",
        b"<body><!--->|</body>",
        b'<body><?php echo "</body>" ?>|</body>',
        b"<body><![CDATA[ </body> ]]>|</body>",
        b"<!DOCTYPE html><body><!x </body>|</body>",
        # attribute values, however quoted or spaced
        b'<body><div title="</body>"></div>|</body>',
        b"<body><div data-x='</body>'></div>|</body>",
        b'<body><div title = "a > </body>"></div>|</body>',
        b"<body><a title=</body>x</a>|</body>",
        b'<body><img alt="</body>"/>|</body>',
        b'<body><iframe srcdoc="<body></body>"></iframe>|</body>',
        # template content is inert
        b"<body><template><p></body></template>|</body>",
        b"<body><template><template></template></body></template>|</body>",
        # SVG and MathML: no raw text there, CDATA sections, HTML again at integration points
        b"<body><svg><![CDATA[ </body> > ]]></svg>|</body>",
        b'<body><svg><script>"</body>"</script></svg>|</body>',
        b'<body><svg><foreignObject><script>"</body>"</script></foreignObject></svg>|</body>',
        b'<body><math><mi><style>"</body>"</style></mi></math>|</body>',
        b'<body><svg><p><script>"</body>"</script>|</body>',  # a <p> ends the SVG
        b'<body><svg/><script>"</body>"</script>|</body>',
        # the end tag however written, and only the first
        b"<body>x|</BODY >",
        b"<body>x|</Body\n>",
        b"<body>x|</body/>",
        b'<body>x|</body class="a">',
        b"<body><p></bodyx>|</body>",
        b"<body>a|</body>b</body>",
        b"\xef\xbb\xbf<body>utf-8, with its BOM|</body>",
        b'<head><meta charset="utf-8"></head><body>|</body>',
    ],
)
def test_the_tag_goes_before_the_real_end_of_the_body(marked: bytes) -> None:
    check(marked)


@pytest.mark.parametrize(
    "marked",
    [
        b"<p>a fragment|",
        b"<html><body>no end tag|",
        b"<html><body>x</html>|",  # content after </html> goes into the body: a running script
        b"<p>ends with a lone <|",
        b"<body><template></template>|",
        b"<body><svg></svg>|",
        b"|",
    ],
)
def test_without_an_end_tag_the_tag_goes_at_the_end_if_that_is_safe(marked: bytes) -> None:
    check(marked)


@pytest.mark.parametrize(
    ("page", "why_not"),
    [
        (b"<body><script>var s = '</body>';", "it ends inside <script>"),
        (b"<body><style>", "it ends inside <style>"),
        (b"<body><textarea></body>", "it ends inside <textarea>"),
        (b"<body><!-- </body> ", "it ends inside a comment"),
        (b"<body><!", "it ends inside a comment"),
        (b'<body><div title="</body>', "it ends inside a tag"),
        (b"<body></", "it ends inside a tag"),
        (b"<body><template></body>", "it ends inside <template>"),
        (b"<body><svg><![CDATA[ </body> ", "it ends inside a CDATA section"),
        (b"<body><svg></body>", "it ends inside <svg>"),
        (b"<body><plaintext></body>", "everything after its <plaintext> is text"),
        (b"<frameset><textarea><!--</body>", "it is a <frameset> page, which has no body for a script"),
        # encodings in which an ASCII tag is no text
        (b"\xff\xfe<\x00b\x00o\x00d\x00y\x00>\x00", "it starts with a UTF-16 byte-order mark"),
        (b"\xfe\xff\x00<\x00b\x00o\x00d\x00y\x00>", "it starts with a UTF-16 byte-order mark"),
        (b"<\x00b\x00o\x00d\x00y\x00>\x00", "it starts with NUL bytes (UTF-16 or UTF-32)"),
        (b"\x00\x00\xfe\xff", "it starts with NUL bytes (UTF-16 or UTF-32)"),
        (b'<meta charset="UTF-16"></body>', "its <meta> names charset UTF-16"),
        (b"<meta charset=utf-16le></body>", "its <meta> names charset utf-16le"),
        (
            b'<meta http-equiv="Content-Type" content="text/html; charset=ISO-2022-JP"></body>',
            "its <meta> names charset ISO-2022-JP",
        ),
    ],
)
def test_a_page_with_no_safe_place_passes_untouched_and_says_why(page: bytes, why_not: str) -> None:
    check(page, why_not=why_not)


def test_a_meta_in_a_comment_or_a_second_charset_attribute_is_no_charset() -> None:
    check(b'<!-- <meta charset="utf-16"> --><body>|</body>')
    check(b'<meta charset="utf-8" charset="utf-16"><body>|</body>')
    check(b'<svg><meta charset="utf-16"/></svg></body>', why_not="its <meta> names charset utf-16")  # HTML


# ---------------------------------------------------------------- streaming: what waits, what goes


def test_only_what_may_begin_the_end_tag_waits_for_the_next_chunk() -> None:
    injector = injection.BodyInjector(TAG)
    assert injector.feed(b"<html><body>first part ", last=False) == b"<html><body>first part "
    assert injector.feed(b"second</bo", last=False) == b"second"  # "</bo" may be the tag: held back
    assert injector.holding
    assert injector.feed(b"dy>", last=False) == TAG + b"</body>"
    assert injector.feed(b"</html>", last=True) == b"</html>"


@pytest.mark.parametrize("tail", [b"<script>'</bo", b"<!-- </bo", b'<a title="</bo', b"<p></", b"</p"])
def test_nothing_waits_where_the_end_tag_cannot_begin(tail: bytes) -> None:
    injector = injection.BodyInjector(TAG)
    held = 0 if tail != b"<p></" else 2
    assert injector.feed(b"<body>" + tail, last=False) == (b"<body>" + tail)[: len(tail) + 6 - held]


def test_a_released_tail_gives_its_tag_up_and_the_script_goes_at_the_end() -> None:
    injector = injection.BodyInjector(TAG)
    assert injector.feed(b"<body>tick <", last=False) == b"<body>tick "
    assert injector.release() == b"<"
    assert injector.feed(b"/body>", last=False) == b"/body>"  # that `</body>` went out already
    assert injector.feed(b"", last=True) == TAG


def test_with_a_length_nothing_goes_until_it_is_decided() -> None:
    injector = injection.BodyInjector(TAG, hold_all=True)
    assert injector.feed(b"<body>one ", last=False) == b""
    assert not injector.done
    assert injector.feed(b"two</body>", last=False) == b"<body>one two" + TAG + b"</body>"
    assert injector.done
    assert injector.inserted
    assert injector.feed(b"</html>", last=True) == b"</html>"


def test_an_unsafe_encoding_is_decided_at_once() -> None:
    injector = injection.BodyInjector(TAG, hold_all=True)
    assert injector.feed(b"\xff\xfe<\x00", last=False) == b"\xff\xfe<\x00"
    assert injector.done
    assert not injector.inserted
    assert injector.feed(b"b\x00", last=True) == b"b\x00"


def test_a_long_page_is_scanned_to_its_end_in_one_chunk() -> None:
    page = b"<body>" + b'<div class="row"><a href="/x?a=1&b=2">link</a> text</div>\n' * 20000 + b"</body>"
    scanner = HtmlScanner()
    assert scanner.feed(page) == len(page) - len(b"</body>")


# ---------------------------------------------------------------- which responses are pages


@pytest.mark.parametrize(
    ("status", "headers", "reason"),
    [
        (200, [(b"content-type", b"application/json")], "not text/html"),
        (206, [(b"content-type", b"text/html")], "status 206"),
        (304, [(b"content-type", b"text/html")], "status 304"),
        (204, [(b"content-type", b"text/html")], "status 204"),
        (101, [(b"content-type", b"text/html")], "status 101"),
        (200, [], "no single content-type"),
        (200, [(b"content-type", b"text/html"), (b"content-range", b"bytes 0-1/2")], "a range"),
        (
            200,
            [(b"content-type", b"text/html"), (b"content-disposition", b'attachment; filename="a.html"')],
            "a download (Content-Disposition: attachment)",
        ),
        (
            200,
            [(b"content-type", b"text/html"), (b"Content-Disposition", b"x-unknown")],
            "a download (Content-Disposition: x-unknown)",
        ),
    ],
)
def test_responses_that_are_not_pages_are_left_alone(
    status: int, headers: list[tuple[bytes, bytes]], reason: str
) -> None:
    assert injection.why_not_html(status, headers) == reason


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([(b"content-encoding", b"gzip")], "it is compressed (Content-Encoding: gzip)"),
        ([(b"content-encoding", b"br")], "it is compressed (Content-Encoding: br)"),
        ([(b"cache-control", b"no-cache, No-Transform")], "its Cache-Control says no-transform"),
        ([(b"content-length", b"ten")], "its Content-Length is not a number ('ten')"),
    ],
)
def test_pages_that_must_pass_as_they_are_say_why(headers: list[tuple[bytes, bytes]], reason: str) -> None:
    page = [(b"content-type", b"text/html"), *headers]
    assert injection.why_not_html(200, page) is None
    assert injection.why_untouched(page) == reason


@pytest.mark.parametrize(
    "charset", ["UTF-16", "utf-16le", "utf-32", "ucs-2", "utf-7", "ISO-2022-JP", "hz-gb-2312", "unicode"]
)
def test_a_content_type_in_a_charset_that_does_not_keep_ascii_is_left_alone(charset: str) -> None:
    headers = [(b"content-type", f"text/html; charset={charset}".encode())]
    assert injection.why_untouched(headers) == f"its Content-Type names charset {charset}"


@pytest.mark.parametrize("charset", ["utf-8", "iso-8859-1", "windows-1252", "shift_jis", "euc-jp", "gb18030"])
def test_ascii_compatible_charsets_get_the_script(charset: str) -> None:
    headers = [(b"content-type", f"text/html; charset={charset}".encode())]
    assert injection.why_untouched(headers) is None
    assert injection.why_not_html(200, [*headers, (b"content-disposition", b"inline")]) is None
