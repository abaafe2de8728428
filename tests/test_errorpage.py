"""Tests for the page a worker serves while the user's app fails to load."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest

from asgireload._worker.errorpage import ASGIApp, displayable, error_app, is_loopback_host

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


# ---------------------------------------------------------------- Host headers (DNS rebinding)


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8000",
        "LOCALHOST:8000",
        "localhost.",
        "app.localhost",
        "my-app.dev.localhost:3000",
        "127.0.0.1",
        "127.0.0.1:8000",
        "127.1.2.3:8080",
        "127.255.255.254",
        "[::1]",
        "[::1]:8000",
        "[0:0:0:0:0:0:0:1]:80",
        "[::ffff:127.0.0.1]",
        " localhost:8000 ",
        "localhost:",
        b"localhost:8000",
        bytearray(b"127.0.0.1"),
    ],
)
def test_loopback_hosts(host: str | bytes) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "attacker.example",
        "localhost.evil.com",
        "localhost.evil.com:8000",
        "evil-localhost",
        "evillocalhost",
        "127.0.0.1.evil.com",
        "0x7f.1",
        "0x7f000001",
        "2130706433",
        "127.1",
        "0177.0.0.1",
        "127.000.000.001",
        "128.0.0.1",
        "10.0.0.1",
        "0.0.0.0",
        "::1",  # an IPv6 address is only valid in brackets
        "[::1",
        "[::2]",
        "[::1]x",
        "[::1]:80:80",
        "localhost:80:80",
        "localhost:8o",
        "localhost:123456",
        "..localhost",
        "a..localhost",
        "-a.localhost",
        "local host",
        "localhost\x00.evil.com",
        b"localhost\xff",
    ],
)
def test_hosts_that_are_not_loopback(host: str | bytes | None) -> None:
    assert not is_loopback_host(host)


async def host_request(app: ASGIApp, host: str | None, headers: dict[str, str] = HTML) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8123") as client:
        request = client.build_request("GET", "/", headers=headers)
        if host is None:
            del request.headers["host"]
        else:
            request.headers["host"] = host
        return await client.send(request)


@pytest.mark.parametrize("accept", [HTML, {"accept": "text/plain"}])
async def test_a_foreign_host_gets_no_details(
    accept: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asgireload")
    failure = dict(FAILURE, summary="RuntimeError: password=hunter2 rejected")
    app = error_app(failure, show_details=True, only_loopback_hosts=True)

    response = await host_request(app, "attacker.example:8123", accept)

    assert response.status_code == 500
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-asgireload"] == "error"
    body = response.text
    assert "RuntimeError" in body
    for secret in ("hunter2", "Traceback", "def broken", "main.py", "pkg/models.py", "code 3"):
        assert secret not in body, secret
    assert "http://localhost:8123/" in body
    assert "--show-errors" not in body  # it is not the fix for this
    (record,) = [r for r in caplog.records if r.name == "asgireload"]
    assert record.levelno == logging.WARNING
    assert "'attacker.example:8123'" in record.getMessage()
    assert "DNS rebinding" in record.getMessage()
    assert "--show-errors" in record.getMessage()


async def test_a_loopback_host_gets_the_details() -> None:
    app = error_app(FAILURE, show_details=True, only_loopback_hosts=True)

    for host in ("localhost:8123", "127.0.0.1:8123", "[::1]:8123"):
        response = await host_request(app, host)
        assert "SyntaxError: invalid syntax (main.py, line 3)" in response.text, host
        assert "<code>pkg/models.py</code>" in response.text, host


async def test_a_request_without_host_is_not_loopback() -> None:
    app = error_app(FAILURE, show_details=True, only_loopback_hosts=True)

    response = await host_request(app, None, {"accept": "text/plain"})

    assert response.status_code == 500
    assert "main.py" not in response.text
    assert "SyntaxError" in response.text


async def test_two_host_headers_are_not_loopback() -> None:
    recorder = Recorder({"type": "http.request"})
    scope = {"type": "http", "headers": [(b"host", b"localhost"), (b"host", b"evil.example")]}

    await error_app(FAILURE, show_details=True, only_loopback_hosts=True)(
        scope, recorder.receive, recorder.send
    )

    assert b"main.py" not in recorder.sent[1]["body"]


async def test_the_warning_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asgireload")
    app = error_app(FAILURE, show_details=True, only_loopback_hosts=True)

    for host in ("a.example", "b.example", "localhost", "c.example"):
        await host_request(app, host)

    assert len([r for r in caplog.records if r.name == "asgireload"]) == 1


async def test_without_the_option_every_host_sees_the_details(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asgireload")

    response = await host_request(error_app(FAILURE, show_details=True), "attacker.example")

    assert "pkg/models.py" in response.text  # --show-errors was forced, or the bind is not loopback
    assert not caplog.records


async def test_a_websocket_from_a_foreign_host_gets_no_summary() -> None:
    app = error_app(FAILURE, show_details=True, only_loopback_hosts=True)
    for host, reason in [
        (b"evil.example", "app failed to load"),
        (b"localhost:1", "app failed to load: SyntaxError: invalid syntax (main.py, line 3)"),
    ]:
        recorder = Recorder({"type": "websocket.connect"})
        await app({"type": "websocket", "headers": [(b"host", host)]}, recorder.receive, recorder.send)
        assert recorder.sent[1]["reason"] == reason


# ---------------------------------------------------------------- odd text


async def test_paths_that_are_not_utf8_render() -> None:
    path = os.fsdecode(b"/srv/caf\xe9/main.py")  # holds a surrogate escape
    failure = dict(
        FAILURE,
        summary=f"ValueError: bad {path}",
        traceback=f'  File "{path}", line 1\nValueError',
        files=[path],
        app=os.fsdecode(b"m\xff:app"),
    )
    app = error_app(failure, show_details=True)

    for headers in (HTML, {"accept": "text/plain"}):
        response = await request(app, headers=headers)
        assert response.status_code == 500
        assert "/srv/caf\\xe9/main.py" in response.text
        assert "m\\xff:app" in response.text
    sent = await websocket_close(app)
    assert "caf\\xe9" in sent[1]["reason"]


def test_displayable() -> None:
    assert displayable("plain é") == "plain é"
    assert displayable(os.fsdecode(b"a\xe9\xffb")) == "a\\xe9\\xffb"
    assert displayable("lone \ud800") == "lone \\ud800"


async def test_the_page_follows_an_updated_failure() -> None:
    failure: dict[str, Any] = dict(FAILURE)
    app = error_app(failure, show_details=True)
    assert "main.py, line 3" in (await request(app)).text

    failure.update(summary="NameError: name 'x' is not defined", files=["other.py"])

    text = (await request(app)).text
    assert "NameError: name 'x' is not defined" in text
    assert "  other.py\n" in text


@pytest.mark.parametrize("accept", [HTML, {"accept": "text/plain"}])
async def test_an_exit_reason_that_is_a_sentence_is_shown_once_as_is(accept: dict[str, str]) -> None:
    reason = "The app's worker process exited with code 3 before it was ready"
    failure = dict(FAILURE, summary=reason, exit_reason=reason, traceback="", files=[])

    text = (await request(error_app(failure, show_details=True), headers=accept)).text

    assert text.count("exited with code 3") == 1
    assert "Worker exit" not in text
    other = dict(failure, summary="RuntimeError: boom", exit_reason="Killed by the out-of-memory killer.")
    text = (await request(error_app(other, show_details=True), headers=accept)).text
    assert "Killed by the out-of-memory killer." in text
    assert "Worker exit" not in text
