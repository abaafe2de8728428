"""The worker side: everything that runs in a worker process, and nothing of the supervisor.

`python -P -m asgireload._worker CONTROL_FD` runs `main.main()`: read the settings, start warm,
load the app (`loader`), serve it with uvicorn (`server`, with uvicorn's HTTP protocols taught
to stop at a request boundary, `httpprotocols`, for handing connections over), or serve the
`errorpage` while the app is broken.
"""
