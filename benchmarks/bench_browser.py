"""Live reload, from a save to the page showing it, in a real headless Chromium.

    python benchmarks/bench_browser.py [--runs 10]

Runs `python -m asgireload` on a free loopback port with a small HTML app and one stylesheet,
opens the page in headless Chromium (driven over WebDriver by tests/browser.py), then saves, one
at a time, 10 code edits and 10 stylesheet edits, the way editors save (temp file + rename).

How the time is taken: the script notes the wall clock just before the rename; the page notes
`Date.now()` itself (same clock, same machine) when the edit shows:
- code: an inline script at the end of the new page's body, run as the new page is parsed;
- stylesheet: a `load` listener (capturing, on the document) for the re-fetched `<link>`, and the
  computed colour is checked to be the new one.
The WebDriver polling only reads those numbers afterwards, so its own speed does not count. For a
code edit, the new page's `performance.timeOrigin` (when its navigation started) splits the time
into the live reload's part (the page hearing of the new generation and starting to reload) and
the browser's (loading the page, as pressing F5 would); 10 reloads of the same page by hand, with
no edit, give that F5 time for comparison. The
reload's own time is asgireload's "Reloaded in N ms" log line for the same save (from the change
to the old generation no longer answering). Saves are PAUSE (1 s) apart, so each reload finds its
warm standby ready, as it does when a person edits. Prints medians; --json keeps every sample.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import Browser  # noqa: E402

APP = """
import pathlib

HERE = pathlib.Path(__file__).parent
VERSION = {version}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/site.css":
        body, kind = (HERE / "site.css").read_bytes(), b"text/css"
    else:
        body = (
            f'<!doctype html><html><head><title>v{{VERSION}}</title><link rel="stylesheet" href="/site.css">'
            f'</head><body><h1 id="h">v{{VERSION}}</h1>'
            f'<script>window.shownAt = Date.now();</script></body></html>'
        ).encode()
        kind = b"text/html; charset=utf-8"
    await send({{"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}})
    await send({{"type": "http.response.body", "body": body}})
"""
# Between two saves, as a developer pauses: the next warm standby is ready by then, as in use.
PAUSE = 1.0
RELOADED = re.compile(r"Reloaded in (\d+(?:\.\d+)?) ms \(generation (\d+)\)")


def save(path: Path, text: str) -> float:
    """Write like an editor; return the wall clock (ms) just before the rename."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    started = time.time() * 1000
    os.replace(temporary, path)
    return started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait(browser: Browser, script: str, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(Exception):
                value = await browser.run(script)
                if value:
                    return value
            await asyncio.sleep(0.01)


async def reload_line(log: Path, generation: int, timeout: float = 10.0) -> float:
    async with asyncio.timeout(timeout):
        while True:
            for match in RELOADED.finditer(await asyncio.to_thread(log.read_text)):
                if int(match.group(2)) == generation:
                    return float(match.group(1))
            await asyncio.sleep(0.01)


async def measure(runs: int, folder: Path, extra: list[str]) -> dict[str, list[float]]:
    (folder / "main.py").write_text(APP.format(version=1))
    (folder / "site.css").write_text("h1 { color: rgb(0, 0, 0); }\n")
    port = free_port()
    log = folder / "server.log"
    with log.open("w") as out:
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asgireload", "main:app", "--port", str(port), "--app-dir", str(folder),
            "--no-access-log", *extra, cwd=folder, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    browser = Browser(folder / "profile")
    samples: dict[str, list[float]] = {"code": [], "reload": [], "navigation": [], "css": [], "f5": []}
    try:
        await browser.start()
        url = f"http://localhost:{port}/"
        async with asyncio.timeout(20):
            while True:
                with contextlib.suppress(Exception):
                    await browser.open(url)
                    if await browser.run("return document.title") == "v1":
                        break
                await asyncio.sleep(0.1)
        await wait(browser, "return window.asgireloadLive && window.asgireloadLive.events > 0")
        for i in range(2, runs + 2):
            await asyncio.sleep(PAUSE)
            saved = save(folder / "main.py", APP.format(version=i))
            shown = await wait(browser, f"return document.title === 'v{i}' && window.shownAt")
            samples["navigation"].append(await browser.run("return performance.timeOrigin") - saved)
            samples["code"].append(shown - saved)
            samples["reload"].append(await reload_line(log, i))
            await wait(browser, "return window.asgireloadLive && window.asgireloadLive.events > 0")
        for _ in range(runs):  # the same page reloaded by hand, no edit: the browser's own cost
            before = await browser.run("return window.shownAt")
            await browser.run("setTimeout(function () { location.reload(); }, 0);")
            shown = await wait(browser, f"return window.shownAt > {before} && window.shownAt")
            samples["f5"].append(shown - await browser.run("return performance.timeOrigin"))
        await wait(browser, "return window.asgireloadLive && window.asgireloadLive.events > 0")
        await browser.run(
            "document.addEventListener('load', function (e) {"
            " if (e.target.tagName === 'LINK') { window.cssAt = Date.now(); } }, true);"
        )
        for i in range(runs):
            colour = f"rgb({i + 1}, 0, 0)"
            await browser.run("window.cssAt = 0;")
            saved = save(folder / "site.css", f"h1 {{ color: {colour}; }}\n")
            loaded = await wait(
                browser,
                f"return getComputedStyle(document.getElementById('h')).color === '{colour}' && window.cssAt",
            )
            samples["css"].append(loaded - saved)
    finally:
        await browser.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        async with asyncio.timeout(15):
            await server.wait()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep-log", type=Path, help="copy the server's log here")
    parser.add_argument("--asgireload-arg", action="append", default=[], help="pass this to asgireload")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        samples = asyncio.run(measure(options.runs, Path(folder), options.asgireload_arg))
        if options.keep_log:
            options.keep_log.write_text((Path(folder) / "server.log").read_text())
    extra = [c - r for c, r in zip(samples["code"], samples["reload"], strict=True)]
    trigger = [n - r for n, r in zip(samples["navigation"], samples["reload"], strict=True)]
    loading = [c - n for c, n in zip(samples["code"], samples["navigation"], strict=True)]
    rows = [
        ("code edit: save to the new page parsed", samples["code"]),
        ("code edit: asgireload's own reload time (its log line)", samples["reload"]),
        ("code edit: the page shown, after the reload's own time", extra),
        ("  of which: the page starting to reload, after the reload's own time", trigger),
        ("  of which: the browser loading the page (as F5 would)", loading),
        ("for comparison: F5 of the same page, no edit, navigation to page parsed", samples["f5"]),
        ("stylesheet edit: save to the new stylesheet applied", samples["css"]),
    ]
    print(f"| figure (median of {options.runs}) | ms |")
    print("|---|---:|")
    for label, values in rows:
        print(f"| {label} | {statistics.median(values):.1f} |")
    if options.json:
        options.json.write_text(json.dumps(samples, indent=1))


if __name__ == "__main__":
    main()
