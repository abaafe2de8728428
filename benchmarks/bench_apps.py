"""Source text of the apps the benchmarks serve.

Every ``main.py`` answers ``GET /`` with ``counter=<N>`` and ``GET /slow`` after ``asyncio.sleep(0.3)``.
Each new version carries a padding comment whose length grows with the counter, so the file size
always changes and Python's pyc check (source mtime + size) can never serve stale bytecode.
"""

from __future__ import annotations

N_ROUTES = 50
N_MODULES = 2000


def _pad(counter: int) -> str:
    return f"# version {counter}: {'x' * counter}\n"


def plain_app(counter: int) -> str:
    return (
        _pad(counter)
        + f"""import asyncio

BODY = b"counter={counter}"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        for _ in range(2):
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            else:
                await send({{"type": "lifespan.shutdown.complete"}})
                return
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(0.3)
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]
    await send({{"type": "http.response.start", "status": 200, "headers": headers}})
    await send({{"type": "http.response.body", "body": BODY}})
"""
    )


def fastapi_app(counter: int) -> str:
    routes = []
    for i in range(N_ROUTES):
        if i % 2 == 0:
            routes.append(
                f"""
@app.get("/items/{{item_id}}/r{i}", response_model=Item)
async def get_r{i}(item_id: int, q: str | None = None) -> Item:
    return Item(id=item_id, name=q or "r{i}", price={i}.5, tags=["r{i}"])
"""
            )
        else:
            routes.append(
                f"""
@app.post("/items/r{i}", response_model=Item, status_code=201)
async def post_r{i}(item: Item) -> Item:
    return item.model_copy(update={{"name": item.name + "-r{i}"}})
"""
            )
    return (
        _pad(counter)
        + f"""import asyncio

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

COUNTER = {counter}

app = FastAPI(title="bench")


class Item(BaseModel):
    id: int
    name: str = Field(min_length=1, max_length=100)
    price: float = Field(ge=0)
    tags: list[str] = []
    description: str | None = None


@app.get("/", response_class=PlainTextResponse)
async def root() -> str:
    return f"counter={{COUNTER}}"


@app.get("/slow", response_class=PlainTextResponse)
async def slow() -> str:
    await asyncio.sleep(0.3)
    return f"counter={{COUNTER}}"
"""
        + "".join(routes)
    )


def many_modules_files(counter: int, n_modules: int = N_MODULES) -> dict[str, str]:
    """A project whose main.py imports ``n_modules`` small modules from package ``mods``."""
    files = {"mods/__init__.py": ""}
    for i in range(n_modules):
        files[f"mods/m{i:04d}.py"] = (
            f'"""Module {i}."""\n\nVALUE = {i}\n\n\ndef f{i}(x: int) -> int:\n    return x + VALUE\n'
        )
    imports = "".join(f"from mods import m{i:04d}\n" for i in range(n_modules))
    total = f"TOTAL = sum(m.VALUE for m in ({', '.join(f'm{i:04d}' for i in range(n_modules))},))\n"
    files["main.py"] = plain_app(counter) + "\n" + imports + total
    return files
