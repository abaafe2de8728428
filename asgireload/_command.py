"""The `asgireload` command (and `python -m asgireload`): the fork server's template first.

The template's interpreter imports uvicorn while this one imports the supervisor, each on a
core of its own, so a cold start costs the longer of the two rather than their sum (see
`_supervisor/templatespawn.py`). Hence this module imports nothing else before that start.
"""

import sys


def main() -> None:
    try:
        from ._supervisor import templatespawn

        templatespawn.start_early(sys.argv[1:])
        from . import cli

        cli.main()
    except KeyboardInterrupt:  # CTRL+C while starting up: a stop, as later, not a traceback
        raise SystemExit(130) from None
