"""Starting the fork server's template process, as early as the command line can.

A cold start is mostly two imports: the supervisor's own modules and asyncio, and, in the
template, an interpreter importing uvicorn; each takes about as long as the other. Done one
after the other, they make a cold start slower than uvicorn's. So the `asgireload` command
starts the template first (`start_early`, before it imports anything else), and the two
imports run on two cores at once; the template then waits for its settings. The fork server
takes that process (`take_early`) when it needs its first template, if templatelife says
nothing it inherited has changed since (the environment, where its output goes, no env file
values), and otherwise ends it and starts its own. Every template is started here, early or not, the same
way: posix_spawn, and a pidfd to learn of its exit (asyncio's child watcher does not know it).

Stdlib only, and no asyncio: this runs before those modules are imported. Linux only, as
forking is (see forkserver.unsafe_to_fork).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import socket
import sys

from .. import _reaper

TAG_LENGTH = 64  # characters of a template's tag: room for any worker's tag (template._retag)

_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # by signals.CommandLineSignals
_TRACERS = ("debugpy", "pydevd", "coverage")  # loaded before us: they follow spawned processes
# the command line's flags that turn forking off, or say the command ends before serving
_NO_TEMPLATE_FLAGS = frozenset({"-h", "--help", "--version", "--no-fork", "--no-standby", "--no-preload"})


class TemplateProcess:
    """A started template: its pid, a pidfd to learn of its exit, its channel, and the read end
    of its output when that is captured (else it writes where the supervisor does)."""

    def __init__(
        self,
        pid: int,
        pidfd: int,
        channel: socket.socket,
        output: int | None,
        tag: str,
        environment: dict[str, str],
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.channel = channel
        self.output = output
        self.tag = tag
        self.environment = environment  # what it was started with, its tag included
        self.returncode: int | None = None  # once reaped: its pid may be another process's now

    def kill(self) -> None:
        """End the template alone: the workers it forked lead sessions of their own."""
        if self.returncode is None:
            _reaper.kill_generation(self.pid, None)

    def reap(self) -> int | None:
        """Its exit code once it has exited (its pidfd is readable), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 255 << 8  # reaped by someone else: the status is lost
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def new_tag() -> str:
    """A template's tag: a worker's, padded to TAG_LENGTH."""
    tag = _reaper.new_tag(0)
    return tag + "-" + "0" * (TAG_LENGTH - len(tag) - 1)


def spawn(
    capture_output: bool, early: tuple[str, ...] | None = None, signals_to_default: tuple[int, ...] = ()
) -> TemplateProcess:
    """Start `python -P -m asgireload._worker.template FD` in a session of its own, stdin on
    /dev/null; raises OSError when the system refuses. An `early` one (given the app's folder
    and name when the command line says them, see `_app_of`) imports what uvicorn's default
    options need, and the app's warm cache, before its settings arrive."""
    tag = new_tag()
    environment = dict(os.environ)
    environment[_reaper.TAG_VARIABLE] = tag
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_end = write_end = None
    # The channel reaches the child as a copy made in the child (dup2 clears close-on-exec
    # there), never as a descriptor made inheritable here, where another thread could fork.
    channel_fd = 3 if child.fileno() != 3 else 4
    pid = None
    try:
        actions: list[tuple[object, ...]] = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, child.fileno(), channel_fd),
        ]
        if capture_output:
            read_end, write_end = os.pipe()
            actions += [(os.POSIX_SPAWN_DUP2, write_end, 1), (os.POSIX_SPAWN_DUP2, write_end, 2)]
        command = [sys.executable, "-P", "-m", "asgireload._worker.template", str(channel_fd)]
        if early is not None:
            command += ["--early", *early]
        pid = os.posix_spawn(
            sys.executable,
            command,
            environment,
            file_actions=actions,
            setsid=True,
            # as subprocess does: what Python ignores for itself is a default again in the child
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, *signals_to_default),
        )
        pidfd = os.pidfd_open(pid)
    except BaseException:
        if pid is not None:  # started, but no pidfd: ended now (just killed, it goes at once)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        parent.close()
        if read_end is not None:
            os.close(read_end)
        raise
    finally:
        child.close()
        if write_end is not None:
            os.close(write_end)
    return TemplateProcess(pid, pidfd, parent, read_end, tag, environment)


def close(process: TemplateProcess, wait: float = 1.0) -> None:
    """Kill it, reap it (waiting `wait` seconds at most: a process stuck in an uninterruptible
    read of a hung mount dies later, and is then the init process's to reap), and close what
    the supervisor holds of it."""
    process.channel.close()  # first: at end of file it exits by itself too
    if process.pidfd >= 0:
        process.kill()
        poller = select.poll()  # not select(): the supervisor's descriptors may number thousands
        poller.register(process.pidfd, select.POLLIN)
        if poller.poll(wait * 1000):
            process.reap()
        os.close(process.pidfd)
        process.pidfd = -1
    if process.output is not None:
        with contextlib.suppress(OSError):
            os.close(process.output)
        process.output = None


# ------------------------------------------------------------------ the early start

_early: TemplateProcess | None = None


def start_early(argv: list[str]) -> None:
    """Start a template now, for the fork server to take later; nothing when this command will
    not fork (or cannot tell yet cheaply: then the fork server ends it)."""
    global _early
    if _early is not None or _NO_TEMPLATE_FLAGS.intersection(argv):
        return
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        return
    if sys.gettrace() is not None or any(name in sys.modules for name in _TRACERS):
        return  # workers are spawned, for the tracer to follow (see debugging.tracer_active)
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return  # a closed standard stream: it is reopened first, before any socket
    if any(token == "--env-file" or token.startswith("--env-file=") for token in argv):
        return  # its values must be set before the template imports: see templatelife.unlike_now
    # Started as the supervisor starts its templates once it runs: the signals it handles then
    # are a default in the child, and job control's are ignored (see terminal.job_control_ignored)
    atexit.register(discard_early)  # the command ends before a fork server takes it
    ignored = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGTTIN, signal.SIGTTOU)}
    try:
        _early = spawn(capture_output=False, early=_app_of(argv), signals_to_default=_HANDLED_SIGNALS)
    except OSError:
        return  # the fork server starts one when it needs it, and reports what fails then
    finally:
        for signum, disposition in ignored.items():
            signal.signal(signum, disposition)


def _app_of(argv: list[str]) -> tuple[str, ...]:
    """The app's folder and import string, if the command line has them as `uvicorn`'s does (no
    argparse here: it is not imported yet). A wrong guess names no cache file, or another; the
    cost is then an import the template did not need, as with a stale cache."""
    app, app_dir = None, os.getcwd()
    tokens = iter(argv)
    for token in tokens:
        if token == "--app-dir":
            app_dir = next(tokens, app_dir)
        elif token.startswith("--app-dir="):
            app_dir = token.partition("=")[2]
        elif app is None and _is_import_string(token):
            app = token
    return (os.path.abspath(app_dir), app) if app is not None else ()


def _is_import_string(token: str) -> bool:
    module, colon, attribute = token.partition(":")
    names = [*module.split("."), *attribute.split(".")]
    return bool(colon) and all(name.isidentifier() for name in names)


def peek_early() -> TemplateProcess | None:
    """The early template, if there is one, for templatelife to take or refuse."""
    return _early


def take_early() -> TemplateProcess | None:
    """The early template, if there is one (once)."""
    global _early
    early, _early = _early, None
    return early


def changed_variable(process: TemplateProcess) -> str | None:
    """A variable of this process's environment that has changed here since it started, if any:
    a worker spawned now would get the new value, so a forked one must too."""
    now = dict(os.environ)
    now[_reaper.TAG_VARIABLE] = process.tag
    if now == process.environment:
        return None
    return sorted(set(now.items()) ^ set(process.environment.items()))[0][0]


def discard_early() -> None:
    """End the early template if no fork server took it."""
    global _early
    early, _early = _early, None
    if early is not None:
        close(early)
