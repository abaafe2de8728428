"""A Starlette app with a lifespan, a JSON route and a websocket.

    pip install starlette
    asgireload starlette_app:app --app-dir examples

The lifespan runs once per generation: watch the log as you save this file.
A websocket client connected during a reload is closed with code 1012
(service restart), which tells it to reconnect.
"""

import contextlib
import os

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket


@contextlib.asynccontextmanager
async def lifespan(app):
    print(f"lifespan start-up in worker {os.getpid()}", flush=True)
    app.state.greeting = "hello"
    yield
    print(f"lifespan shut-down in worker {os.getpid()}", flush=True)


async def home(request):
    return JSONResponse({"greeting": request.app.state.greeting, "worker": os.getpid()})


async def echo(websocket: WebSocket):
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(f"echo: {text}")


app = Starlette(routes=[Route("/", home), WebSocketRoute("/ws", echo)], lifespan=lifespan)
