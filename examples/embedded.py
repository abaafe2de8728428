"""serve() inside your own asyncio program, next to another task.

    python examples/embedded.py

The app below is found by asgireload in this very file (imported as the module `embedded`,
never run as __main__ again), so edits to it reload the server while the ticker keeps going.
Ctrl-C cancels both tasks; serve() drains its workers before it returns.
"""

import asyncio
import contextlib
import logging
import os

from asgireload import serve

GREETING = b"Hello from an app served next to another task.\n"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": GREETING})


async def ticker():
    for tick in range(1, 10**9):
        await asyncio.sleep(5)
        logging.getLogger("example").info("the other task is still running (tick %d)", tick)


async def main():
    logging.basicConfig(level=logging.INFO, format="%(levelname)-9s %(message)s")
    async with asyncio.TaskGroup() as tasks:
        port = int(os.environ.get("PORT", "8000"))
        tasks.create_task(serve(app, reload=True, port=port))
        tasks.create_task(ticker())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
