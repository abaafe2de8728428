"""The fork server's template: `python -P -m asgireload._worker.template CONTROL_FD` (Linux).

It starts like a worker (the same module, so the same imports: uvicorn, the protocols its
options choose, and the installed modules in the preload list of the Settings it reads first),
then, instead of loading an app, waits on its channel and forks a worker for each request. A
forked child is a worker from the line after `fork()`: it leads a session of its own, carries its
own generation tag, and runs `main.run()` on the control socket it was handed, exactly as a
spawned worker would, minus the interpreter's start-up and the imports, which it shares with
the template page for page until it writes to them.

Fork is only safe with one thread: if anything imported started a thread, the template says
so in its hello and exits, and the supervisor spawns workers instead. It never starts an
event loop either. It reaps its children (through pidfds, in one poll with its channel) and
tells the supervisor how each ended; the supervisor knows of their exit from a pidfd of its
own, sent with the answer to the fork request. At end of file on its channel it exits: the
workers it forked end by themselves when their own channels close.

The one the `asgireload` command starts first (`--early [APP_DIR APP]`, see
_supervisor/templatespawn.py) has time before its settings come: it imports uvicorn's default
protocols and, when the command line names the app, the modules of its warm cache.
"""

from __future__ import annotations  # noqa: I001  (main first: see below)

# first: it notes what the interpreter's start-up and uvicorn imported, before anything of the
# template's own (a project module named like one of those must win, as under uvicorn)
from . import main as worker

import ctypes  # loaded here, so that a forked worker finds it loaded
import gc
import importlib
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import threading
import traceback
import types
from typing import Any, NoReturn

import uvicorn

from .. import _reaper, _warmcache, _wire
from .._preload import import_each
from .. import _protocol as protocol
from . import exiting, layer, layerenv


def _read_settings(
    receiver: _wire.LineReceiver,
) -> tuple[protocol.Settings, list[tuple[dict[str, Any], list[int]]]]:
    """The settings, and the requests that came right behind them (with their descriptors)."""
    received = _read_settings_like(receiver)
    (first, _), rest = received[0], received[1:]
    if first.get("type") != protocol.Settings.TYPE:
        print("asgireload fork server: no settings first; exiting.", file=sys.stderr)
        os._exit(1)
    return protocol.decode_as(protocol.Settings, first), rest


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _read_settings_like(receiver: _wire.LineReceiver) -> list[tuple[dict[str, Any], list[int]]]:
    """The first lines on a channel, waited for (end of file: the supervisor is gone)."""
    received: list[tuple[dict[str, Any], list[int]]] = []
    while not received:
        messages = receiver.receive()
        if messages is None:
            os._exit(0)
        received += messages
    return received


def _warm_up(options: dict[str, Any]) -> None:
    """What every worker imports before the app: uvicorn's protocols for these options (the
    defaults: {}), and the event loop's module. Enough to fork the first worker."""
    worker._uvicorn_imports(options)
    # no logging set-up here: a forked worker applies its own (uvicorn's default, or --log-config,
    # which must find uvicorn's loggers as a fresh interpreter has them)
    uvicorn.Config(app="unused:app", loop=options.get("loop", "auto"), log_config=None).get_loop_factory()


def _preload(names: tuple[str, ...]) -> tuple[int, list[str]]:
    """The installed modules the app imported last time: all that import. The failures are left
    to the forked worker, which reports the first through its own hello, as a spawned one does."""
    failed = [name for name, _error in import_each(names)]
    return len(names) - len(failed), failed


def _retag(tag: str) -> None:
    """Carry `tag` as a spawned worker does, also where `_reaper` looks: /proc/PID/environ shows
    the environment block the process started with, which a forked child shares with the
    template. The template was started with a tag at least as long as any worker's, so the
    new one is written over it in place (padded with NULs); its children inherit both."""
    value = tag.encode()
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_void_p
    address = libc.getenv(_reaper.TAG_VARIABLE.encode())
    if address:
        old = ctypes.string_at(address)
        if len(value) <= len(old):
            ctypes.memmove(address, value + b"\0" * (len(old) - len(value)), len(old))
    os.environ[_reaper.TAG_VARIABLE] = tag


def _look_spawned(control_fd: int) -> None:
    """What a spawned worker's app finds in `sys.argv` and `__main__` (`python -m asgireload._worker
    CONTROL_FD`). multiprocessing's spawn and forkserver children run `__main__` again by its
    module name: the template's would make them import the template, and the worker's set-up
    would take PYTHONPATH's folders off their `sys.path`."""
    spec = importlib.util.find_spec("asgireload._worker.__main__")
    assert spec is not None
    assert spec.origin is not None
    sys.argv = [spec.origin, str(control_fd)]
    main = types.ModuleType("__main__")
    main.__spec__, main.__file__, main.__loader__ = spec, spec.origin, spec.loader
    main.__package__ = spec.parent
    sys.modules["__main__"] = main


def _become_worker(tag: str, fds: list[int], control: socket.socket, pidfds: list[int]) -> NoReturn:
    """The forked child: a worker from here on, never back into the template's loop."""
    code = 1
    try:
        os.setsid()  # its own session and process group, as a spawned worker has
        control.close()  # the template's channel and its children's pidfds are not the worker's
        for fd in pidfds:
            os.close(fd)
        _retag(tag)
        exiting.disown_template_finalizers()
        control_fd, handoff_fd, listen_fd, debug_fd = fds
        _look_spawned(control_fd)
        worker.run(control_fd, (handoff_fd, listen_fd, debug_fd))
        code = 0
    except SystemExit as exc:
        code = exiting.exit_code(exc)
    except BaseException:
        traceback.print_exc()
    finally:
        exiting.leave(code)  # as a spawned worker's interpreter ends it: atexit handlers and all


def _become_layer(
    settings: protocol.Settings, fd: int, control: socket.socket, pidfds: list[int]
) -> NoReturn:
    """The forked child: a project layer (see layer.py), then a template serving its own channel,
    whose first line says which modules to hold (a long line: not the base template's to read)."""
    try:
        parent = os.getppid()
        # killed with the template: the supervisor may stop it (SIGSTOP) while a reload runs, and
        # a stopped process would not see its channel close if the supervisor were SIGKILLed
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(0)
        control.close()
        for pidfd in pidfds:
            os.close(pidfd)
        channel = socket.socket(fileno=fd)
        receiver = _wire.LineReceiver(channel, max_line=protocol.TRUSTED_MAX_LINE)
        (first, _), *_rest = _read_settings_like(receiver)
        modules = first.get("modules")
        if first.get("type") != "hold" or not isinstance(modules, list):
            os._exit(1)
        layerenv.APP_SETS = frozenset(str(name) for name in first.get("env") or ())
        layer.FINGERPRINTS = {
            str(k): v for k, v in (first.get("fingerprints") or {}).items() if isinstance(v, int)
        }
        report = layer.become_layer(channel, settings, [str(name) for name in modules], _django_plan(first))
        if report["type"] != "layered":
            os._exit(0)  # the supervisor launches another without that module
        template = Template(channel, receiver, [], settings)
        gc.collect()
        gc.freeze()
        template.serve()
    except BaseException:
        traceback.print_exc()
        os._exit(1)


def _django_plan(hold: dict[str, Any]) -> layer.DjangoPlan | None:
    """The `django` of a `hold` message: {"settings": name, "env": {variable: value}}, or None."""
    plan = hold.get("django")
    if not isinstance(plan, dict) or not isinstance(plan.get("settings"), str):
        return None
    env = plan.get("env")
    pairs = env.items() if isinstance(env, dict) else ()
    return plan["settings"], {str(key): str(value) for key, value in pairs}


class Template:
    def __init__(
        self,
        control: socket.socket,
        receiver: _wire.LineReceiver,
        received: list[tuple[dict[str, Any], list[int]]],
        settings: protocol.Settings | None = None,
    ) -> None:
        self.control = control
        self.settings = settings  # what a project layer forked from here needs to import
        self.receiver = receiver
        self.received = received  # requests read with the settings
        self.poller = select.poll()
        self.poller.register(control, select.POLLIN)
        self.children: dict[int, int] = {}  # pidfd -> pid
        self.retired = False

    def serve_waiting(self) -> None:
        """Fork for the requests already here (the first worker's), without waiting for more."""
        received, self.received = self.received, []
        self._handle(received)
        self.control.setblocking(False)
        try:
            self._requests()
        except BlockingIOError:
            pass
        finally:
            self.control.setblocking(True)

    def warm_up(self, names: list[str]) -> None:
        """Import these installed modules and say `warm`; with a thread running after that, stop
        forking (it could copy a lock the thread holds) and exit once the workers have."""
        imported, failed = _preload(tuple(names))
        _say_hello(self.control, "warm", preloaded=imported, failed=failed)
        if threading.active_count() > 1:
            self.retired = True
            self._exit_if_done()
        gc.collect()
        gc.freeze()  # what the template built stays untouched by the children's collections: shared

    def serve(self) -> NoReturn:
        while True:
            for fd, _events in self.poller.poll():
                if fd == self.control.fileno():
                    self._requests()
                else:
                    self._reap(fd)

    def _requests(self) -> None:
        try:
            messages = self.receiver.receive()
        except BlockingIOError:
            raise
        except (_wire.ProtocolError, OSError) as exc:
            print(f"asgireload fork server: {exc}; exiting.", file=sys.stderr)
            os._exit(1)
        if messages is None:  # the supervisor is gone; its workers notice by themselves
            exiting.leave(0, wait_for_threads=False)
        self._handle(messages)

    def _handle(self, messages: list[tuple[dict[str, Any], list[int]]]) -> None:
        for message, fds in messages:
            if message["type"] == "retire" and not fds:
                self.retired = True  # replaced: exit once the workers forked from here are gone
                self._exit_if_done()
                continue
            modules = message.get("modules")
            if message["type"] == "preload" and not fds and isinstance(modules, list):
                self.warm_up([str(name) for name in modules])  # what the app turned out to import
                continue
            if message["type"] == "layer" and len(fds) == 1:
                self._fork_layer(fds[0])
                continue
            tag = message.get("tag")
            if message["type"] != "fork" or len(fds) != 4 or not isinstance(tag, str):
                print(
                    f"asgireload fork server: unexpected {json.dumps(message)[:80]}; exiting.",
                    file=sys.stderr,
                )
                os._exit(1)
            self._fork(tag, fds)

    def _fork(self, tag: str, fds: list[int]) -> None:
        try:
            if self.retired:
                raise OSError("this fork server has stopped forking")
            exiting.flush_standard_streams()  # what is buffered is written once, not once per child
            gc.freeze()  # everything so far is the template's (see exiting._flush_open_files)
            pid = os.fork()
        except OSError as exc:  # out of memory or processes: the supervisor spawns this one
            pid = -1
            _wire.send(self.control, {"type": "refused", "error": str(exc)})
        if pid == 0:
            _become_worker(tag, fds, self.control, list(self.children))
        for fd in fds:
            os.close(fd)
        if pid < 0:
            return
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = pid
        self.poller.register(pidfd, select.POLLIN)
        _wire.send(self.control, {"type": "forked", "pid": pid}, [pidfd])

    def _fork_layer(self, fd: int) -> None:
        """Fork a project layer (layer.py): a template of its own on `fd`, reaped here like a worker."""
        if self.retired or self.settings is None:
            os.close(fd)
            _wire.send(self.control, {"type": "refused", "error": "this fork server forks no layers"})
            return
        exiting.flush_standard_streams()
        gc.freeze()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(fd)
            _wire.send(self.control, {"type": "refused", "error": str(exc)})
            return
        if pid == 0:
            _become_layer(self.settings, fd, self.control, list(self.children))
        os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = pid
        self.poller.register(pidfd, select.POLLIN)
        _wire.send(self.control, {"type": "forked", "pid": pid}, [pidfd])

    def _reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        returncode = os.waitstatus_to_exitcode(status)
        _wire.send(self.control, {"type": "exited", "pid": pid, "returncode": returncode})
        self._exit_if_done()

    def _exit_if_done(self) -> None:
        if self.retired and not self.children:
            exiting.leave(0, wait_for_threads=False)  # its own finalizers: no worker uses its objects now


def main() -> None:
    control_fd = int(sys.argv[1])
    # Started with posix_spawn, it inherited every inheritable descriptor of the process that
    # started it (an embedding program's, a test runner's): none may reach the workers it forks.
    os.closerange(3, control_fd)
    os.closerange(control_fd + 1, os.sysconf("SC_OPEN_MAX"))
    os.set_inheritable(control_fd, False)
    control = socket.socket(fileno=control_fd)
    receiver = _wire.LineReceiver(control, max_line=protocol.TRUSTED_MAX_LINE)  # the settings' size
    early = sys.argv[2:]
    if early[:1] == ["--early"]:
        # It has time before its settings come (the supervisor is still importing): what the
        # defaults need, and the app's warm cache. The supervisor forks from it only when no
        # env file value should have been set first (templatespawn.unlike_now); other options
        # import their own modules below, and one imported here unused is as a stale preload.
        _warm_up({})
        if len(early) == 3:  # the app's folder and name: what it imported last time, now
            _preload(_warmcache.load_path(_warmcache.path_for_app(early[1], early[2])))
    settings, received = _read_settings(receiver)
    os.environ.update(settings.env)  # the env file, before anything is preloaded (as a worker)
    os.environ["ASGIRELOAD_WORKER"] = "1"
    _warm_up(settings.uvicorn)
    if threading.active_count() > 1:  # uvicorn's own imports started one: no forking at all
        _say_hello(control, "warm")
        os._exit(0)
    # Two hellos: the first once a worker can be forked (it imports the app's packages itself,
    # as a spawned one would), the second once the preload list is imported too. The requests
    # that came in between are forked first, so preloading never delays the first generation.
    _say_hello(control, "hello")
    template = Template(control, receiver, received, settings)
    template.serve_waiting()
    template.warm_up(list(settings.preload))
    template.serve()


def _say_hello(control: socket.socket, kind: str, **more: object) -> None:
    """`hello` (forking is possible) or `warm` (and the preload list is imported), with the
    threads running (more than one: no forking) and every module imported so far."""
    message = {"type": kind, "pid": os.getpid(), "threads": threading.active_count(), **more}
    _wire.send(control, {**message, "modules": sorted(sys.modules)})


if __name__ == "__main__":
    main()
