"""How a project tests its app against a real reloading server, with the asgireload fixture.

From this checkout, after the README's test install (`python -m pip install -e ".[test]"`):

    python -m pytest examples/test_with_fixture.py

In your own project, copy this file into your tests, `pip install asgireload httpx pytest
pytest-asyncio`, and run pytest with `asyncio_mode = auto` (or mark the tests with
`@pytest.mark.asyncio`).

The fixture writes the files into the test's tmp_path, runs a real server on a free port, and
`server.edit()` saves a file the way an editor does and waits for the reload.
"""

import httpx

APP = """
MESSAGE = "{message}"

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": MESSAGE.encode()}})
"""


async def test_an_edit_is_served_after_the_reload(asgireload_server):
    files = {"main.py": APP.format(message="before")}
    async with asgireload_server("main:app", files=files) as server, httpx.AsyncClient() as client:
        assert (await client.get(server.url)).text == "before"
        event = await server.edit("main.py", APP.format(message="after"))
        assert event.outcome == "ready"
        assert (await client.get(server.url)).text == "after"


async def test_a_broken_edit_shows_the_error_then_recovers(asgireload_server):
    files = {"main.py": APP.format(message="fine")}
    async with asgireload_server("main:app", files=files) as server, httpx.AsyncClient() as client:
        event = await server.edit("main.py", "def broken(:\n")
        assert event.outcome == "failed"
        assert "SyntaxError" in event.traceback
        response = await client.get(server.url)
        assert response.status_code == 500
        await server.edit("main.py", APP.format(message="fixed"))
        assert (await client.get(server.url)).text == "fixed"
