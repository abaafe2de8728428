"""The apps of the big-project benchmark (bench_project.py), as {relative path: source}.

A generated FastAPI project, `app/`: `models/m{i}.py` (a pydantic model each), `services/s{i}.py`
(each imports models i and i+1, so every model is imported by two services), `routers/r{i}.py` (a
router each, using service i), and `routers/__init__.py` including every router, the way real
projects do. `ml/weights.py` takes `SLOW_IMPORT_S` at import (a model load) and is imported by
`services/s0.py`. `main.py` builds the app from the routers. GET /r{i} answers the route file's
`BODY`; GET /r{i}/model answers model i's `LABEL` through service i.

The heavy app: `model.py` takes 3 s at import, the lifespan 2 s, and `main.py` answers its `BODY`.
"""

from __future__ import annotations

ROUTE_EDITED = 7  # the route file edited again and again: app/routers/r7.py
MODEL_EDITED = 20  # the model edited: app/models/m20.py, imported by services 19 and 20
SLOW_IMPORT_S = 1.0

MODEL = '''\
"""Model {i}."""

from pydantic import BaseModel, Field

LABEL = {label!r}


class Item{i}(BaseModel):
    id: int
    name: str = Field(min_length=1, max_length=100)
    price: float = 0.0
    tags: list[str] = []
    owner_id: int | None = None


class Item{i}Update(BaseModel):
    name: str | None = None
    price: float | None = None
'''

SERVICE = '''\
"""Service {i}: uses models {i} and {j}."""

from app.models import m{i}, m{j}
{extra}

def label() -> str:
    return m{i}.LABEL


def get(item_id: int) -> m{i}.Item{i}:
    return m{i}.Item{i}(id=item_id, name="item {i}")


def related(item_id: int) -> m{j}.Item{j}:
    return m{j}.Item{j}(id=item_id, name="related {j}")
'''

ROUTER = '''\
"""Router {i}."""

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from app.models.m{i} import Item{i}, Item{i}Update
from app.services import s{i}

BODY = {body!r}
router = APIRouter(tags=["r{i}"])


@router.get("/r{i}", response_class=PlainTextResponse)
async def body() -> str:
    return BODY


@router.get("/r{i}/model", response_class=PlainTextResponse)
async def model() -> str:
    return s{i}.label()


@router.get("/r{i}/items/{{item_id}}")
async def read(item_id: int) -> Item{i}:
    return s{i}.get(item_id)


@router.patch("/r{i}/items/{{item_id}}")
async def update(item_id: int, change: Item{i}Update) -> Item{i}:
    return s{i}.get(item_id).model_copy(update=change.model_dump(exclude_unset=True))
'''

WEIGHTS = f'''\
"""A model load: {SLOW_IMPORT_S} s at import."""

import time

time.sleep({SLOW_IMPORT_S})
WEIGHTS = [0.5] * 1000
'''

MAIN = """\
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from app.routers import ROUTERS

app = FastAPI()
for router in ROUTERS:
    app.include_router(router)


@app.get("/", response_class=PlainTextResponse)
async def root() -> str:
    return "ok"
"""


def counts(modules: int) -> int:
    """Models, services and routers each (a third of the project's modules)."""
    return max(MODEL_EDITED + 2, modules // 3)


def route_source(i: int, body: str) -> str:
    return ROUTER.format(i=i, body=body)


def model_source(i: int, label: str) -> str:
    return MODEL.format(i=i, label=label)


def big_project_files(modules: int) -> dict[str, str]:
    n = counts(modules)
    files = {
        "main.py": MAIN,
        "app/__init__.py": "",
        "app/models/__init__.py": "",
        "app/services/__init__.py": "",
    }
    files["app/ml/__init__.py"] = ""
    files["app/ml/weights.py"] = WEIGHTS
    for i in range(n):
        files[f"app/models/m{i}.py"] = model_source(i, "counter=0")
        extra = "from app.ml import weights  # noqa: F401\n" if i == 0 else ""
        files[f"app/services/s{i}.py"] = SERVICE.format(i=i, j=(i + 1) % n, extra=extra)
        files[f"app/routers/r{i}.py"] = route_source(i, "counter=0")
    imports = "".join(f"from . import r{i}\n" for i in range(n))
    files["app/routers/__init__.py"] = (
        imports + f"\nROUTERS = [{', '.join(f'r{i}.router' for i in range(n))}]\n"
    )
    return files


HEAVY_MODEL = """\
\"\"\"A model that takes 3 s to load at import.\"\"\"

import time

time.sleep(3.0)
WEIGHTS = [0.5] * 1000
"""

HEAVY_MAIN = """\
import asyncio
import contextlib

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

import model

BODY = {body!r}


@contextlib.asynccontextmanager
async def lifespan(app):
    await asyncio.sleep(2.0)  # warming caches, connecting to services
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/", response_class=PlainTextResponse)
async def root() -> str:
    return "ok"


@app.get("/body", response_class=PlainTextResponse)
async def body() -> str:
    return BODY


@app.get("/weights")
async def weights() -> int:
    return len(model.WEIGHTS)
"""


def heavy_main_source(body: str) -> str:
    return HEAVY_MAIN.format(body=body)


def heavy_app_files() -> dict[str, str]:
    return {"main.py": heavy_main_source("counter=0"), "model.py": HEAVY_MODEL}
