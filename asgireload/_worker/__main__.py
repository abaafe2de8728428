"""`python -P -m asgireload._worker CONTROL_FD`: the entry point of a worker process."""

from .main import main

main()
