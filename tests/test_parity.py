"""A forked worker is, to the app, a freshly spawned one: parity, observed by a probe app.

The same probe app runs forked (the default on Linux) and spawned (`fork=False`); each
generation answers what it sees (sys.path, flags, environment, descriptors, signals, random
state, the import system) and leaves files behind as it exits (its atexit handler, its logging
handlers' shutdown, its open files, its temporary folder's clean-up). The two runs must agree,
except where README's fork server section says why not. Also: a change to site-packages that
would change what a fresh interpreter sees replaces the warm processes, so the next reload has
it, forked or not.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from asgireload import Reloader
from asgireload._supervisor import forkserver
from asgireload._supervisor.sitestate import SiteState
from asgireload._supervisor.table import WorkerStage

from .conftest import until, write
from .test_forkserver import GLIBC_INTERNAL
from .test_lifecycle import our_processes

pytestmark = pytest.mark.skipif(forkserver.unsafe_to_fork() is not None, reason="forking needs Linux")

# asgireload's own variables that differ from one worker to the next, whichever way it started
PER_WORKER_VARIABLES = {"ASGIRELOAD_TAG"}

PROBE = """
import atexit, faulthandler, gc, json, logging, logging.handlers, os, random, resource, signal, sys
import multiprocessing.spawn, tempfile, threading, warnings

OUT = {out!r}
PID = os.getpid()
SCRATCH = tempfile.TemporaryDirectory(dir=OUT)  # removed by its weakref finalizer at exit
with open(f"{{OUT}}/scratch-{{PID}}", "w") as note:
    note.write(SCRATCH.name)
LOG = logging.getLogger("probe")
LOG.propagate = False
LOG.setLevel(logging.INFO)
TARGET = logging.FileHandler(f"{{OUT}}/log-{{PID}}", delay=True)
LOG.addHandler(logging.handlers.MemoryHandler(100, flushLevel=logging.CRITICAL + 1, target=TARGET))
LOG.info("written at logging.shutdown")
UNFLUSHED = open(f"{{OUT}}/buffered-{{PID}}", "w")
UNFLUSHED.write("written when the file is closed at exit")
sys.stdout.write(f"[unflushed output of {{PID}}]")  # a pipe: block-buffered, written at exit


def at_exit():
    with open(f"{{OUT}}/atexit-{{PID}}", "w") as file:
        file.write(str(sorted(t.name for t in threading.enumerate())))


atexit.register(at_exit)


def describe(item):
    return item.__qualname__ if isinstance(item, type) else type(item).__qualname__


def descriptor(fd):
    target = os.readlink(f"/proc/self/fd/{{fd}}")
    if target.startswith(OUT):
        return "OUT/" + os.path.basename(target).split("-")[0]
    return target.split(":[")[0]


def handler(signum):
    return repr(signal.getsignal(signum)).split(" at 0x")[0]


def status(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return line.split()[1]


def observe():
    fds = sorted(os.listdir("/proc/self/fd"), key=int)
    return {{
        "pid": PID,
        "sys.path": sys.path,
        "sys.flags": list(sys.flags),
        "sys.argv": sys.argv,
        "sys.orig_argv": sys.orig_argv,
        "__main__": getattr(sys.modules["__main__"], "__file__", None),
        # what multiprocessing's spawn and forkserver children run again as their __main__
        "multiprocessing main": multiprocessing.spawn.get_preparation_data("p").get("init_main_from_name"),
        "hash": hash("probe"),
        "ppid": os.getppid(),
        "session leader": os.getsid(0) == PID,
        "gc": [gc.isenabled(), gc.get_threshold()],
        "gc.get_freeze_count()": gc.get_freeze_count(),
        "warnings": [str(f) for f in warnings.filters],
        "limits": [resource.getrlimit(r) for r in (resource.RLIMIT_NOFILE, resource.RLIMIT_CORE)],
        "recursion": sys.getrecursionlimit(),
        "faulthandler": faulthandler.is_enabled(),
        "stdio": [(f.name, f.line_buffering, f.encoding) for f in (sys.stdin, sys.stdout, sys.stderr)],
        "affinity": sorted(os.sched_getaffinity(0)),
        "executable": sys.executable,
        "prefix": [sys.prefix, sys.base_prefix],
        "environment": dict(os.environ),
        "descriptors": sorted(descriptor(fd) for fd in fds if os.path.exists(f"/proc/self/fd/{{fd}}")),
        "signals": {{s.name: handler(s) for s in signal.valid_signals() if isinstance(s, signal.Signals)}},
        "blocked": status("SigBlk"),
        "ignored": status("SigIgn"),
        "caught": status("SigCgt"),
        "meta_path": [describe(f) for f in sys.meta_path],
        "path_hooks": [getattr(h, "__qualname__", describe(h)) for h in sys.path_hooks],
        "random": random.random(),
        "urandom": os.urandom(16).hex(),
        "cwd": os.getcwd(),
        "umask": os.umask(os.umask(0)),
        "threads": threading.active_count(),
    }}


BODY = json.dumps({{"version": "v1"}})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps(observe()).encode()
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": body}})
"""


async def probe_generations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, fork: bool, count: int = 3
) -> list[dict[str, object]]:
    """What `count` generations of the probe saw, forked or spawned, once they all have exited.
    A variable set in this process after the first generation reaches the third (the second is
    the standby started before it), as it reaches a worker spawned after it."""
    out = tmp_path / ("forked" if fork else "spawned")
    out.mkdir()
    main = write(tmp_path / "app" / "main.py", PROBE.format(out=str(out)))
    seen: list[dict[str, object]] = []
    async with Reloader("main:app", app_dir=main.parent, fork=fork) as server, httpx.AsyncClient() as client:
        for number in range(1, count + 1):
            if number > 1:
                await until(lambda: "standby" in server.pids, what="a standby")
                monkeypatch.setenv("PARITY_SET_LATER", "yes")
                event = await server.edit(main, main.read_text() + f"\n# {number}\n")
                assert event.outcome == "ready"
            seen.append((await client.get(server.url)).json())
    assert not our_processes()
    for generation in seen:
        generation["stdout flushed at exit"] = f"[unflushed output of {generation['pid']}]" in server.output
    return seen


def exits(out: Path, pid: int) -> dict[str, object]:
    """What a generation's exit left behind."""

    def read(name: str) -> str | None:
        path = out / f"{name}-{pid}"
        return path.read_text() if path.exists() else None

    scratch = read("scratch")
    return {
        "atexit handler ran (threads then)": read("atexit"),
        "logging.shutdown flushed": read("log"),
        "open file flushed": read("buffered"),
        "temporary folder removed": scratch is not None and not os.path.exists(scratch),
    }


def differences(a: dict[str, object], b: dict[str, object]) -> dict[str, object]:
    """What `a` has that `b` has not, one level down for dictionaries."""
    found: dict[str, object] = {}
    for key, value in a.items():
        other = b.get(key)
        if isinstance(value, dict) and isinstance(other, dict):
            inner = {k: v for k, v in value.items() if other.get(k, "(absent)") != v}
            if inner:
                found[key] = inner
        elif value != other:
            found[key] = value
    return found


# Differences on purpose (README, the fork server): a forked worker is the template's child, runs
# under its command line, and shares its str hash seed (fixed at an interpreter's
# start); the template's objects stay frozen out of the collector's way (gc.freeze), so that
# their pages stay shared. Its random state is its own (checked below), as is its pid.
INTENDED = {"ppid", "sys.orig_argv", "hash", "gc.get_freeze_count()"}
OWN = {"pid", "random", "urandom"}


def comparable(seen: dict[str, object]) -> dict[str, object]:
    environment, argv = seen["environment"], seen["sys.argv"]
    assert isinstance(environment, dict)
    assert isinstance(argv, list)
    return {
        **{k: v for k, v in seen.items() if k not in INTENDED | OWN},
        "sys.argv": [argv[0], "CONTROL_FD"],
        "environment": {k: v for k, v in environment.items() if k not in PER_WORKER_VARIABLES},
        # glibc's own signals (see test_forkserver.GLIBC_INTERNAL): no program can see or set them
        **{k: int(str(seen[k]), 16) & ~GLIBC_INTERNAL for k in ("blocked", "ignored", "caught")},
    }


async def test_a_forked_worker_sees_and_leaves_what_a_spawned_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forked = await probe_generations(tmp_path, monkeypatch, fork=True)
    monkeypatch.delenv("PARITY_SET_LATER")
    spawned = await probe_generations(tmp_path, monkeypatch, fork=False)
    assert "PARITY_SET_LATER" in spawned[-1]["environment"]  # type: ignore[operator]
    found = []
    for mine, theirs in zip(forked, spawned, strict=True):
        a, b = comparable(mine), comparable(theirs)
        found.append((differences(a, b), differences(b, a)))
    assert found == [({}, {})] * len(forked)
    for how, generations in (("spawned", spawned), ("forked", forked)):
        for seen in generations:
            assert exits(tmp_path / how, seen["pid"]) == {  # type: ignore[arg-type]
                "atexit handler ran (threads then)": "['MainThread', 'asgireload-hangup']",
                "logging.shutdown flushed": "written at logging.shutdown\n",
                "open file flushed": "written when the file is closed at exit",
                "temporary folder removed": True,
            }, how
    assert [seen["stdout flushed at exit"] for seen in forked + spawned] == [True] * 6
    # random state: each generation draws its own, forked or not
    for generations in (forked, spawned):
        for key in ("random", "urandom"):
            assert len({seen[key] for seen in generations}) == len(generations), key


# ------------------------------------------------------------------ site-packages changes

LIB_APP = """
try:
    import sitelib
    BODY = "sitelib " + sitelib.VERSION
except ImportError:
    BODY = "no sitelib"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": BODY.encode()})
"""

# A meta path finder, as setuptools' editable installs put in with an `import` line of a .pth.
FINDER = """
import importlib.util, sys

class SitelibFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "sitelib":
            return importlib.util.spec_from_file_location(name, {location!r})

sys.meta_path.append(SitelibFinder)
"""


def warm_standby(server: Reloader) -> bool:
    """A standby has said hello: its interpreter has read site-packages as they were."""
    machine = server._running._machine
    return machine is not None and machine.standby is not None and machine.standby.stage is WorkerStage.WARM


def change_site(site: Path, lib: Path, how: str) -> None:
    """Make `sitelib` importable (or not) the way an installer does."""
    match how:
        case "a new .pth naming a folder (pip install -e, old style)":
            (site / "zz_sitelib.pth").write_text(f"{lib}\n")
        case "a new .pth whose import line adds a finder (setuptools' editable install)":
            write(site / "zz_sitelib_finder.py", FINDER.format(location=str(lib / "sitelib.py")))
            (site / "zz_sitelib.pth").write_text("import zz_sitelib_finder\n")
        case "a .pth written in place":
            with open(site / "zz_existing.pth", "a") as file:
                file.write(f"{lib}\n")
        case "a folder a .pth names appearing":
            shutil.copytree(lib, lib.with_name("later"))
        case "a .pth removed (pip uninstall)":
            (site / "zz_sitelib.pth").unlink()


@pytest.mark.parametrize(
    ("how", "fork"),
    [
        ("a new .pth naming a folder (pip install -e, old style)", True),
        ("a new .pth naming a folder (pip install -e, old style)", False),
        ("a new .pth whose import line adds a finder (setuptools' editable install)", True),
        ("a .pth written in place", True),
        ("a folder a .pth names appearing", True),
        ("a .pth removed (pip uninstall)", True),
        ("a .pth removed (pip uninstall)", False),
    ],
)
async def test_a_change_to_site_packages_reaches_the_next_reload(
    tmp_path: Path, installed: Path, how: str, fork: bool
) -> None:
    lib = tmp_path / "lib"
    write(lib / "sitelib.py", 'VERSION = "1"\n')
    write(installed / "zz_existing.pth", "# an installer's .pth\n")
    if how == "a folder a .pth names appearing":
        write(installed / "zz_later.pth", f"{tmp_path / 'later'}\n")
    installed_before = how == "a .pth removed (pip uninstall)"
    if installed_before:
        write(installed / "zz_sitelib.pth", f"{lib}\n")
    main = write(tmp_path / "app" / "main.py", LIB_APP)
    before, after = ("sitelib 1", "no sitelib") if installed_before else ("no sitelib", "sitelib 1")
    async with Reloader("main:app", app_dir=main.parent, fork=fork) as server, httpx.AsyncClient() as client:
        assert (await client.get(server.url)).text == before
        await until(lambda: "standby" in server.pids, what="a standby")
        template = server.pids.get("template")
        event = await server.edit(main, LIB_APP + "\n# an edit of the project\n")
        assert event.outcome == "ready"
        assert (await client.get(server.url)).text == before
        assert server.pids.get("template") == template  # a project's edit keeps the template
        await until(lambda: warm_standby(server), what="a standby that has started")
        change_site(installed, lib, how)
        event = await server.edit(main, LIB_APP)  # the next save: what a fresh interpreter sees
        assert event.outcome == "ready"
        assert (await client.get(server.url)).text == after
        if fork:
            assert server.pids.get("template") not in (None, template)
    assert not our_processes()


def test_the_site_state_sees_what_a_fresh_interpreter_would_and_ignores_bytecode(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    state = SiteState.now([str(site)])
    assert state.changes() == []
    (site / "__pycache__").mkdir()  # a first import wrote bytecode: nothing to replace
    assert state.changes() == []
    (site / "lib.pth").write_text(f"{tmp_path / 'later'}\n")
    assert state.changes() == [str(site)]
    with open(site / "lib.pth", "a") as file:  # written in place: the folder's listing is the same
        file.write("# and a comment, one byte longer\n")
    assert state.changes() == [str(site / "lib.pth")]
    (tmp_path / "later").mkdir()  # a folder it names appears: a fresh sys.path has it
    assert state.changes() == [str(tmp_path / "later")]
    (site / "newpkg").mkdir()  # a new top-level package
    assert state.changes() == [str(site)]
    (site / "lib.pth").unlink()
    assert state.changes() == [str(site), str(site / "lib.pth")]
    assert state.changes() == []
