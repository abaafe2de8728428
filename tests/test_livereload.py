"""Live reload without a browser: where the script goes (pure units), and when it must not go
(real servers, real HTTP)."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgireload import Config, Reloader
from asgireload import _protocol as protocol
from asgireload._supervisor.assets import LiveAssets, is_stylesheet_change, log_line
from asgireload._supervisor.settings import worker_settings
from asgireload._worker import injection, pagesend
from asgireload._worker.errorreport import Report, render_html
from asgireload._worker.livereload import Hub, LiveReload, channel_path
from asgireload.cli import parse_config
from asgireload.errors import AsgireloadError, ConfigError
from asgireload.reloader import write_like_an_editor

from .conftest import until, write
from .test_cli import run_cli

TAG = b"<script></script>"


# ---------------------------------------------------------------- the body, chunk by chunk


def inject(chunks: list[bytes]) -> bytes:
    injector = injection.BodyInjector(TAG)
    return b"".join(injector.feed(c, last=i == len(chunks) - 1) for i, c in enumerate(chunks))


def test_the_script_goes_before_the_closing_body_tag() -> None:
    assert inject([b"<html><body>hi</body></html>"]) == b"<html><body>hi" + TAG + b"</body></html>"


@pytest.mark.parametrize("split", range(1, len("<p>hi</BODY></html>")))
def test_a_closing_tag_split_across_two_chunks_is_found(split: int) -> None:
    page = b"<p>hi</BODY></html>"
    assert inject([page[:split], page[split:]]) == b"<p>hi" + TAG + b"</BODY></html>"


def test_a_multi_part_body_passes_each_part_on_as_it_comes() -> None:
    injector = injection.BodyInjector(TAG)
    assert injector.feed(b"<html><body>first part ", last=False) == b"<html><body>first part "
    assert injector.feed(b"second</bo", last=False) == b"second"  # "</bo" may be the tag: held back
    assert injector.feed(b"dy>", last=False) == TAG + b"</body>"
    assert injector.feed(b"</html>", last=True) == b"</html>"


def test_a_body_without_the_tag_gets_the_script_at_its_end() -> None:
    assert inject([b"<p>fragment", b" <", b""]) == b"<p>fragment <" + TAG


def test_only_the_first_closing_tag_gets_it() -> None:
    assert inject([b"a</body>b</body>"]) == b"a" + TAG + b"</body>b</body>"


def test_content_length_grows_by_the_script_and_validators_go() -> None:
    headers = [(b"Content-Length", b"100"), (b"ETag", b'"x"'), (b"Last-Modified", b"y"), (b"X-Other", b"z")]
    fixed, ok = injection.fixed_headers(headers, 17)
    assert ok
    assert fixed == [(b"Content-Length", b"117"), (b"X-Other", b"z")]
    assert injection.fixed_headers([(b"content-length", b"ten")], 17) == ([], False)


def test_html_pages_of_any_final_status_get_it() -> None:
    for status in (200, 404, 500):
        assert injection.why_not_html(status, [(b"Content-Type", b"text/html; charset=utf-8")]) is None


# ---------------------------------------------------------------- Content-Security-Policy


@pytest.mark.parametrize(
    ("policies", "nonce", "worker"),
    [
        ([], None, True),
        (["default-src 'self'"], None, True),
        (["script-src 'nonce-abc' 'strict-dynamic'; object-src 'none'"], "abc", False),
        (["default-src 'none'; script-src 'nonce-abc'; connect-src 'self'; worker-src 'self'"], "abc", True),
        (["script-src 'self'", "script-src 'nonce-xyz' 'self'"], "xyz", True),
        (["img-src *"], None, True),
        (["Script-Src 'NONCE-AbC'; Connect-Src 'SELF'"], "AbC", False),
    ],
)
def test_the_script_takes_the_form_the_policy_allows(
    policies: list[str], nonce: str | None, worker: bool
) -> None:
    place, reason = injection.placement(policies)
    assert place == injection.Placement(nonce, worker), reason


@pytest.mark.parametrize(
    ("policies", "blocked_by"),
    [
        (["script-src 'sha256-abc='"], "script-src"),
        (["default-src 'none'"], "script-src"),
        (["script-src 'self' 'strict-dynamic'"], "script-src"),
        (["script-src 'nonce-a'; connect-src 'none'"], "connect-src"),
        (["script-src 'nonce-a'", "script-src 'nonce-b'"], "different nonces"),
        (["script-src 'self', script-src 'none'"], "script-src"),
    ],
)
def test_a_policy_that_blocks_the_script_leaves_the_page_alone(policies: list[str], blocked_by: str) -> None:
    place, reason = injection.placement(policies)
    assert place is None
    assert blocked_by in reason


def test_the_tag_escapes_what_it_carries() -> None:
    place = injection.Placement('a"b', True)
    tag = injection.script_tag(place, {"run": "<r>"}, "/__asgireload__/client.js")
    assert tag == (
        b'<script src="/__asgireload__/client.js" async nonce="a&quot;b" data-run="&lt;r&gt;" '
        b'data-worker="1"></script>'
    )


def test_the_error_page_polls_only_without_live_reload() -> None:
    report = Report.from_mapping({"kind": "import", "summary": "SyntaxError: bad"})
    assert "setTimeout(poll" in render_html(report, hidden=None, nonce="n")
    assert "setTimeout(poll" not in render_html(report, hidden=None, nonce="n", poll=False)


# ---------------------------------------------------------------- the ASGI wrapper, in process


async def page_app(scope: Any, receive: Any, send: Any) -> None:
    headers = [(b"content-type", b"text/html"), (b"etag", b'"1"')]
    if scope["path"] == "/strict":
        headers.append((b"content-security-policy", b"script-src 'sha256-x='"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"<body>one", "more_body": True})
    await send({"type": "http.response.body", "body": b" two</body>", "more_body": False})


async def call(
    app: Any, path: str, host: bytes = b"localhost:8000", method: str = "GET", extra: Any = ()
) -> tuple[Any, bytes]:
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": method, "path": path, "headers": [(b"host", host), *extra]}

    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # as a server does: nothing more until the client leaves
        raise AssertionError("not reached")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0], b"".join(m.get("body", b"") for m in sent[1:])


async def test_a_streamed_page_gets_the_script_and_loses_its_etag() -> None:
    app = LiveReload(page_app, Hub("run1", 3, error_page=False))
    start, body = await call(app, "/")
    assert body.startswith(b"<body>one two<script src=")
    assert b'data-run="run1" data-generation="3"' in body
    assert body.endswith(b"</script></body>")
    assert (b"etag", b'"1"') not in start["headers"]


async def test_post_foreign_hosts_and_blocking_policies_are_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = LiveReload(page_app, Hub("run1", 3, error_page=False))
    for kwargs in ({"host": b"attacker.example"}, {"method": "POST"}):
        _, body = await call(app, "/", **kwargs)  # type: ignore[arg-type]
        assert body == b"<body>one two</body>"
    with caplog.at_level(logging.INFO, logger="asgireload"):
        _, body = await call(app, "/strict")
        await call(app, "/strict")
    assert body == b"<body>one two</body>"
    assert caplog.text.count("Content-Security-Policy blocks the script") == 1  # said once
    start, _ = await call(app, "/__asgireload__/events", host=b"attacker.example")
    assert start["status"] == 200  # the app's own answer: the channel is not there for that Host


async def test_the_stream_says_hello_then_ends_when_the_generation_drains() -> None:
    hub = Hub("run1", 3, error_page=True)
    hub.close()  # a drain: a stream opened now ends right after its first event
    start, body = await call(LiveReload(page_app, hub), "/__asgireload__/events")
    assert (b"content-type", b"text/event-stream") in start["headers"]
    assert body == b'data: {"type":"hello","run":"run1","generation":3,"error_page":true}\n\n'


# ---------------------------------------------------------------- real servers, real HTTP

PAGES = """
import gzip

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/json":
        kind, body, extra = b"application/json", b'{"a": "</body>"}', []
    elif path == "/gzip":
        body = gzip.compress(b"<body>zipped</body>")
        kind, extra = b"text/html", [(b"content-encoding", b"gzip")]
    else:
        kind, body, extra = b"text/html", b"<html><body>page</body></html>", []
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


async def fetch(server: Reloader, path: str) -> httpx.Response:
    async with httpx.AsyncClient(headers={"accept-encoding": "identity"}) as client:
        return await client.get(server.url.replace("127.0.0.1", "localhost") + path)


async def test_a_served_page_gets_one_script_with_its_length_fixed(tmp_path: Path) -> None:
    write(tmp_path / "main.py", PAGES)
    async with Reloader("main:app", app_dir=tmp_path, live_reload=True) as server:
        response = await fetch(server, "/")
        assert response.text.count("<script ") == 1
        assert response.text.endswith("</script></body></html>")
        assert int(response.headers["content-length"]) == len(response.content)
        assert (await fetch(server, "/json")).text == '{"a": "</body>"}'
        zipped = await fetch(server, "/gzip")
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.text == "<body>zipped</body>"  # httpx unzipped it: nothing was added
        client_js = await fetch(server, "/__asgireload__/client.js")
        assert client_js.headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize(
    "options",
    [{}, {"live_reload": False}, {"live_reload": True, "host": "0.0.0.0"}],
    ids=["api-default", "off", "non-loopback-bind"],
)
async def test_no_script_unless_on_and_bound_to_loopback(tmp_path: Path, options: dict[str, Any]) -> None:
    write(tmp_path / "main.py", PAGES)
    async with Reloader("main:app", app_dir=tmp_path, **options) as server:
        port = server.url.rsplit(":", 1)[1]
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://localhost:{port}/")
            assert response.text == "<html><body>page</body></html>"
            channel = await client.get(f"http://localhost:{port}/__asgireload__/client.js")
            assert "<html>" in channel.text  # the app's answer: no channel either


async def test_a_stylesheet_change_does_not_restart_the_app(tmp_path: Path) -> None:
    write(tmp_path / "main.py", PAGES)
    write(tmp_path / "static" / "site.css", "a {}\n")
    write(tmp_path / "templates" / "page.html", "<p>\n")
    options: dict[str, Any] = {"live_reload": True, "reload_includes": ("*.html",), "capture_output": True}
    async with Reloader("main:app", app_dir=tmp_path, **options) as server:
        assert str(tmp_path / "static" / "site.css") in server._running.watched  # type: ignore[attr-defined]
        event = await server.edit(tmp_path / "templates" / "page.html", "<p>2\n")  # a reload include
        assert event.generation == 2
        with pytest.raises(AsgireloadError, match="matches --live-include"):
            await server.edit(tmp_path / "static" / "site.css", "a {}")  # no generation to wait for
        write_like_an_editor(tmp_path / "static" / "site.css", "a { color: red }\n")
        event = await server.edit(tmp_path / "main.py", PAGES + "\n")
        assert event.generation == 3  # the stylesheet's change started no generation in between
        assert event.changed == (str(tmp_path / "main.py"),)


# ---------------------------------------------------------------- options and the supervisor's sorting


def test_the_command_line_turns_it_on_and_the_api_does_not() -> None:
    assert parse_config(["main:app"]).live_reload_active
    assert not parse_config(["main:app", "--no-live-reload"]).live_reload_active
    assert not parse_config(["main:app", "--host", "0.0.0.0"]).live_reload_active
    assert not Config(app="main:app").live_reload_active
    assert Config(app="main:app", live_reload=True).live_reload_active
    assert parse_config(["main:app", "--live-include", "*.svg"]).live_includes == ("*.svg",)
    assert Config(app="main:app").live_includes == ("*.css", "*.js")


@pytest.mark.parametrize("bad", [("",), (" ",), ("a\x00b",)])
def test_an_empty_live_include_is_one_clear_error(bad: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match=r"option live_includes \(--live-include\) takes a glob"):
        Config(app="main:app", live_includes=bad)


def test_files_matched_by_both_globs_restart_the_app(tmp_path: Path) -> None:
    config = Config(app="main:app", app_dir=tmp_path, live_reload=True, reload_includes=("*.js",))
    assets = LiveAssets(config, (str(tmp_path),))
    css, js, py = (str(tmp_path / n) for n in ("a.css", "b.js", "c.py"))
    assert assets.split([css, js, py]) == ([css], [js, py])
    assets.note_code([css])  # a file a generation reported (imported, or in a traceback) is code
    assert assets.split([css]) == ([], [css])
    off = LiveAssets(Config(app="main:app", app_dir=tmp_path), (str(tmp_path),))
    assert off.split([css]) == ([], [css])


def test_the_log_says_what_happened_in_one_line(tmp_path: Path) -> None:
    assert is_stylesheet_change(["/x/a.CSS"])
    assert not is_stylesheet_change(["/x/a.css", "/x/b.js"])
    line = log_line([str(tmp_path / f"{i}.css") for i in range(5)], True)
    assert line.endswith("and 2 more changed; stylesheets refreshed in open pages.")
    assert "\n" not in line


def test_the_assets_message_and_the_live_settings_cross_the_channel() -> None:
    message = protocol.Assets(("/p/site.css",), restyle=True)
    assert protocol.decode(protocol.encode(message), protocol.SUPERVISOR_MESSAGES) == message
    with pytest.raises(protocol.ProtocolError, match="restyle"):
        protocol.decode(b'{"type":"assets","paths":["/a.css"],"restyle":"yes"}', protocol.SUPERVISOR_MESSAGES)
    with pytest.raises(protocol.ProtocolError, match="paths"):
        protocol.decode(b'{"type":"assets","paths":[1],"restyle":true}', protocol.SUPERVISOR_MESSAGES)
    config = Config(app="main:app", live_reload=True)
    settings = worker_settings(config, (), (), None, "run1", 3, 4, 5)
    line = protocol.encode(settings, protocol.TRUSTED_MAX_LINE)
    decoded = protocol.decode(line, protocol.SUPERVISOR_MESSAGES)
    assert isinstance(decoded, protocol.Settings)
    assert (decoded.live_reload, decoded.run) == (True, "run1")


async def test_a_drain_ends_the_streams_at_once_and_the_next_is_the_new_generation(tmp_path: Path) -> None:
    write(tmp_path / "main.py", PAGES)
    options: dict[str, Any] = {"live_reload": True, "drain_timeout": 60.0}
    async with Reloader("main:app", app_dir=tmp_path, **options) as server, httpx.AsyncClient() as client:
        events = server.url.replace("127.0.0.1", "localhost") + "/__asgireload__/events"
        async with client.stream("GET", events) as stream:
            lines = stream.aiter_lines()
            assert '"generation":1' in await anext(lines)
            await server.edit(tmp_path / "main.py", PAGES + "\n")
            async with asyncio.timeout(10):  # far under the drain timeout: the stream did not wait for it
                rest = [line async for line in lines]
            assert rest == [""]  # the end of the hello event, then the end of the stream
        await until(lambda: "draining" not in server.pids, timeout=10, what="the old generation's exit")
        async with client.stream("GET", events) as stream:
            assert '"generation":2' in await anext(stream.aiter_lines())


async def test_the_command_line_injects_by_default_and_logs_each_asset_change(tmp_path: Path) -> None:
    write(tmp_path / "main.py", PAGES)
    write(tmp_path / "static" / "site.css", "a {}\n")
    async with run_cli(tmp_path, "main:app", "--port", "0") as cli:
        port = await cli.started()
        async with httpx.AsyncClient() as client:
            assert "/__asgireload__/client.js" in (await client.get(f"http://localhost:{port}/")).text
        write_like_an_editor(tmp_path / "static" / "site.css", "a { color: red }\n")
        logged = r"Live reload: static/site\.css changed; stylesheets refreshed in open pages\.$"
        await cli.wait_for_line(logged)
        assert "Reloaded" not in cli.transcript()


async def test_no_live_reload_on_the_command_line(tmp_path: Path) -> None:
    write(tmp_path / "main.py", PAGES)
    async with run_cli(tmp_path, "main:app", "--port", "0", "--no-live-reload") as cli:
        port = await cli.started()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://localhost:{port}/")).text == "<html><body>page</body></html>"


# ---------------------------------------------------------------- review fixes: which requests, which events

PAGE_LOAD = {"accept": "text/html"}


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, None),
        ({"sec-fetch-dest": "document"}, None),
        ({"sec-fetch-dest": "iframe"}, None),
        ({"sec-fetch-dest": "empty"}, "not a page load (Sec-Fetch-Dest empty)"),
        ({"sec-fetch-dest": "script"}, "not a page load (Sec-Fetch-Dest script)"),
        ({"hx-request": "true", "sec-fetch-dest": "empty"}, "a fragment (hx-request header)"),
        ({"HX-Request": "true"}, "a fragment (hx-request header)"),
        ({"turbo-frame": "list", "sec-fetch-dest": "document"}, "a fragment (turbo-frame header)"),
    ],
)
def test_only_page_loads_get_the_script(headers: dict[str, str], why: str | None) -> None:
    encoded = [(k.encode(), v.encode()) for k, v in headers.items()]
    assert injection.why_not_navigation(encoded) == why


async def test_fragments_and_fetches_are_served_untouched_in_process() -> None:
    app = LiveReload(page_app, Hub("run1", 3, error_page=False))
    for extra in ([(b"hx-request", b"true")], [(b"sec-fetch-dest", b"empty")], [(b"turbo-frame", b"f")]):
        _, body = await call(app, "/", extra=extra)
        assert body == b"<body>one two</body>", extra
    _, body = await call(app, "/", extra=[(b"sec-fetch-dest", b"document")])
    assert b"client.js" in body


@pytest.mark.parametrize(
    ("policy", "allowed"),
    [
        ("sandbox", False),
        ("sandbox allow-scripts", False),
        ("sandbox allow-same-origin", False),
        ("sandbox allow-scripts allow-same-origin", True),
        ("default-src 'self'; SANDBOX Allow-Scripts allow-same-origin", True),
    ],
)
def test_a_sandbox_without_scripts_and_same_origin_blocks_the_script(policy: str, allowed: bool) -> None:
    place, reason = injection.placement([policy])
    assert (place is not None) is allowed
    assert allowed or "sandbox" in reason


async def test_the_error_page_says_so_in_its_tag() -> None:
    for error_page in (True, False):
        _, body = await call(LiveReload(page_app, Hub("run1", 3, error_page=error_page)), "/")
        assert f'data-error="{int(error_page)}"'.encode() in body  # page.js: the error page keeps the scroll


@pytest.mark.parametrize(
    "glob", ["*", "**", "**/*", "*.py", "*.p?", "/abs/*.css", "src/**/*.py"], ids=lambda g: repr(g)
)
def test_live_include_globs_that_cannot_work_are_one_clear_error(glob: str) -> None:
    with pytest.raises(ConfigError, match="live_includes"):
        Config(app="main:app", live_reload=True, live_includes=(glob,))


@pytest.mark.parametrize("glob", ["static/*", "static/**", "*.css", "**/*.js", "assets/*.*"])
def test_live_include_globs_scoped_to_a_folder_or_a_type_are_fine(glob: str) -> None:
    assert Config(app="main:app", live_reload=True, live_includes=(glob,)).live_includes == (glob,)


def test_python_is_never_an_asset_and_double_star_globs_match_root_files(tmp_path: Path) -> None:
    config = Config(app="main:app", live_reload=True, live_includes=("**/*.css", "*.txt"))
    assets = LiveAssets(config, [str(tmp_path)])
    assert assets.is_asset(str(tmp_path / "site.css"))  # at the root: '**/' needs no folder
    assert assets.is_asset(str(tmp_path / "static" / "deep" / "site.css"))
    assert not assets.is_asset(str(tmp_path / "app.py"))
    assert not assets.is_asset(str(tmp_path / "ext.so"))


def test_the_walk_skips_generated_folders(tmp_path: Path) -> None:
    from asgireload._supervisor.includes import walk_includes
    from asgireload._watchfilter import WatchFilter

    for folder in ("static", "htmlcov", "node_modules/pkg", "dist", "build", "_build", ".git", "venv"):
        write(tmp_path / folder / "x.css", "a {}\n")
    write(tmp_path / "venv" / "pyvenv.cfg", "home = /usr\n")
    walk = walk_includes([str(tmp_path)], WatchFilter([str(tmp_path)], ("*.css",)))
    assert sorted(walk.files) == [str(tmp_path / "static" / "x.css")]
    assert sorted(walk.folders) == [str(tmp_path), str(tmp_path / "static")]


def test_the_log_says_when_no_page_was_told(tmp_path: Path) -> None:
    line = log_line([str(tmp_path / "a.js")], restyle=False, served=False)
    assert "reloaded" not in line
    assert "nothing serves" in line


async def test_the_error_page_polls_for_hosts_that_get_no_script(tmp_path: Path) -> None:
    write(tmp_path / "main.py", "this is not python\n")
    async with (
        Reloader("main:app", app_dir=tmp_path, live_reload=True) as server,
        httpx.AsyncClient() as client,
    ):
        assert server.state == "failed"
        local = await client.get(f"http://localhost:{server.port}/", headers=PAGE_LOAD)
        assert "/__asgireload__/client.js" in local.text
        assert "setTimeout(poll" not in local.text  # the stream tells this page
        other = await client.get(
            f"http://127.0.0.1:{server.port}/", headers={**PAGE_LOAD, "host": f"myapp.test:{server.port}"}
        )
        assert "/__asgireload__/client.js" not in other.text
        assert "setTimeout(poll" in other.text  # no stream for this Host: the page checks back itself
        fragment = await client.get(
            f"http://localhost:{server.port}/", headers={**PAGE_LOAD, "hx-request": "true"}
        )
        assert "setTimeout(poll" in fragment.text


async def test_a_crash_loop_does_not_reload_the_error_page_again_and_again(tmp_path: Path) -> None:
    write(tmp_path / "main.py", "import os\nos._exit(3)\n")
    async with (
        Reloader("main:app", app_dir=tmp_path, live_reload=True) as server,
        httpx.AsyncClient() as client,
    ):
        assert server.state == "failed"
        events = f"http://localhost:{server.port}/__asgireload__/events"
        async with client.stream("GET", events, timeout=30) as stream:
            lines = stream.aiter_lines()
            assert '"error_page":true' in await anext(lines)
            retries = 0
            async with asyncio.timeout(20):
                async for event in server.events():
                    assert event.outcome == "failed"
                    retries += 1
                    if retries == 3:
                        break
            # each retry failed alike; a different failure must reach the page, as the first event
            write_like_an_editor(tmp_path / "main.py", "import os\nos._exit(4)\n")
            async with asyncio.timeout(20):
                data = [line async for line in _data_lines(lines, 1)]
            assert len(data) == 1
            assert "code 4" in data[0]  # no reload came for the retries that showed code 3 again


async def _data_lines(lines: Any, count: int) -> Any:
    seen = 0
    async for line in lines:
        if line:
            yield line
            seen += 1
            if seen == count:
                return


async def test_an_endless_stream_gets_a_held_back_tail_soon_and_the_script_at_its_end() -> None:
    go_on = asyncio.Event()

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]}
        )
        await send({"type": "http.response.body", "body": b"<body>tick <", "more_body": True})
        await go_on.wait()  # a stream that says nothing more until the test allows it
        await send({"type": "http.response.body", "body": b"/body>", "more_body": False})

    bodies: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            if message["body"] == b"<":
                go_on.set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"host", b"localhost")]}
    async with asyncio.timeout(10):
        await LiveReload(streaming, Hub("run1", 3, error_page=False))(scope, receive, send)
    assert bodies[:2] == [b"<body>tick ", b"<"]  # the '<' went out by itself, without the next chunk
    assert bodies[2].startswith(b"/body><script ")  # the tag it began was given up: the script at the end


# ---------------------------------------------------------------- pages left intact, and why not said once

STARLETTE_PAGES = """
import gzip
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

HERE = Path(__file__).parent
FILLER = "<p>" + "lorem ipsum " * 100 + "</p>"  # over GZipMiddleware's 500 bytes


def page(request):
    return HTMLResponse(f"<!doctype html><html><body>{FILLER}</body></html>")


def in_script(request):
    return HTMLResponse('<body><script>var s = "</body>";</script><!-- never closed')


def download(request):
    headers = {"content-disposition": 'attachment; filename="report.html"'}
    return HTMLResponse("<html><body>report</body></html>", headers=headers)


def zipped(request):  # compressed whatever the request says
    body = gzip.compress(f"<html><body>{FILLER}</body></html>".encode())
    return Response(body, media_type="text/html", headers={"content-encoding": "gzip"})


routes = [
    Route("/", page, methods=["GET", "HEAD"]),
    Route("/in-script", in_script, methods=["GET", "HEAD"]),
    Route("/download", download),
    Route("/zipped", zipped),
    Route("/file", lambda request: FileResponse(HERE / "page.html")),
    Route("/utf16", lambda request: FileResponse(HERE / "utf16.html")),
]
app = Starlette(routes=routes, middleware=[Middleware(GZipMiddleware, minimum_size=500)])
"""
BROWSER = {
    "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "accept-encoding": "gzip, deflate, br, zstd",
    "sec-fetch-dest": "document",
}
UTF16 = "\ufeff<html><body><p>\u65e5\u672c\u8a9e</p></body></html>".encode("utf-16-le")


def starlette_project(folder: Path) -> Path:
    write(folder / "main.py", STARLETTE_PAGES)
    write(folder / "page.html", "<!doctype html><html><body><p>from a file</p></body></html>")
    (folder / "utf16.html").write_bytes(UTF16)
    return folder


async def test_head_answers_the_length_get_answers(tmp_path: Path) -> None:
    starlette_project(tmp_path)
    async with (
        Reloader("main:app", app_dir=tmp_path, live_reload=True) as server,
        httpx.AsyncClient(headers=BROWSER) as client,
    ):
        base = f"http://localhost:{server.port}"
        for path in ("/", "/in-script", "/file"):
            got, head = await client.get(base + path), await client.head(base + path)
            assert head.status_code == got.status_code == 200, path
            assert head.headers["content-length"] == got.headers["content-length"], path
            assert int(got.headers["content-length"]) == len(got.content), path
            assert ("etag" in head.headers) is ("etag" in got.headers), path


async def test_downloads_and_utf16_pages_pass_byte_for_byte(tmp_path: Path) -> None:
    starlette_project(tmp_path)
    async with (
        Reloader("main:app", app_dir=tmp_path, live_reload=True) as server,
        httpx.AsyncClient(headers=BROWSER) as client,
    ):
        base = f"http://localhost:{server.port}"
        download = await client.get(base + "/download")
        assert download.content == b"<html><body>report</body></html>"
        utf16 = await client.get(base + "/utf16")
        assert utf16.headers["content-type"] == "text/html; charset=utf-8"  # Starlette's label: wrong
        assert utf16.content == UTF16
        in_script = await client.get(base + "/in-script")
        assert in_script.text == '<body><script>var s = "</body>";</script><!-- never closed'
        assert "/__asgireload__/client.js" in (await client.get(base + "/file")).text


async def test_a_gzipping_app_gives_a_browser_its_page_uncompressed_with_the_script(tmp_path: Path) -> None:
    starlette_project(tmp_path)
    async with (
        Reloader("main:app", app_dir=tmp_path, live_reload=True) as server,
        httpx.AsyncClient(headers=BROWSER) as client,
    ):
        base = f"http://localhost:{server.port}"
        page = await client.get(base + "/")
        assert "content-encoding" not in page.headers
        assert page.text.count("/__asgireload__/client.js") == 1
        assert page.text.endswith("</script></body></html>")
        fetched = await client.get(base + "/", headers={"accept": "*/*", "sec-fetch-dest": "empty"})
        assert fetched.headers["content-encoding"] == "gzip"  # not a page load: the app's own answer
        assert "client.js" not in fetched.text


async def test_a_page_that_cannot_get_the_script_says_why_once(tmp_path: Path) -> None:
    starlette_project(tmp_path)
    async with run_cli(tmp_path, "main:app", "--port", "0") as cli:
        port = await cli.started()
        async with httpx.AsyncClient(headers=BROWSER) as client:
            for _ in range(2):
                assert (await client.get(f"http://localhost:{port}/zipped")).status_code == 200
                assert (await client.get(f"http://localhost:{port}/in-script")).status_code == 200
            await client.get(f"http://localhost:{port}/utf16")  # said last: the lines before are in
        await cli.wait_for_line(r"no script in GET /utf16: it starts with a UTF-16 byte-order mark")
        lines = [line for _, line in cli.lines if "Live reload: no script" in line]
        assert len(lines) == 3, lines
        assert "no script in GET /zipped: it is compressed (Content-Encoding: gzip)" in lines[0]
        assert "no script in GET /in-script: it ends inside a comment" in lines[1]


ROOT_PATH_PAGE = """
async def app(scope, receive, send):
    body = f"<html><body>root_path={scope['root_path']} path={scope['path']}</body></html>".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
    await send({"type": "http.response.body", "body": body})
"""


async def test_under_a_root_path_the_script_and_its_stream_answer(tmp_path: Path) -> None:
    write(tmp_path / "main.py", ROOT_PATH_PAGE)
    async with (
        Reloader("main:app", app_dir=tmp_path, live_reload=True, root_path="/api") as server,
        httpx.AsyncClient() as client,
    ):
        base = f"http://localhost:{server.port}"
        page = (await client.get(base + "/")).text
        assert "root_path=/api path=/api/" in page
        src = re.search(r'src="([^"]+)"', page)
        assert src is not None
        assert src[1].startswith("/api/__asgireload__/client.js?v=")
        # the browser asks for that URL directly, or a proxy took /api off on its way
        for url in (src[1], src[1].removeprefix("/api")):
            script = await client.get(base + url)
            assert script.status_code == 200, url
            assert script.headers["content-type"].startswith("text/javascript")
        for events in ("/api/__asgireload__/events", "/__asgireload__/events"):
            async with client.stream("GET", base + events) as stream:
                assert stream.status_code == 200
                assert '"generation":1' in await anext(stream.aiter_lines())


def test_the_channel_is_found_below_the_root_path() -> None:
    def scope(path: str, root: str = "") -> dict[str, Any]:
        return {"path": path, "root_path": root}

    assert channel_path(scope("/__asgireload__/events")) == "/__asgireload__/events"
    assert channel_path(scope("/api/__asgireload__/events", "/api")) == "/__asgireload__/events"
    assert channel_path(scope("/api/api/__asgireload__/events", "/api")) == "/__asgireload__/events"
    assert channel_path(scope("/api/page", "/api")) is None
    assert channel_path(scope("/apix/__asgireload__/events", "/api")) is None
    assert channel_path(scope("/api/__asgireload__/events")) is None  # no root path: the app's


async def test_a_streamed_page_without_an_end_says_so_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pagesend, "STREAMING_NOTICE_SECONDS", 0.01)
    said = asyncio.Event()

    class Listener(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "streamed for" in record.getMessage():
                said.set()

    async def endless(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]}
        )
        await send({"type": "http.response.body", "body": b"<body><p>tick</p>", "more_body": True})
        await said.wait()  # streams on until the log said it
        await send({"type": "http.response.body", "body": b"<p>end</p>", "more_body": False})

    listener = Listener()
    logging.getLogger("asgireload").addHandler(listener)
    try:
        app = LiveReload(endless, Hub("run1", 3, error_page=False))
        with caplog.at_level(logging.INFO, logger="asgireload"):
            async with asyncio.timeout(10):
                _, body = await call(app, "/feed")
    finally:
        logging.getLogger("asgireload").removeHandler(listener)
    assert "no script in GET /feed: it has streamed for 0.01 s without a </body>" in caplog.text
    assert body.startswith(b"<body><p>tick</p><p>end</p><script ")  # then at its end, where it is safe


async def test_head_in_process_gets_the_length_of_get() -> None:
    async def page(scope: Any, receive: Any, send: Any) -> None:
        body = b"<html><body>x</body></html>"
        headers = [(b"content-type", b"text/html"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})

    app = LiveReload(page, Hub("run1", 3, error_page=False))
    got, body = await call(app, "/")
    head, _ = await call(app, "/", method="HEAD")
    assert dict(got["headers"])[b"content-length"] == str(len(body)).encode()
    assert dict(head["headers"])[b"content-length"] == dict(got["headers"])[b"content-length"]
