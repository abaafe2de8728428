"""Tests for the page a worker serves while the user's app fails to load."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest

from asgireload.errorpage import ASGIApp, error_app

XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"

FAILURE: dict[str, Any] = {
    "summary": "SyntaxError: invalid syntax (main.py, line 3)",
    "traceback": (
        'Traceback (most recent call last):\n  File "main.py", line 3\n    def broken(:\nSyntaxError'
    ),
    "files": ["main.py", "pkg/models.py"],
    "exit_reason": "exited with code 3",
    "generation": 7,
    "app": "main:app",
}

HOSTILE: dict[str, Any] = {
    "summary": f"ValueError: {XSS}",
    "traceback": f"Traceback (most recent call last):\n  {XSS}\nValueError: {XSS}",
    "files": [f"{XSS}.py"],
    "exit_reason": f"exited {XSS}",
    "generation": 1,
    "app": f"main:{XSS}",
}

HTML = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}

Message = MutableMapping[str, Any]


async def request(app: ASGIApp, method: str = "GET", **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, "/some/page?x=1", **kwargs)


class Recorder:
    """Feeds scripted ASGI messages to the app and records what it sends, in order."""

    def __init__(self, *incoming: Message) -> None:
        self.incoming = list(incoming)
        self.events: list[tuple[str, Message]] = []

    async def receive(self) -> Message:
        if not self.incoming:
            raise AssertionError("the app called receive() more often than the test scripted")
        message = self.incoming.pop(0)
        self.events.append(("received", message))
        return message

    async def send(self, message: Message) -> None:
        self.events.append(("sent", message))

    @property
    def sent(self) -> list[Message]:
        return [message for direction, message in self.events if direction == "sent"]


async def test_html_page_shows_everything_needed_to_fix_the_app() -> None:
    response = await request(error_app(FAILURE, show_details=True), headers=HTML)

    assert response.status_code == 500
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-asgireload"] == "error"
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    assert "<title>main:app failed to load</title>" in page
    assert "SyntaxError: invalid syntax (main.py, line 3)" in page
    assert "exited with code 3" in page
    assert "<code>main.py</code>" in page
    assert "<code>pkg/models.py</code>" in page
    assert re.search(r"<pre>Traceback \(most recent call last\):.*def broken\(:", page, re.DOTALL)
    assert "no need to restart" in page


async def test_html_page_polls_and_reloads_itself() -> None:
    response = await request(error_app(FAILURE, show_details=True), headers=HTML)

    scripts = re.findall(r"<script[^>]*>(.*?)</script>", response.text, re.DOTALL)
    assert len(scripts) == 1
    script = scripts[0]
    assert 'cache: "no-store"' in script
    assert "x-asgireload" in script
    assert "location.reload()" in script
    assert "1000" in script


async def test_plain_text_when_html_is_not_accepted() -> None:
    response = await request(error_app(FAILURE, show_details=True), headers={"accept": "application/json"})

    assert response.status_code == 500
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-asgireload"] == "error"
    body = response.text
    assert body.startswith("main:app failed to load")
    assert "SyntaxError: invalid syntax (main.py, line 3)" in body
    assert "exited with code 3" in body
    assert "  main.py\n" in body
    assert "  pkg/models.py\n" in body
    assert FAILURE["traceback"] in body
    assert "no need to restart" in body
    assert "<" not in body


@pytest.mark.parametrize(
    "accept",
    ["*/*", "text/plain", "text/html;q=0, */*", "application/xhtml+xml"],
)
async def test_only_an_explicit_text_html_gets_the_html_page(accept: str) -> None:
    response = await request(error_app(FAILURE, show_details=True), headers={"accept": accept})

    assert response.headers["content-type"] == "text/plain; charset=utf-8"


async def test_html_escapes_everything_taken_from_the_failure() -> None:
    response = await request(error_app(HOSTILE, show_details=True), headers=HTML)

    page = response.text
    assert XSS not in page
    assert "alert(1)</script>" not in page
    assert page.count(XSS_ESCAPED) >= 5  # summary, traceback (twice), file, exit reason, app
    assert f"<code>{XSS_ESCAPED}.py</code>" in page
    assert f"<title>main:{XSS_ESCAPED} failed to load</title>" in page
    # The only script on the page is the constant poller; no failure data reaches it.
    (script,) = re.findall(r"<script[^>]*>(.*?)</script>", page, re.DOTALL)
    assert "alert" not in script


async def test_html_escapes_quotes_from_the_failure() -> None:
    failure = dict(FAILURE, summary="KeyError: 'x' \"y\"", files=['a"b.py'])
    response = await request(error_app(failure, show_details=True), headers=HTML)

    assert "&#x27;x&#x27; &quot;y&quot;" in response.text
    assert "a&quot;b.py" in response.text
    assert 'a"b.py' not in response.text


async def test_plain_text_is_not_escaped_and_not_sniffed_as_html() -> None:
    response = await request(error_app(HOSTILE, show_details=True))

    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert f"ValueError: {XSS}" in response.text


@pytest.mark.parametrize("headers", [HTML, {"accept": "*/*"}])
async def test_hidden_details_reveal_only_the_exception_type(headers: dict[str, str]) -> None:
    failure = dict(FAILURE, summary="RuntimeError: password=hunter2 rejected by db.internal")
    response = await request(error_app(failure, show_details=False), headers=headers)

    assert response.status_code == 500
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-asgireload"] == "error"
    body = response.text
    assert "RuntimeError" in body
    for secret in ("hunter2", "db.internal", "Traceback", "def broken", "main.py", "pkg/models.py", "code 3"):
        assert secret not in body, secret
    assert "failed to load" in body
    assert "terminal" in body
    assert "--show-errors" in body


async def test_hidden_details_with_a_summary_that_is_not_an_exception() -> None:
    failure = dict(FAILURE, summary="the worker exited with code 1 while importing /srv/secret/app.py")
    response = await request(error_app(failure, show_details=False), headers=HTML)

    assert "/srv/secret" not in response.text
    assert "exited with code 1" not in response.text
    assert "--show-errors" in response.text


async def chunks() -> AsyncIterator[bytes]:
    for index in range(3):
        yield f"chunk-{index};".encode()


async def test_request_body_is_consumed_through_a_real_client() -> None:
    app = error_app(FAILURE, show_details=True)
    received: list[Message] = []

    async def recording_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        async def recording_receive() -> Message:
            message: Message = await receive()
            received.append(message)
            return message

        await app(scope, recording_receive, send)

    response = await request(recording_app, "POST", content=chunks())

    assert response.status_code == 500
    body = b"".join(message.get("body", b"") for message in received)
    assert body == b"chunk-0;chunk-1;chunk-2;"
    assert received[-1]["type"] == "http.request"
    assert not received[-1].get("more_body", False)


async def test_request_body_is_read_before_the_response_starts() -> None:
    recorder = Recorder(
        {"type": "http.request", "body": b"a", "more_body": True},
        {"type": "http.request", "body": b"b", "more_body": True},
        {"type": "http.request", "body": b"c", "more_body": False},
    )
    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}

    await error_app(FAILURE, show_details=True)(scope, recorder.receive, recorder.send)

    directions = [direction for direction, _ in recorder.events]
    assert directions == ["received", "received", "received", "sent", "sent"]
    assert recorder.incoming == []
    start, body = recorder.sent
    assert start["type"] == "http.response.start"
    assert start["status"] == 500
    assert body["type"] == "http.response.body"
    assert not body.get("more_body", False)
    assert (b"content-length", str(len(body["body"])).encode()) in start["headers"]


async def test_client_that_disconnects_gets_no_response() -> None:
    recorder = Recorder({"type": "http.disconnect"})
    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}

    await error_app(FAILURE, show_details=True)(scope, recorder.receive, recorder.send)

    assert recorder.sent == []


@pytest.mark.parametrize(
    "failure",
    [
        {},
        {"summary": None, "traceback": None, "files": None, "exit_reason": None, "generation": None},
        {"summary": 42, "traceback": ["not", "text"], "files": "main.py", "generation": "7", "app": None},
        {"files": [None, "", "main.py", 3]},
        {"summary": "   ", "app": "  "},
    ],
)
async def test_malformed_failure_still_renders(failure: dict[str, Any]) -> None:
    app = error_app(failure, show_details=True)

    html_response = await request(app, headers=HTML)
    text_response = await request(app)

    assert html_response.status_code == 500
    assert "failed to load" in html_response.text
    assert text_response.status_code == 500
    assert "failed to load" in text_response.text


async def websocket_close(app: ASGIApp) -> list[Message]:
    recorder = Recorder({"type": "websocket.connect"})
    await app({"type": "websocket", "path": "/ws", "headers": []}, recorder.receive, recorder.send)
    return recorder.sent


async def test_websocket_is_accepted_then_closed_with_1011_and_the_summary() -> None:
    sent = await websocket_close(error_app(FAILURE, show_details=True))

    assert [message["type"] for message in sent] == ["websocket.accept", "websocket.close"]
    assert sent[1]["code"] == 1011
    assert sent[1]["reason"] == "app failed to load: SyntaxError: invalid syntax (main.py, line 3)"


@pytest.mark.parametrize("summary", ["ImportError: " + "é" * 200, "x" * 500, "E: " + "日本語" * 60])
async def test_websocket_close_reason_fits_in_a_close_frame(summary: str) -> None:
    sent = await websocket_close(error_app(dict(FAILURE, summary=summary), show_details=True))

    reason = sent[1]["reason"]
    assert sent[1]["code"] == 1011
    assert len(reason.encode("utf-8")) <= 123
    assert reason.startswith("app failed to load: " + summary[:10])
    assert "\ufffd" not in reason


async def test_websocket_close_reason_is_a_single_line() -> None:
    sent = await websocket_close(error_app(dict(FAILURE, summary="Error:\nline two\r\n"), show_details=True))

    assert sent[1]["reason"] == "app failed to load: Error: line two"


async def test_websocket_hides_the_summary_without_details() -> None:
    sent = await websocket_close(error_app(FAILURE, show_details=False))

    assert sent[1] == {"type": "websocket.close", "code": 1011, "reason": "app failed to load"}


async def test_websocket_that_disconnects_before_connecting_gets_nothing() -> None:
    recorder = Recorder({"type": "websocket.disconnect", "code": 1000})

    await error_app(FAILURE, show_details=True)({"type": "websocket"}, recorder.receive, recorder.send)

    assert recorder.sent == []


async def test_lifespan_startup_and_shutdown_complete() -> None:
    recorder = Recorder({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})

    await error_app(FAILURE, show_details=True)({"type": "lifespan"}, recorder.receive, recorder.send)

    assert recorder.sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert recorder.incoming == []


async def test_unknown_scope_type_is_ignored() -> None:
    recorder = Recorder()

    await error_app(FAILURE, show_details=True)({"type": "webtransport"}, recorder.receive, recorder.send)

    assert recorder.events == []
