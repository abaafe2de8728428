"""A WSGI app (what Flask or Django give you), served through uvicorn's WSGI support.

asgireload wsgi_app:application --app-dir examples --interface wsgi
"""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"Hello from a WSGI app. Edit examples/wsgi_app.py and reload.\n"]
