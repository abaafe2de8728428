"""The smallest app: plain ASGI, no framework.

    asgireload hello:app --app-dir examples

Edit MESSAGE below and save: the open page shows it by itself (live reload).
"""

import html

MESSAGE = "Hello from asgireload. Edit examples/hello.py and save: this page follows by itself."


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    page = f"<!doctype html><title>asgireload</title><h1>{html.escape(MESSAGE)}</h1>"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/html; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": page.encode()})
