"""Where each request ends in a stream of HTTP/1.1 bytes: the head up to its empty line, then
Content-Length or chunked framing. No I/O, no parsing beyond the framing.

httptools parses everything it is given, so a draining connection gives it one request at a time
(httptoolsprotocol.py): what follows the request in flight waits unparsed, and travels with the
connection when it is handed over.
"""

from __future__ import annotations

MAX_HEAD = 64 * 1024  # bytes of a request head kept while waiting for its end
MAX_LINE = 8 * 1024  # bytes of a chunk-size or trailer line
MAX_METHOD = 32


class FramingError(Exception):
    """The bytes do not frame as HTTP/1.1 requests (the parser will say how)."""


_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER = range(5)


class RequestFraming:
    """Where each request ends in a stream of HTTP/1.1 requests; no I/O, no parsing beyond framing."""

    def __init__(self) -> None:
        self._state = _HEAD
        self._remaining = 0
        self._line = bytearray()

    def take(self, data: bytes | bytearray) -> tuple[int, bool]:
        """How many bytes from the start of `data` belong to the request under way, and whether
        they end it. (0, False): the head is not complete yet. Raises FramingError."""
        used = 0
        while used < len(data):
            if self._state == _HEAD:
                start = used
                while data.startswith(b"\r\n", start):  # empty lines before a request line are allowed
                    start += 2
                end = data.find(b"\r\n\r\n", start)
                if end < 0:
                    if len(data) - start > MAX_HEAD:
                        raise FramingError(f"no end of the request head in {len(data) - start} bytes")
                    _check_partial_head(bytes(data[start:]))  # else the parser would never see it
                    return used, False
                used = end + 4
                chunked, length = _body_framing(bytes(data[start:end]))
                if chunked:
                    self._state = _CHUNK_SIZE
                elif length:
                    self._state, self._remaining = _BODY, length
                else:
                    return used, True
            elif self._state in (_BODY, _CHUNK_DATA):
                step = min(self._remaining, len(data) - used)
                used += step
                self._remaining -= step
                if not self._remaining:
                    if self._state == _BODY:
                        self._state = _HEAD
                        return used, True
                    self._state = _CHUNK_SIZE
            else:
                newline = data.find(b"\n", used)
                if newline < 0:
                    self._line += data[used:]
                    if len(self._line) > MAX_LINE:
                        raise FramingError(f"a chunk line longer than {MAX_LINE} bytes")
                    return len(data), False
                self._line += data[used : newline + 1]
                used = newline + 1
                line = bytes(self._line)
                self._line.clear()
                if self._state == _TRAILER:
                    if line == b"\r\n":
                        self._state = _HEAD
                        return used, True
                    continue
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise FramingError(f"a chunk size that is not hexadecimal: {line[:40]!r}") from None
                if size:
                    self._state, self._remaining = _CHUNK_DATA, size + 2  # the data, then CRLF
                else:
                    self._state = _TRAILER
        return used, False


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_CONTROL = frozenset(range(32)) - {9, 10, 13}


def _check_partial_head(head: bytes) -> None:
    """Raise FramingError for a head that can never end well (a TLS hello, bare newlines,
    control bytes), so the parser answers it with 400 now instead of waiting for more."""
    head = head.lstrip(b"\r\n")  # empty lines may come first, the last one maybe half read
    method, space, _ = head.partition(b" ")
    if (not space and len(method) > MAX_METHOD) or any(
        byte not in _TOKEN for byte in method[: MAX_METHOD + 1]
    ):
        raise FramingError(f"not an HTTP request line: {head[:40]!r}")
    if any(byte in _CONTROL for byte in head) or b"\n" in head.replace(b"\r\n", b""):
        raise FramingError(f"a control byte or a bare newline in a request head: {head[:40]!r}")


def _body_framing(head: bytes) -> tuple[bool, int]:
    """(chunked, content length) from a request head."""
    chunked, length = False, 0
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        if name == b"content-length":
            if not value.strip().isdigit():
                raise FramingError(f"a Content-Length that is not a number: {value[:40]!r}")
            length = int(value.strip())
        elif name == b"transfer-encoding":
            chunked = value.strip().lower().endswith(b"chunked")
    return chunked, 0 if chunked else length
