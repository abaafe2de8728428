"""Ending everything a generation started, including what left its process group.

A worker leads a session of its own, so the processes the app starts share its process group
and one `killpg` ends them. A process that calls `setsid()` or double-forks leaves the group,
but it keeps its environment: every worker is spawned with a tag (`ASGIRELOAD_TAG`) that its
descendants inherit, and on Linux `/proc/<pid>/environ` shows the environment a process started
with. So when a generation ends, its group and every process carrying its tag are killed. This
module is stdlib only: the supervisor uses it after a worker exits, and the worker itself when
the supervisor disappears.
"""

from __future__ import annotations

import contextlib
import os
import signal

TAG_VARIABLE = "ASGIRELOAD_TAG"
ROUNDS = 5  # a process may fork between a look and a kill: look again, a few times at most


def new_tag(seq: int) -> str:
    return f"{os.getpid()}-{seq}-{os.urandom(4).hex()}"


def tagged_processes(tag: str) -> list[int]:
    """Processes (other than this one) whose environment carries `tag`; [] where /proc is absent."""
    needle = b"\0" + f"{TAG_VARIABLE}={tag}".encode() + b"\0"
    own = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as file:
                environ = file.read()
        except OSError:
            continue  # gone already, or not ours to read
        if needle in b"\0" + environ + b"\0":
            found.append(int(entry))
    return found


def kill_generation(group: int | None, tag: str | None) -> int:
    """SIGKILL a worker's process group and every process with its tag; the number killed."""
    if group is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    if tag is None:
        return 0
    killed = 0
    for _ in range(ROUNDS):
        pids = tagged_processes(tag)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed
