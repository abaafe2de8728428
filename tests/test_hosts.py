"""End to end: while bound to loopback, only loopback Hosts see tracebacks (DNS rebinding)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from asgireload import Reloader

from .conftest import until, write

TEXT = {"accept": "text/plain"}
SECRET = "secret detail"


async def error_page(client: httpx.AsyncClient, url: str, host: str) -> str:
    response = await client.get(url, headers={**TEXT, "host": host})
    assert response.status_code == 500, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-asgireload"] == "error"
    return response.text


async def http10_without_host(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET / HTTP/1.0\r\nAccept: text/plain\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()  # HTTP/1.0: the server closes after the response
    finally:
        writer.close()
        await writer.wait_closed()


async def test_only_loopback_hosts_see_the_traceback(plain_app: Path) -> None:
    write(plain_app / "main.py", f"raise RuntimeError({SECRET!r})\n")
    async with Reloader("main:app", app_dir=plain_app) as server, httpx.AsyncClient() as client:
        assert server.state == "failed"
        port = server.port

        for host in ("attacker.example", f"attacker.example:{port}", f"localhost.evil.com:{port}"):
            hidden = await error_page(client, server.url, host)
            assert SECRET not in hidden, host
            assert "main.py" not in hidden, host
            assert "Traceback" not in hidden, host
            assert "RuntimeError" in hidden, host  # the exception type is all it shows
            assert f"http://localhost:{port}/" in hidden, host

        raw = await http10_without_host(server.host, port)
        assert raw.startswith(b"HTTP/1.1 500") or raw.startswith(b"HTTP/1.0 500"), raw[:100]
        assert SECRET.encode() not in raw
        assert b"main.py" not in raw

        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
            shown = await error_page(client, server.url, host)
            assert SECRET in shown, host
            assert "main.py" in shown, host

        await until(lambda: "attacker.example" in server.output, what="the worker's warning")
        assert server.output.count("The error page hid its details") == 1  # once, naming the first Host
        assert "attacker.example" in server.output.split("The error page hid its details")[1]
