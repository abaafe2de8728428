"""A headless Chromium for tests, driven over the W3C WebDriver HTTP API of chromedriver.

No selenium: chromedriver speaks JSON over HTTP, and httpx is a test dependency already. One
chromedriver (on a free loopback port) and one browser session per `Browser`; both end in
`close()`, whatever happened. Waits poll something the page exposes, always with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Flags that let Chromium run here as root without a display, and keep it off the network: without
# the background-networking ones it keeps trying to reach Google's services.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--window-size=1000,800",
)


def require_browser() -> None:
    """Skip without Chromium and chromedriver; fail instead on CI, which must have installed them."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        message = f"{', '.join(missing)} not found: apt-get install chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class WebDriverError(AssertionError):
    pass


class Browser:
    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.driver: asyncio.subprocess.Process | None = None
        self.client = httpx.AsyncClient(timeout=30.0)
        self.base = ""
        self.session = ""

    async def start(self) -> None:
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.driver = await asyncio.create_subprocess_exec(
            CHROMEDRIVER,
            f"--port={port}",
            "--allowed-ips=127.0.0.1",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        async with asyncio.timeout(20):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await self.client.get(f"{self.base}/status")).json()["value"]["ready"]:
                        break
                if self.driver.returncode is not None:
                    raise WebDriverError(f"chromedriver exited with {self.driver.returncode}")
                await asyncio.sleep(0.05)
        options = {"binary": CHROMIUM, "args": [*FLAGS, f"--user-data-dir={self.profile}"]}
        capabilities = {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
            "pageLoadStrategy": "normal",
        }
        answer = await self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        self.session = answer["sessionId"]

    async def close(self) -> None:
        try:
            if self.session:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(15):
                        await self.client.delete(f"{self.base}/session/{self.session}")
        finally:
            await self.client.aclose()
            if self.driver is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.driver.pid, 9)  # chromedriver and any browser it left behind
                async with asyncio.timeout(10):
                    await self.driver.wait()

    async def _call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        response = await self.client.request(method, self.base + path, json=body, timeout=timeout)
        value = response.json().get("value")
        if response.status_code != 200:
            raise WebDriverError(f"{method} {path}: {value}")
        return value

    async def _session(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        return await self._call(method, f"/session/{self.session}{path}", body, timeout)

    async def open(self, url: str) -> None:
        await self._session("POST", "/url", {"url": url})

    async def run(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body: use `return`) in the current tab."""
        return await self._session("POST", "/execute/sync", {"script": script, "args": list(args)})

    async def run_async(self, script: str, *args: Any, timeout: float = 100.0) -> Any:
        """Run `script` in the current tab until it calls its last argument with the result."""
        await self._session("POST", "/timeouts", {"script": int(timeout * 1000)})
        body = {"script": script, "args": list(args)}
        return await self._session("POST", "/execute/async", body, timeout + 10)

    async def new_tab(self, url: str) -> str:
        handle: str = (await self._session("POST", "/window/new", {"type": "tab"}))["handle"]
        await self.switch(handle)
        await self.open(url)
        return handle

    async def switch(self, handle: str) -> None:
        await self._session("POST", "/window", {"handle": handle})

    async def tabs(self) -> list[str]:
        handles: list[str] = await self._session("GET", "/window/handles")
        return handles

    async def console(self) -> list[dict[str, Any]]:
        """The browser console's entries since the last call."""
        entries: list[dict[str, Any]] = await self._session("POST", "/se/log", {"type": "browser"})
        return entries

    async def wait_for(self, script: str, expected: Any, timeout: float = 15.0, what: str = "") -> Any:
        """Poll `script`'s value until it equals `expected`; fail with the last value past `timeout`."""
        value: Any = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    with contextlib.suppress(WebDriverError):  # a page in the middle of loading
                        value = await self.run(script)
                        if value == expected:
                            return value
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or script} == {expected!r}; last: {value!r}"
            ) from None


@contextlib.asynccontextmanager
async def browser(profile: Path) -> AsyncIterator[Browser]:
    require_browser()
    instance = Browser(profile)
    try:
        await instance.start()
        yield instance
    finally:
        await instance.close()
