"""Live reload in a real headless Chromium: the page follows the code without being refreshed.

Each test starts a real reloading server (live reload on) and a real browser (see browser.py),
and waits on what the page shows: its title, a computed colour, a scroll offset.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from asgireload import Reloader
from asgireload.reloader import write_like_an_editor

from .browser import Browser, browser
from .conftest import write

pytestmark = pytest.mark.timeout(120)

APP = """
import pathlib

HERE = pathlib.Path(__file__).parent
BODY = "v1"
CSP = None
TALL = False


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path.startswith("/static/"):
        data = (HERE / path.lstrip("/")).read_bytes()
        kind = b"text/css" if path.endswith(".css") else b"text/javascript"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
        await send({"type": "http.response.body", "body": data})
        return
    if path == "/framed":
        page = b'<!doctype html><html><body><iframe id="frame" src="/"></iframe></body></html>'
        headers = [(b"content-type", b"text/html")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": page})
        return
    if path == "/api":
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})
        return
    spacer = '<div style="height: 5000px">tall</div>' if TALL else ""
    nonce = ' nonce="n0nce"' if CSP else ""
    page = (
        f'<!doctype html><html><head><title>{BODY}</title>'
        f'<link rel="stylesheet" href="/static/site.css"></head>'
        f'<body><h1 id="heading">{BODY}</h1><input id="field">{spacer}'
        f'<script{nonce}>window.pageScript = "ran"; history.scrollRestoration = "manual"; '
        f'sessionStorage.loads = String(Number(sessionStorage.loads || 0) + 1);</script></body></html>'
    ).encode()
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(page)).encode())]
    if CSP:
        headers.append((b"content-security-policy", CSP.encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": page})
"""
RED = "h1 { color: rgb(255, 0, 0); }\n"
BLUE = "h1 { color: rgb(0, 0, 255); }\n"
COLOUR = "return getComputedStyle(document.getElementById('heading')).color"


def app_source(body: str = "v1", *, csp: str | None = None, tall: bool = False) -> str:
    return (
        APP.replace('BODY = "v1"', f"BODY = {body!r}")
        .replace("CSP = None", f"CSP = {csp!r}")
        .replace("TALL = False", f"TALL = {tall!r}")
    )


async def connected(b: Browser) -> None:
    """Wait until the page's script has heard from the server (its first event, hello)."""
    heard = "return !!(window.asgireloadLive && window.asgireloadLive.events > 0)"
    await b.wait_for(heard, True, what="hello")


def project(root: Path, **options: object) -> Path:
    write(root / "app" / "main.py", app_source(**options))  # type: ignore[arg-type]
    write(root / "app" / "static" / "site.css", RED)
    return root / "app"


async def test_a_code_edit_shows_in_the_open_page(tmp_path: Path) -> None:
    folder = project(tmp_path)
    async with Reloader("main:app", app_dir=folder, live_reload=True) as server, browser(tmp_path / "b") as b:
        await b.open(server.url)
        await b.wait_for("return document.title", "v1")
        await connected(b)
        await server.edit(folder / "main.py", app_source("v2"))
        await b.wait_for("return document.title", "v2", what="the page showing the edit")
        await server.edit(folder / "main.py", app_source("v3"))
        await b.wait_for("return document.title", "v3", what="the page showing a second edit")
        await connected(b)  # the v3 page heard its own generation: it must not reload again
        assert await b.run("return sessionStorage.loads") == "3"  # one load, then one per edit
        errors = [e for e in await b.console() if e.get("level") == "SEVERE"]
        assert errors == []


async def test_a_stylesheet_edit_is_swapped_in_without_a_reload(tmp_path: Path) -> None:
    folder = project(tmp_path)
    async with Reloader("main:app", app_dir=folder, live_reload=True) as server, browser(tmp_path / "b") as b:
        await b.open(server.url)
        await b.wait_for(COLOUR, "rgb(255, 0, 0)")
        await connected(b)
        await b.run("window.keptState = 42; document.getElementById('field').value = 'typed';")
        generation = server.generation
        write_like_an_editor(folder / "static" / "site.css", BLUE)
        await b.wait_for(COLOUR, "rgb(0, 0, 255)", what="the new stylesheet's colour")
        kept = await b.run("return [window.keptState, document.getElementById('field').value]")
        assert kept == [42, "typed"]
        assert len(await b.run("return document.querySelectorAll('link[rel=stylesheet]')")) == 1
        assert server.generation == generation  # the app was not restarted


async def test_another_asset_reloads_the_page_without_restarting_the_app(tmp_path: Path) -> None:
    folder = project(tmp_path)
    write(folder / "static" / "app.js", "var x = 1;\n")
    async with Reloader("main:app", app_dir=folder, live_reload=True) as server, browser(tmp_path / "b") as b:
        await b.open(server.url)
        await connected(b)
        await b.run("window.keptState = 42;")
        generation = server.generation
        write_like_an_editor(folder / "static" / "app.js", "var x = 2;\n")
        await b.wait_for("return window.keptState === undefined && document.title", "v1", what="a reload")
        assert server.generation == generation


async def test_a_broken_save_shows_the_error_page_and_the_fix_brings_the_app_back(tmp_path: Path) -> None:
    folder = project(tmp_path)
    async with Reloader("main:app", app_dir=folder, live_reload=True) as server, browser(tmp_path / "b") as b:
        await b.open(server.url)
        await connected(b)
        event = await server.edit(folder / "main.py", "def broken(:\n")
        assert event.outcome == "failed"
        await b.wait_for("return document.title.indexOf('failed to load') >= 0", True, what="the error page")
        await connected(b)
        await server.edit(folder / "main.py", app_source("fixed"))
        await b.wait_for("return document.title", "fixed", what="the app back")


async def test_the_scroll_position_survives_the_reload(tmp_path: Path) -> None:
    folder = project(tmp_path, tall=True)
    async with Reloader("main:app", app_dir=folder, live_reload=True) as server, browser(tmp_path / "b") as b:
        await b.open(server.url)
        await connected(b)
        await b.run("window.scrollTo(0, 1234);")
        await b.wait_for("return window.scrollY", 1234)
        await server.edit(folder / "main.py", app_source("v2", tall=True))
        await b.wait_for("return document.title", "v2")
        await b.wait_for("return window.scrollY", 1234, what="the scroll offset after the reload")


async def test_the_scroll_position_survives_a_broken_save_and_its_fix(tmp_path: Path) -> None:
    folder = project(tmp_path, tall=True)
    async with Reloader("main:app", app_dir=folder, live_reload=True) as server, browser(tmp_path / "b") as b:
        await b.open(server.url)
        await connected(b)
        await b.run("window.scrollTo(0, 1234);")
        await b.wait_for("return window.scrollY", 1234)
        await server.edit(folder / "main.py", "def broken(:\n")
        await b.wait_for("return document.title.indexOf('failed to load') >= 0", True, what="the error page")
        await connected(b)
        await server.edit(folder / "main.py", app_source("fixed", tall=True))
        await b.wait_for("return document.title", "fixed", what="the app back")
        await b.wait_for("return window.scrollY", 1234, what="the scroll offset from before the broken save")


async def test_a_frame_leaves_the_reload_to_its_page(tmp_path: Path) -> None:
    folder = project(tmp_path)
    frame = "var f = document.getElementById('frame'); "
    async with Reloader("main:app", app_dir=folder, live_reload=True) as server, browser(tmp_path / "b") as b:
        await b.open(server.url + "/framed")
        await connected(b)
        await b.wait_for(frame + "return f.contentDocument.title", "v1", what="the frame")
        assert await b.run(frame + "return !!f.contentDocument.querySelector('script[src*=client]')")
        assert await b.run(frame + "return f.contentWindow.asgireloadLive === undefined")  # it stood down
        await server.edit(folder / "main.py", app_source("v2"))
        await b.wait_for(frame + "return f.contentDocument.title", "v2", what="the frame after the edit")
        await connected(b)
        assert await b.run("return sessionStorage.loads") == "2"  # the frame's page loaded once per edit


async def test_twenty_tabs_share_one_stream_and_leave_the_app_free(tmp_path: Path) -> None:
    folder = project(tmp_path)
    async with Reloader("main:app", app_dir=folder, live_reload=True) as server, browser(tmp_path / "b") as b:
        await b.open(server.url)
        for _ in range(19):
            await b.new_tab(server.url)
        tabs = await b.tabs()
        assert len(tabs) == 20
        for tab in tabs:
            await b.switch(tab)
            await connected(b)
        # The browser allows six connections per host: twenty streams would leave none for these.
        fetches = """
            return Promise.all(Array.from({length: 12}, (_, i) =>
                fetch('/api?n=' + i, {cache: 'no-store'}).then(r => r.status)));
        """
        assert await asyncio.wait_for(b.run(fetches), 20) == [200] * 12
        await server.edit(folder / "main.py", app_source("v2"))
        for tab in tabs:
            await b.switch(tab)
            await b.wait_for("return document.title", "v2", what="every tab reloaded")


async def test_a_page_under_a_strict_csp_with_a_nonce_still_reloads(tmp_path: Path) -> None:
    csp = "script-src 'nonce-n0nce' 'strict-dynamic'; object-src 'none'; base-uri 'none'"
    folder = project(tmp_path, csp=csp)
    async with Reloader("main:app", app_dir=folder, live_reload=True) as server, browser(tmp_path / "b") as b:
        async with httpx.AsyncClient() as client:
            page = (await client.get(server.url)).text
        assert 'nonce="n0nce" data-run=' in page
        await b.open(server.url)
        await b.wait_for("return window.pageScript", "ran")
        await connected(b)
        await server.edit(folder / "main.py", app_source("v2", csp=csp))
        await b.wait_for("return document.title", "v2", what="the reload under the CSP")
        errors = [e for e in await b.console() if e.get("level") == "SEVERE"]
        assert errors == []


async def test_a_page_opened_before_a_restart_from_scratch_recovers(tmp_path: Path) -> None:
    folder = project(tmp_path)
    async with browser(tmp_path / "b") as b:
        async with Reloader("main:app", app_dir=folder, live_reload=True) as server:
            port = int(server.url.rsplit(":", 1)[1])
            await b.open(server.url)
            await connected(b)
        write_like_an_editor(folder / "main.py", app_source("after restart"))
        async with Reloader("main:app", app_dir=folder, live_reload=True, port=port):
            await b.wait_for("return document.title", "after restart", what="the page of the new run")


# ---------------------------------------------------------------- the page's own bytes and scripts intact

TRAPS = """
import pathlib

BODY = "v1"
# Each page has "</body>" where it is no end tag, then a script of its own that notes what it saw.
TRAPS = {
    "/script": '<script>var s = "</body>"; window.marker = "ran";</script>',
    "/comment": '<!-- </body> --><script>window.marker = "ran";</script>',
    "/textarea": '<textarea id="t"></body></textarea><script>window.marker = t.value;</script>',
    "/attribute": '<div id="d" title="</body>"></div><script>window.marker = d.title;</script>',
    "/template": '<template id="t"><p></body></p></template>'
    '<script>window.marker = String(t.content.querySelectorAll("script").length);</script>',
    "/style": '<style>#h::after { content: "</body>"; }</style><h1 id="h"></h1>'
    '<script>window.marker = getComputedStyle(h, "::after").content;</script>',
    "/svg": '<svg><script>var s = "</body>";</script></svg><script>window.marker = "ran";</script>',
}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    trap = TRAPS.get(scope["path"], TRAPS["/script"])
    page = f"<!doctype html><html><head><title>{BODY}</title></head><body>{trap}</body></html>".encode()
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(page)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": page})
"""
MARKERS = {
    "/script": "ran",
    "/comment": "ran",
    "/textarea": "</body>",
    "/attribute": "</body>",
    "/template": "0",
    "/style": '"</body>"',
    "/svg": "ran",
}


async def test_a_pages_own_scripts_run_wherever_it_writes_body(tmp_path: Path) -> None:
    write(tmp_path / "main.py", TRAPS)
    async with (
        Reloader("main:app", app_dir=tmp_path, live_reload=True) as server,
        browser(tmp_path / "b") as b,
    ):
        for path, marker in MARKERS.items():
            await b.open(server.url + path)
            await b.wait_for("return window.marker", marker, what=f"the script of {path}")
            await connected(b)
        await server.edit(tmp_path / "main.py", TRAPS.replace('BODY = "v1"', 'BODY = "v2"'))
        await b.wait_for("return document.title", "v2", what="the /svg page after the edit")
        await b.wait_for("return window.marker", "ran")


GZIPPED = """
from fastapi import FastAPI
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import HTMLResponse

BODY = "v1"
app = FastAPI()
app.add_middleware(GZipMiddleware, minimum_size=500)


@app.get("/", response_class=HTMLResponse)
def page():
    filler = "<p>" + "lorem ipsum " * 100 + "</p>"
    script = "<script>window.marker = 'ran';</script>"
    return f"<html><head><title>{BODY}</title></head><body>{filler}{script}</body></html>"
"""


async def test_a_gzipping_fastapi_app_reloads_its_pages(tmp_path: Path) -> None:
    write(tmp_path / "main.py", GZIPPED)
    async with (
        Reloader("main:app", app_dir=tmp_path, live_reload=True) as server,
        browser(tmp_path / "b") as b,
    ):
        await b.open(server.url)
        await b.wait_for("return window.marker", "ran")
        await connected(b)
        await server.edit(tmp_path / "main.py", GZIPPED.replace('BODY = "v1"', 'BODY = "v2"'))
        await b.wait_for("return document.title", "v2", what="the reload of the gzipped page")


async def test_under_a_root_path_the_page_reloads(tmp_path: Path) -> None:
    write(tmp_path / "main.py", TRAPS)
    options = {"live_reload": True, "root_path": "/api"}
    async with Reloader("main:app", app_dir=tmp_path, **options) as server, browser(tmp_path / "b") as b:
        await b.open(server.url + "/")
        await b.wait_for("return window.marker", "ran")
        await connected(b)
        await server.edit(tmp_path / "main.py", TRAPS.replace('BODY = "v1"', 'BODY = "v2"'))
        await b.wait_for("return document.title", "v2", what="the reload below the root path")
        errors = [e for e in await b.console() if e.get("level") == "SEVERE"]
        assert errors == []  # no script or stream that failed to load


# Random tag soup from the pieces that decide where a tag may go: wherever the scanner puts the
# tag, Chromium's own parser must make it an HTML <script> of the page (not in a template, SVG,
# comment, attribute...), and everything else must parse as it does without it.
SOUP = (  # noqa: SIM905  (a list of 56 strings would fill two screens)
    "<script> </script> </script <script <!-- --> --!> - \" ' </body> </BODY <textarea> </textarea> "
    "<svg> </svg> <![CDATA[ ]]> <template> </template> = > < / a <div title= <! <p> </p> <math><mi> "
    "<foreignObject> <desc> <mtext> <style> </style> <? <!DOCTYPE_html> <br/> x/ <font_color=red> "
    "<title> </title> <table> <noscript> </noscript> </html> <body> <head> <select> <iframe> </iframe> "
    "<xmp> </xmp> <frameset> <plaintext>"
).split()
ORACLE = r"""
var pairs = arguments[0], done = arguments[arguments.length - 1], results = [];
function load(html) {
  return new Promise(function (resolve) {
    var frame = document.createElement("iframe");
    frame.onload = function () { resolve(frame); };
    frame.srcdoc = html;
    document.body.appendChild(frame);
  });
}
function shape(frame) { return frame.contentDocument.documentElement.outerHTML; }
(async function () {
  for (var i = 0; i < pairs.length; i++) {
    var injected = await load(pairs[i][0]), original = await load(pairs[i][1]);
    var found = injected.contentDocument.querySelectorAll('script[src="/__lr__"]');
    var html = found.length === 1 && found[0].namespaceURI === "http://www.w3.org/1999/xhtml";
    found.forEach(function (script) { script.remove(); });
    results.push([found.length, html, shape(injected) === shape(original)]);
    injected.remove();
    original.remove();
  }
  done(results);
})();
"""


async def test_chromium_reads_every_placed_tag_as_a_script_of_the_page(tmp_path: Path) -> None:
    import random

    from asgireload._worker.injection import BodyInjector

    tag = b'<script src="/__lr__" async></script>'
    rng = random.Random(20)
    pages: list[bytes] = []
    while len(pages) < 300:
        soup = "".join(rng.choice(SOUP).replace("_", " ") for _ in range(rng.randint(1, 30)))
        injector = BodyInjector(tag)
        injected = injector.feed(soup.encode(), last=True)
        if injector.inserted:
            pages.append(injected)
    pairs = [[page.decode(), page.replace(tag, b"", 1).decode()] for page in pages]
    async with browser(tmp_path / "b") as b:
        await b.open("about:blank")
        results = await b.run_async(ORACLE, pairs)
    wrong = [
        (page, result)
        for page, result in zip(pages, results, strict=True)
        if not result[2] or not (result[1] or result[0] == 0)  # none: a <frameset> took the body
    ]
    assert wrong == []
    assert sum(1 for result in results if result[1]) > 250
